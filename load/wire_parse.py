"""What parsing and building the ext_proc messages costs with Babelgate's own stubs (ext_proc.wire), side by side with
Envoy's published Python stubs (xds-protos, which Babelgate no longer installs) in the same run.

    python3 load/wire_parse.py [--rounds 200000] [--xds-protos DIR]

Without --xds-protos the script downloads the pinned xds-protos wheel (pip download, PyPI) into a scratch
directory and runs the baseline in a child process whose path starts there, so this process never imports it.
Prints µs per operation for: parsing a request-headers message (17 headers, attributes, metadata), parsing a 4 KiB
body message, and building + serialising a body reply with a header mutation.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WORK = """
import json, sys, time
from @PREFIX@external_processor_pb2 import ProcessingRequest, ProcessingResponse, HttpHeaders, HttpBody
from @BASE@base_pb2 import HeaderValue, HeaderValueOption
rounds = int(sys.argv[1])

def request_headers():
    request = ProcessingRequest()
    headers = request.request_headers.headers.headers
    for key, value in [(":method", "POST"), (":path", "/v1/chat/completions"), (":authority", "gateway.local"),
                       (":scheme", "https"), ("content-type", "application/json"), ("content-length", "4096"),
                       ("authorization", "Bearer bg-" + "x" * 40), ("user-agent", "OpenAI/Python 1.99.0"),
                       ("x-request-id", "0f8c2b3e-1d2a-4c1b-9f61-b2d6a8f3c901"), ("accept", "application/json"),
                       ("x-stainless-lang", "python"), ("x-stainless-os", "Linux"), ("x-stainless-arch", "x64"),
                       ("x-stainless-runtime", "CPython"), ("x-stainless-retry-count", "0"),
                       ("x-forwarded-proto", "https"), ("x-envoy-expected-rq-timeout-ms", "600000")]:
        headers.add(key=key, raw_value=value.encode())
    request.attributes["envoy.filters.http.ext_proc"].fields["xds.upstream_host_metadata"].string_value = (
        'filter_metadata { key: "babelgate" value { fields { key: "backend" value { string_value: "anthropic" } } } }')
    request.metadata_context.filter_metadata["babelgate"].fields["route"].string_value = "claude"
    return request.SerializeToString()

def body():
    request = ProcessingRequest()
    message = {"role": "user", "content": "x" * 4000}
    request.request_body.body = json.dumps({"model": "gpt-4o", "messages": [message]}).encode()
    request.request_body.end_of_stream = True
    return request.SerializeToString()

def reply():
    response = ProcessingResponse()
    common = response.request_body.response
    common.header_mutation.set_headers.extend(
        HeaderValueOption(header=HeaderValue(key=k, raw_value=v)) for k, v in
        ((b":path", b"/v1/messages"), (b"content-length", b"4000"), (b"x-api-key", b"sk-ant-" + b"y" * 40)))
    common.header_mutation.remove_headers.extend(["authorization", "x-stainless-lang"])
    common.body_mutation.body = b"x" * 4000
    common.clear_route_cache = True
    return response.SerializeToString()

results = {}
for name, wire in (("parse request headers", request_headers()), ("parse 4 KiB body", body())):
    started = time.perf_counter()
    for _ in range(rounds):
        ProcessingRequest.FromString(wire)
    results[name] = (time.perf_counter() - started) / rounds * 1e6
started = time.perf_counter()
for _ in range(rounds):
    reply()
results["build + serialise reply"] = (time.perf_counter() - started) / rounds * 1e6
print(json.dumps(results))
"""

XDS_PROTOS_VERSION = "1.85.0"
"""The version Babelgate installed before it compiled its own stubs."""
OURS = WORK.replace("@PREFIX@", "ext_proc.wire.").replace("@BASE@", "ext_proc.wire.")
ENVOYS = WORK.replace("@PREFIX@", "envoy.service.ext_proc.v3.").replace("@BASE@", "envoy.config.core.v3.")


def xds_protos_directory(scratch: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(scratch),
                    f"xds-protos=={XDS_PROTOS_VERSION}"], check=True)
    unpacked = scratch / "xds-protos"
    with zipfile.ZipFile(next(scratch.glob("xds_protos-*.whl"))) as wheel:
        wheel.extractall(unpacked)
    return unpacked


def run(code: str, rounds: int, path: Path | None = None) -> dict[str, float]:
    environment = {"PYTHONPATH": f"{path}"} if path is not None else {}
    result = subprocess.run([sys.executable, "-c", code, str(rounds)], capture_output=True, text=True, check=True,
                            env={**os.environ, **environment}, cwd=Path(__file__).parents[1])
    return json.loads(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=200_000)
    parser.add_argument("--xds-protos", type=Path, help="an unpacked xds-protos wheel (default: download it)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        baseline_path = args.xds_protos or xds_protos_directory(Path(scratch))
        # interleaved, twice each, so a noisy moment hits both
        samples = [(run(ENVOYS, args.rounds, baseline_path), run(OURS, args.rounds)) for _ in range(2)]
    print(f"{'µs per operation':<28}{'xds-protos':>12}{'ext_proc.wire':>15}{'change':>9}")
    for name in samples[0][0]:
        theirs = min(sample[0][name] for sample in samples)
        mine = min(sample[1][name] for sample in samples)
        print(f"{name:<28}{theirs:>12.3f}{mine:>15.3f}{(mine / theirs - 1) * 100:>+8.0f}%")


if __name__ == "__main__":
    main()
