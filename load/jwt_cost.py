"""What verifying a JWT costs per request: scenario (b) (OpenAI backend) on a gateway without JWT issuers and a
virtual key, then on a gateway with an issuer (RS256, JWKS from a file) sent a virtual key, then a JWT.

    python load/jwt_cost.py              # about a minute; results in load/results/jwt-*.md
    python load/jwt_cost.py --smoke      # seconds

Envoy verifies the token (its `jwt_authn` filter: the RSA signature, `iss`, `aud`, `exp`), so its CPU per request
is the figure that moves; the ext_proc servers read the verified payload from the metadata Envoy forwards and map
its claims, instead of hashing a key.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))

import bench
import upstreams

from ext_proc.auth.virtual_keys import generate_key, hash_key
from ext_proc.config.loading import parse_config
from ext_proc.launch.processes import Supervisor, free_port, free_port_run, wait_for_envoy
from ext_proc.launch.stack import envoy_argv, start_stack
from tests.jwt_issuer import TokenIssuer

AUDIENCE = "babelgate"


def _start(supervisor: Supervisor, workdir: Path, name: str, upstream_port: int, key: str,
           jwt: dict | None) -> tuple[str, list[int], int]:
    config = {
        "listener": {"port": free_port(), "admin_port": free_port()},
        "ext_proc": {"port": free_port_run(1), "processes": 1},
        "backends": [{"id": "openai", "schema": "openai", "base_url": f"http://127.0.0.1:{upstream_port}/v1",
                      "api_key": {"env": "BENCH_KEY"}}],
        "routes": [{"model": "bench-openai", "backends": [{"backend": "openai", "model": "bench-model"}]}],
        "virtual_keys": [{"id": "bench", "hash": hash_key(key)}],
        **({"jwt": jwt} if jwt else {}),
    }
    directory = workdir / name
    directory.mkdir()
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    first = len(supervisor.children)
    stack = start_stack(parse_config(path.read_text()), path, directory, supervisor, env={"BENCH_KEY": "sk-bench"},
                        envoy_workers=2)
    started = supervisor.children[first:]
    return (stack.url + "/v1/chat/completions", [c.process.pid for c in started if c.name.startswith("ext_proc")],
            next(c.process.pid for c in started if c.name == "envoy"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--output", type=Path, default=bench.RESULTS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.seconds, args.connections = 1, 2
    workdir = Path(tempfile.mkdtemp(prefix="babelgate-jwt-bench-"))
    supervisor = Supervisor(log_dir=workdir)
    key = generate_key()
    issuer = TokenIssuer("https://sso.bench.test/realms/bench")
    token = issuer.token(issuer.claims(AUDIENCE, "bench-user", lifetime=3600, team="bench"))
    jwt = {"issuers": [{"name": "bench", "issuer": issuer.issuer, "audiences": [AUDIENCE],
                        "jwks_file": str(issuer.write_jwks(workdir / "jwks.json")), "claims": {"team": "team"}}]}
    body = {"model": "bench-openai", **bench.CHAT}
    rows: list[dict] = []
    try:
        upstream_port, baseline_port, admin_port = free_port(), free_port(), free_port()
        (workdir / "upstream.yaml").write_text(yaml.safe_dump(
            upstreams.upstream_config(upstream_port, baseline_port, admin_port)))
        supervisor.start("upstream-envoy", [*envoy_argv(workdir / "upstream.yaml"), "--base-id", "17"])
        wait_for_envoy(admin_port, 30, supervisor)
        plain = _start(supervisor, workdir, "no-issuers", upstream_port, key, None)
        verifying = _start(supervisor, workdir, "issuer", upstream_port, key, jwt)
        targets = [
            bench.Target("(b) OpenAI, no issuers, virtual key", plain[0], body, plain[1], plain[2]),
            bench.Target("(b) OpenAI, an issuer, virtual key", verifying[0], body, verifying[1], verifying[2]),
            bench.Target("(b) OpenAI, an issuer, JWT (RS256)", verifying[0], body, verifying[1], verifying[2],
                         key=token),
        ]
        for target in targets:
            check = httpx.post(target.url, json=body, timeout=10,
                               headers={"authorization": f"Bearer {target.key or key}"})
            if check.status_code != 200:
                raise SystemExit(f"{target.scenario} answered {check.status_code}: {check.text[:300]}")
        for target in targets:
            rows.append(bench.measure(target, key, workdir, connections=args.connections, seconds=args.seconds,
                                      rate=None))
            print(bench.markdown(rows[-1:]).splitlines()[-1], flush=True)
    finally:
        supervisor.stop_all()
    return bench._report(rows, args, "jwt-smoke" if args.smoke else "jwt")


if __name__ == "__main__":
    sys.exit(main())
