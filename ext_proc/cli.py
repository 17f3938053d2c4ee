"""The `babelgate` command: up | serve | render | check | usage | keys | mcp."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from . import constants

if TYPE_CHECKING:
    import grpc

    from .config.models import Config, ExtProcServer
    from .launch.channel import Channel
    from .launch.processes import Supervisor
    from .limits.limiter import Limiter
    from .runtime.build import Runtime

log = logging.getLogger("babelgate")

DRAIN_SECONDS = 10.0
"""On SIGTERM, `babelgate up` lets requests in flight (streams included) finish for this long before stopping."""


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("BABELGATE_LOG_LEVEL", "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    quiet_secret_logging_libraries()
    from .auth.credentials import CredentialError
    from .config.loading import ConfigError
    from .launch.channel import ChannelError
    from .launch.processes import LaunchError
    from .telemetry.hub import TelemetryUnavailable
    try:
        return args.handler(args)
    except (ConfigError, CredentialError, LaunchError, TelemetryUnavailable, ChannelError) as exc:
        print(f"babelgate: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


SECRET_LOGGING_LIBRARIES = ("hpack", "botocore", "urllib3", "google.auth", "httpcore", "httpx", "grpc")
"""Libraries whose debug lines carry what they encode or send: hpack every header it decodes (Authorization among
them), botocore and the HTTP clients the requests they sign or send."""
CHATTY_AT_START = ("botocore.credentials", "httpx")
"""Loggers whose INFO lines repeat at every start ("Found credentials in environment variables.", once per Bedrock
backend in every process; httpx's line per request, which the MCP side's health pings repeat every few seconds):
kept at WARNING, where a failure to find or refresh credentials still shows, unless BABELGATE_LOG_LEVEL=DEBUG."""


def quiet_secret_logging_libraries() -> None:
    """BABELGATE_LOG_LEVEL=DEBUG is for Babelgate's own lines: these libraries stay at INFO and above (and the
    chatty ones at WARNING unless debugging)."""
    level = logging.getLogger().getEffectiveLevel()
    for name in SECRET_LOGGING_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.INFO, level))
    for name in CHATTY_AT_START:
        logging.getLogger(name).setLevel(logging.INFO if level <= logging.DEBUG else max(logging.WARNING, level))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="babelgate", description="An AI gateway inside Envoy.")
    parser.add_argument("--version", action=_VersionAction)
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="run Envoy, the ext_proc servers (and with --demo, fake providers)")
    source = up.add_mutually_exclusive_group(required=True)
    source.add_argument("-c", "--config", type=Path)
    source.add_argument("--demo", action="store_true", help="built-in config with two demo providers")
    up.add_argument("--port", type=int, help="client port (default: the config's, 10000 for --demo)")
    up.add_argument("--admin-port", type=int, help="Envoy admin port")
    up.add_argument("--ext-proc-port", type=int, help="first ext_proc server port")
    up.add_argument("--processes", type=int, help="ext_proc server processes")
    up.add_argument("--admin-api-port", type=int, help="--demo: the admin API's gRPC port (default 50050, or a free "
                                                       "one when taken)")
    up.set_defaults(handler=_up)

    serve = commands.add_parser("serve", help="run the ext_proc gRPC server(s) only")
    serve.add_argument("-c", "--config", type=Path, required=True)
    serve.add_argument("--port", type=int, help="serve one process on this port (default: the config's)")
    serve.add_argument("--host")
    serve.add_argument("--socket", type=Path, help="serve one process on this Unix socket")
    serve.add_argument("--health-port", type=int, help="also serve the health service alone, in plaintext, here "
                                                      "(default: the config's ext_proc.health_port + process index)")
    serve.add_argument("--peers", choices=("envoy", "mesh"),
                       help="mesh: plaintext on any address, a service mesh authenticates peers (Istio)")
    serve.add_argument("--report-ready", action="store_true", help=argparse.SUPPRESS)
    # a child of `up` or of another `serve`: its parent runs the stdio MCP servers' bridges
    serve.add_argument("--no-mcp-bridges", action="store_true", help=argparse.SUPPRESS)
    # which of the config's processes this is (metrics port offset; the first serves the admin API)
    serve.add_argument("--process-index", type=int, default=0, help=argparse.SUPPRESS)
    serve.set_defaults(handler=_serve)

    render = commands.add_parser("render", help="print the Envoy config for a Babelgate config")
    render.add_argument("-c", "--config", type=Path, required=True)
    render.add_argument("-o", "--output", type=Path)
    what = render.add_mutually_exclusive_group()
    what.add_argument("--filters-only", action="store_true",
                      help="the HTTP filter, routes and clusters to paste into an Envoy config of your own")
    what.add_argument("--istio", choices=("gateway", "sidecar"),
                      help="Istio objects (EnvoyFilter, ServiceEntry, DestinationRule, Deployment, Service)")
    render.add_argument("--namespace", default="babelgate", help="--istio: namespace of the ext_proc Service")
    render.add_argument("--image", default="babelgate:latest", help="--istio: the ext_proc server image")
    render.add_argument("--gateway-host", default="llm.example.com",
                        help="--istio gateway: the host name clients call")
    render.add_argument("--gateway-namespace", default="istio-system",
                        help="--istio gateway: the namespace the ingress gateway runs in")
    render.add_argument("--gateway-service-account", default="istio-ingressgateway-service-account",
                        help="--istio gateway: the ingress gateway's service account (the only identity the ext_proc "
                             "pods admit)")
    render.set_defaults(handler=_render)

    certs = commands.add_parser("certs", help="make a CA and the certificates for mutual TLS between Envoy and "
                                              "the ext_proc servers (ext_proc.tls)")
    certs.add_argument("-o", "--output", type=Path, required=True, help="directory for the PEM files")
    certs.add_argument("--server-name", default=constants.DEFAULT_EXT_PROC_SERVER_NAME,
                       help="the name in the server certificate, which Envoy checks (ext_proc.tls.server_name)")
    certs.add_argument("--extra-name", action="append", default=[],
                       help="another DNS name or IP the server certificate also carries (repeatable)")
    certs.add_argument("--days", type=int, default=825, help="validity")
    certs.add_argument("--key-mode", type=lambda text: int(text, 8), default=0o600,
                       help="octal mode of the private keys (default 600; e.g. 640 for a group-shared volume)")
    certs.set_defaults(handler=_certs)

    check = commands.add_parser("check", help="validate a config, its secrets, and the rendered Envoy config")
    check.add_argument("-c", "--config", type=Path, required=True)
    check.set_defaults(handler=_check)

    usage = commands.add_parser("usage", help="current usage and remaining quota per key, team, user, model, "
                                              "backend; or, with --from-log, a summary of the request log")
    usage.add_argument("-c", "--config", type=Path)
    usage.add_argument("--json", action="store_true", help="machine-readable rows")
    usage.add_argument("--from-log", metavar="DIR", help="summarise the Parquet request log in DIR (or s3://...)")
    usage.add_argument("--s3-endpoint", help="--from-log on S3-compatible storage: its endpoint URL")
    usage.add_argument("--chart", type=Path, metavar="PNG", help="--from-log: also draw traffic and latency")
    usage.set_defaults(handler=_usage)

    from .admin.keys_command import add_parser as add_keys_parser
    from .admin.mcp_command import add_parser as add_mcp_parser
    from .admin.prompts_command import add_parser as add_prompts_parser

    add_keys_parser(commands)
    add_mcp_parser(commands)
    add_prompts_parser(commands)
    return parser


class _VersionAction(argparse.Action):
    """`--version`, as argparse's own but looked up only when asked (every server process parses a command line)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        from . import version

        print(f"babelgate {version()}")
        parser.exit()


# -- certs --------------------------------------------------------------------------------------------------------

def _certs(args: argparse.Namespace) -> int:
    from .auth.certificates import make_certificates

    files = make_certificates(args.output, args.server_name, tuple(args.extra_name), days=args.days,
                              key_mode=args.key_mode)
    print(yaml.safe_dump({"ext_proc": {"tls": files.config(args.server_name)}}, sort_keys=False), end="")
    print(f"# {files.ca_file.parent}: the server needs ca.pem, server.pem, server-key.pem; Envoy needs ca.pem, "
          "envoy-client.pem, envoy-client-key.pem (`babelgate render` names them in the ext_proc cluster)",
          file=sys.stderr)
    return 0


# -- serve --------------------------------------------------------------------------------------------------------

def _serve(args: argparse.Namespace) -> int:
    from .admin.key_store import KeyStoreError, with_stored_keys
    from .config.loading import load_config
    from .launch.channel import server_channel
    from .runtime.build import compile_runtime

    config = load_config(args.config)
    bridged = _bridged(args, config)
    try:
        config = with_stored_keys(config)
    except KeyStoreError as exc:  # the keys stored in Redis join once it answers (the reloader polls it)
        log.error("%s; serving the configured keys only until it can be read", exc)
    runtime = compile_runtime(config, announce=True)
    for backend in runtime.backends.values():
        # Credentials that need the network (STS, token endpoints) fetch before the first request, not during it.
        prefetch = getattr(backend.credential, "prefetch", None)
        if prefetch is not None:
            prefetch()
    host = args.host or config.ext_proc.host
    if bridged is not None or (args.port is None and args.socket is None and config.ext_proc.processes > 1):
        one = args.port is not None or args.socket is not None
        return _serve_many(args, host, args.port if args.port is not None else config.ext_proc.port,
                           1 if one else config.ext_proc.processes, bridged)
    port = args.port if args.port is not None else config.ext_proc.port
    index = args.process_index
    channel = server_channel(config.ext_proc, host=host, port=port, index=index, socket=args.socket,
                             peers=args.peers)
    if config.telemetry.enabled:
        from .telemetry.hub import build_telemetry

        # process n of the config serves its metrics on prometheus_port + n
        telemetry = build_telemetry(config.telemetry, index)
        runtime = compile_runtime(config, telemetry=telemetry, previous=runtime)
    # the first process serves the admin API: its state (keys, usage) lives in Redis or the keys file, not here
    admin_port = config.admin.port if config.admin is not None and index == 0 else None
    health_port = args.health_port if args.health_port is not None else (
        config.ext_proc.health_port + index if config.ext_proc.health_port is not None else None)
    return _serve_one(runtime, channel, report_ready=args.report_ready, config_path=Path(args.config),
                      admin_port=admin_port, admin_host=host,
                      health_address=f"{host}:{health_port}" if health_port is not None else None)


def _serve_one(runtime: Runtime, channel: Channel, report_ready: bool, config_path: Path,
               admin_port: int | None = None, admin_host: str = "127.0.0.1", health_address: str | None = None) -> int:
    from .server import RuntimeHolder, serve

    try:
        import uvloop
        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency; plain asyncio still works
        pass

    def ready(ports: dict[str, int]) -> None:
        where = channel.described if channel.address.startswith("unix:") else \
            channel.address.rsplit(":", 1)[0] + f":{ports['port']}"
        log.info("ext_proc server listening on %s", where)
        if report_ready:
            print(json.dumps(ports), flush=True)

    asyncio.run(serve(RuntimeHolder(runtime), channel.address, on_ready=ready,
                      config_path=config_path, admin_port=admin_port, admin_host=admin_host,
                      ssl_context=channel.ssl_context, health_address=health_address))
    return 0


def _bridged(args: argparse.Namespace, config: Config) -> Config | None:
    """The config, when this `serve` runs the bridges of its stdio MCP servers (each on its configured `port`, so
    Envoy's rendered clusters and every replica agree on it); None when there are none or a parent runs them."""
    from .launch.mcp_bridges import stdio_servers
    from .launch.processes import LaunchError

    servers = [] if args.no_mcp_bridges else stdio_servers(config)
    unset = [server.name for server in servers if server.port is None]
    if unset:
        raise LaunchError(f"`babelgate serve` runs stdio MCP servers' bridges on their `port`: set mcp.servers[].port "
                          f"for {', '.join(unset)} (only `babelgate up` picks free ones)")
    return config if servers else None


def _serve_many(args: argparse.Namespace, host: str, first_port: int, processes: int,
                bridged: Config | None = None) -> int:
    """The servers as supervised children (restarted when they die), after the stdio MCP servers' bridges when
    `bridged` names them."""
    from .auth.sealing import KEY_ENV, new_shared_key
    from .launch.mcp_bridges import Bridges
    from .launch.processes import Supervisor

    signals = StopSignals()
    supervisor = Supervisor()
    # every process seals and opens the reservations the others made
    env = {KEY_ENV: os.environ.get(KEY_ENV) or new_shared_key()}
    try:
        if bridged is not None:
            Bridges(supervisor, shared_key=env[KEY_ENV]).start(bridged)
        for index in range(processes):
            _, ready = supervisor.start_reporting(f"ext_proc-{index}", _child_serve_argv(args, host, first_port, index),
                                                  env=env)
            if args.report_ready and index == 0:
                print(json.dumps(ready), flush=True)
        log.info("%d ext_proc processes on ports %d-%d", processes, first_port, first_port + processes - 1)
        return _wait_for_signal(supervisor, signals)
    finally:
        supervisor.stop_all()


def _child_serve_argv(args: argparse.Namespace, host: str, first_port: int, index: int) -> list[str]:
    from .launch.processes import python_module

    where = ["--socket", str(args.socket)] if args.socket is not None else ["--port", str(first_port + index)]
    return python_module(
        "ext_proc", "serve", "-c", str(args.config), "--host", host, *where,
        "--process-index", str(index if args.port is None and args.socket is None else args.process_index),
        "--report-ready", "--no-mcp-bridges", *(["--peers", args.peers] if args.peers else []),
        *(["--health-port", str(args.health_port + index)] if args.health_port is not None else []))


# -- up -----------------------------------------------------------------------------------------------------------

def _up(args: argparse.Namespace) -> int:
    from .config.loading import load_config
    from .launch.reload import StackReloader
    from .launch.stack import start_stack, workspace
    from .runtime.build import compile_runtime

    signals = StopSignals()
    env: dict[str, str] = {}
    # a credential the user chose is not printed; a generated one (the demo's) is the only way to learn it
    shown_admin = "$BABELGATE_ADMIN_KEY" if os.environ.get("BABELGATE_ADMIN_KEY") else "<your admin credential>"
    with workspace() as (supervisor, workdir):
        if args.demo:
            config_path, key, env = _prepare_demo(args, supervisor, workdir)
            config = load_config(config_path)
            if not os.environ.get("BABELGATE_ADMIN_KEY"):
                shown_admin = env["BABELGATE_ADMIN_KEY"]
        else:
            # Servers read the user's file (ports come on their command line); Envoy gets the overrides rendered in.
            key = None
            config_path = args.config
            config = _with_overrides(load_config(config_path), args)
        os.environ.update(env)
        compile_runtime(config)  # fail here, with a clear message, if a secret is missing
        stack = start_stack(config, config_path, workdir, supervisor, env=env)
        _print_banner(stack.url, key, stack.config, shown_admin)
        watcher = StackReloader(stack, Path(config_path), lambda path: _with_overrides(load_config(path), args))
        code = _wait_for_signal(supervisor, signals, on_tick=watcher.tick, on_hangup=watcher.hangup)
        left = stack.drain(timeout=DRAIN_SECONDS)
        if left:
            log.warning("%d requests were still in flight after %.0fs of draining", left, DRAIN_SECONDS)
    return code


def _with_overrides(config: Config, args: argparse.Namespace) -> Config:
    update_listener = {k: v for k, v in (("port", args.port), ("admin_port", args.admin_port)) if v is not None}
    listener = config.listener.model_copy(update=update_listener)
    update_server = {k: v for k, v in (("port", args.ext_proc_port), ("processes", args.processes)) if v is not None}
    ext_proc = config.ext_proc.model_copy(update=update_server)
    return config.model_copy(update={"listener": listener, "ext_proc": ext_proc})


def _prepare_demo(args: argparse.Namespace, supervisor: Supervisor, workdir: Path) -> tuple[Path, str, dict[str, str]]:
    from .launch import demo
    from .launch.processes import python_module, reported_port_argv

    listen_port = args.port or constants.DEFAULT_LISTEN_PORT
    admin_port = args.admin_port or constants.DEFAULT_ADMIN_PORT
    _ensure_demo_ports_free(listen_port, admin_port, args.admin_api_port)
    keys, env = demo.provider_secrets()
    ports = {}
    for provider in demo.PROVIDERS:
        # a restarted provider comes back on its first port: Envoy's cluster for it names that port
        _, ready = supervisor.start_reporting(provider.name, python_module(
            "ext_proc.demo", "--kind", provider.kind, "--name", provider.name, "--port", "0",
            "--api-key", keys[provider.name]), restart_argv=reported_port_argv)
        ports[provider.name] = ready["port"]
    env[demo.MCP_KEY_ENV] = demo.mcp_secret()
    _, ready = supervisor.start_reporting(demo.MCP_TOOLS, python_module(
        "ext_proc.demo", "--kind", "mcp", "--name", demo.MCP_TOOLS, "--port", "0", "--api-key", env[demo.MCP_KEY_ENV]),
        restart_argv=reported_port_argv)
    env[demo.ADMIN_ENV] = demo.admin_credential(dict(os.environ))
    data, client_key = demo.demo_config(
        ports, workdir,
        listen_port=listen_port, admin_port=admin_port,
        ext_proc_port=args.ext_proc_port or constants.DEFAULT_EXT_PROC_PORT, processes=args.processes or 1,
        client_key=os.environ.get("BABELGATE_DEMO_KEY"),
        admin_api_port=args.admin_api_port or _free_or(constants.DEFAULT_ADMIN_API_PORT),
        mcp_tools_port=ready["port"])
    config_path = workdir / "demo-config.yaml"
    config_path.write_text(yaml.safe_dump(data, sort_keys=False))
    return config_path, client_key, env


def _ensure_demo_ports_free(listen_port: int, admin_port: int, admin_api_port: int | None) -> None:
    """Before any demo provider starts; `start_stack` checks every port again once the config exists. The admin API
    port is only checked when given: by default the demo takes a free one."""
    from .launch.ports import ADMIN_API, ENVOY_ADMIN, LISTENER, Claim, ensure_free

    ensure_free([Claim("127.0.0.1", listen_port, LISTENER), Claim("127.0.0.1", admin_port, ENVOY_ADMIN),
                 *([Claim("127.0.0.1", admin_api_port, ADMIN_API)] if admin_api_port else [])])


def _free_or(port: int) -> int:
    from .launch.processes import free_port

    try:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", port))
        return port
    except OSError:
        return free_port()


def _print_banner(url: str, key: str | None, config: Config, admin_credential: str | None = None) -> None:
    shown_key = key or "<your virtual key>"
    model = config.routes[0].model
    models = ", ".join(route.model for route in config.routes)
    admin = config.admin
    admin_lines = "" if admin is None or not admin.via_envoy or admin_credential is None else f"""
Admin API (keys, routes, usage; JSON here, gRPC on 127.0.0.1:{admin.port}), credential {admin_credential}
  curl {url}/admin/v1/routes -H 'Authorization: Bearer {admin_credential}'
  BABELGATE_ADMIN_KEY={admin_credential} babelgate keys create --id alice --admin 127.0.0.1:{admin.port}
"""
    sockets = config.ext_proc.socket_dir
    channel_line = ("" if sockets is None
                    else f"ext_proc servers: Unix sockets in {sockets} (only this user opens them)\n")
    print(f"""
Babelgate is up: {url}  (OpenAI-compatible; Ctrl-C stops everything)

  curl {url}/v1/chat/completions \\
    -H 'Authorization: Bearer {shown_key}' -H 'Content-Type: application/json' \\
    -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello!"}}]}}'

  from openai import OpenAI
  client = OpenAI(base_url="{url}/v1", api_key="{shown_key}")
  print(client.chat.completions.create(model="{model}",
        messages=[{{"role": "user", "content": "Hello!"}}]).choices[0].message.content)

  # the Responses API (Codex, the OpenAI Agents SDK), on every model:
  print(client.responses.create(model="{model}", input="Hello!").output_text)
  curl {url}/v1/responses -H 'Authorization: Bearer {shown_key}' -H 'Content-Type: application/json' \
    -d '{{"model": "{model}", "input": "Hello!", "stream": true}}'

Models: {models}
{channel_line}{admin_lines}{_cache_banner(url, shown_key, config)}{_template_banner(url, shown_key, config)}\
{_mcp_banner(url, shown_key, config)}""", flush=True)


def _template_banner(url: str, key: str, config: Config) -> str:
    """How to call the config's first prompt template, in both request forms."""
    if not config.prompts:
        return ""
    template = config.prompts[0]
    variables = {name: "Babelgate is an AI gateway inside Envoy." for name in template.variables or ["text"]}
    shown = json.dumps(variables)
    return f"""
Prompt template {template.name!r} (more: babelgate prompts list):
  curl {url}/v1/chat/completions -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\
    -d '{{"model": "prompt:{template.name}", "prompt_variables": {shown}}}'
  print(client.responses.create(prompt={{"id": "{template.name}", "variables": {shown}}}).output_text)
"""


def _cache_banner(url: str, key: str, config: Config) -> str:
    """How to see a cache hit: the same deterministic request twice, and the `x-babelgate-cache` header."""
    cached = [route.model for route in config.routes if route.cache is not None]
    if not cached:
        return ""
    return f"""
Response cache on {", ".join(cached)} (requests with temperature 0): send this twice, see miss then hit
  curl -s -D - -o /dev/null {url}/v1/chat/completions \\
    -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\
    -d '{{"model": "{cached[0]}", "temperature": 0, "messages": [{{"role": "user", "content": "Hello!"}}]}}' \\
    | grep -i -E '^(x-babelgate-cache|age):'
"""


def _mcp_banner(url: str, key: str, config: Config) -> str:
    """How to reach the MCP endpoint: Claude Code (flag or `--mcp-config` file) and the Python `mcp` SDK."""
    if config.mcp is None:
        return ""
    endpoint = f"{url}{config.mcp.path}"
    servers = ", ".join(f"{server.name} ({server.name_prefix}{config.mcp.separator}*)" for server in config.mcp.servers)
    mcp_config = json.dumps({"mcpServers": {"babelgate": {
        "type": "http", "url": endpoint, "headers": {"Authorization": f"Bearer {key}"}}}})
    return f"""
MCP endpoint: {endpoint}  (tool servers: {servers})
  claude mcp add --transport http babelgate {endpoint} --header "Authorization: Bearer {key}"
  claude --mcp-config '{mcp_config}'

  import asyncio
  from mcp.client import Client
  from mcp.client.streamable_http import streamable_http_client
  from mcp.shared._httpx_utils import create_mcp_http_client

  async def main():
      http = create_mcp_http_client(headers={{"Authorization": "Bearer {key}"}})
      async with Client(streamable_http_client("{endpoint}", http_client=http)) as session:
          print([tool.name for tool in (await session.list_tools()).tools])
  asyncio.run(main())
"""


class StopSignals:
    """SIGTERM/SIGINT ask to stop, SIGHUP to reload; installed before anything starts, so a signal that arrives while
    the stack is still starting is acted on once it is up, not lost to Python's default (die at once)."""

    def __init__(self) -> None:
        self.stop = False
        self.hangups = 0
        signal.signal(signal.SIGTERM, self._request_stop)
        signal.signal(signal.SIGINT, self._request_stop)
        signal.signal(signal.SIGHUP, self._hangup)

    def _request_stop(self, signum: int, frame: object) -> None:
        self.stop = True

    def _hangup(self, signum: int, frame: object) -> None:
        self.hangups += 1


def _wait_for_signal(supervisor: Supervisor, signals: StopSignals, on_tick: Callable[[], None] | None = None,
                     on_hangup: Callable[[], None] | None = None) -> int:
    """Until SIGTERM/SIGINT (then 0) or a child's crash loop (then 1; the caller drains and stops as for a signal).
    Children that exit meanwhile are restarted (`Supervisor.tend`); SIGHUP is passed on to every ext_proc server (they
    reload their config) and to `on_hangup`."""
    from .launch.processes import CrashLoop

    handled = 0
    while not signals.stop:
        try:
            supervisor.tend()
        except CrashLoop as exc:
            log.error("%s\nstopping everything", exc)
            return 1
        if signals.hangups != handled:
            handled = signals.hangups
            # the servers reload; Envoy, the demo providers and the MCP bridges have no use for it (and the last
            # two would die of it)
            supervisor.signal_all(signal.SIGHUP, skip=[c.name for c in supervisor.children
                                                       if not c.name.startswith("ext_proc-")])
            if on_hangup is not None:
                on_hangup()
        if on_tick is not None:
            on_tick()
        time.sleep(0.2)
    log.info("stopping")
    return 0


# -- render / check -----------------------------------------------------------------------------------------------

def _render(args: argparse.Namespace) -> int:
    from .config.loading import load_config
    from .envoy_config.bootstrap import render_yaml

    config = load_config(args.config)
    if not args.istio:
        _require_bridge_ports(config)
    if args.filters_only:
        from .envoy_config.snippets import filters_only_yaml

        text = filters_only_yaml(config)
    elif args.istio:
        from .envoy_config.istio import render_istio_yaml

        text = render_istio_yaml(config, placement=args.istio, namespace=args.namespace, image=args.image,
                                 config_text=args.config.read_text(), gateway_host=args.gateway_host,
                                 gateway_namespace=args.gateway_namespace,
                                 gateway_service_account=args.gateway_service_account)
    else:
        text = render_yaml(config)
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _require_bridge_ports(config: Config) -> None:
    """A rendered config is served by `babelgate serve`, which runs stdio servers' bridges on their `port` only."""
    from .config.loading import ConfigError
    from .launch.mcp_bridges import stdio_servers

    unset = [server.name for server in stdio_servers(config) if server.port is None]
    if unset:
        raise ConfigError(f"{config.origin.source}: MCP servers {', '.join(unset)}: a stdio server needs `port` to be "
                          "rendered (Envoy's cluster names it, `babelgate serve` runs its bridge there; only "
                          "`babelgate up` picks one)")


def _check(args: argparse.Namespace) -> int:
    import subprocess

    from .config.loading import load_config
    from .envoy_config.bootstrap import render_yaml
    from .launch.stack import envoy_binary
    from .runtime.build import compile_runtime

    config = load_config(args.config)
    compile_runtime(config)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as rendered:
        rendered.write(render_yaml(config))
        rendered.flush()
        result = subprocess.run([envoy_binary(), "--mode", "validate", "-c", rendered.name, "--disable-hot-restart",
                                 "--log-level", "error"], capture_output=True, text=True)
    if result.returncode != 0:
        print(f"babelgate: the rendered Envoy config is invalid:\n{result.stdout}{result.stderr}", file=sys.stderr)
        return 1
    print(f"{args.config}: OK ({len(config.backends)} backends, {len(config.routes)} routes, "
          f"{len(config.virtual_keys)} keys)")
    return 0


# -- usage --------------------------------------------------------------------------------------------------------

def _usage(args: argparse.Namespace) -> int:
    if args.from_log:
        return _usage_from_log(args)
    if args.config is None:
        print("babelgate usage: give -c CONFIG (live counters) or --from-log DIR (the request log)", file=sys.stderr)
        return 2
    from .config.loading import load_config
    from .limits.limiter import compile_tables
    from .limits.report import format_rows, usage_rows
    from .limits.setup import build_limiter

    config = load_config(args.config)
    if not config.limits_configured:
        print("No limits are configured.")
        return 0
    if config.limits.redis is not None:
        limiter = build_limiter(config)
        assert limiter is not None
        prefix = limiter.prefix
        values = asyncio.run(_scan(limiter))
    else:
        prefix, values = _usage_from_servers(config)
    rows = usage_rows(values, compile_tables(config), prefix)
    if args.json:
        print(json.dumps([row._asdict() for row in rows]))
    else:
        print(format_rows(rows))
    return 0


def _usage_from_log(args: argparse.Namespace) -> int:
    from .telemetry.log_report import format_table, read_log, summarize, write_chart
    from .telemetry.request_log import open_filesystem

    filesystem, root = open_filesystem(args.from_log, endpoint=args.s3_endpoint,
                                       access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
                                       secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"))
    try:
        table = read_log(root, filesystem)
    except (OSError, ValueError) as exc:
        print(f"babelgate usage: can't read the request log at {args.from_log}: {exc}", file=sys.stderr)
        return 1
    rows = summarize(table)
    print(json.dumps(rows) if args.json else format_table(rows))
    if args.chart is not None and table.num_rows:
        write_chart(table, args.chart)
        print(f"chart written to {args.chart}", file=sys.stderr)
    return 0


async def _scan(limiter: Limiter) -> dict[str, int]:
    try:
        return await limiter.store.scan(limiter.prefix)
    finally:
        await limiter.store.close()


def _usage_from_servers(config: Config) -> tuple[str, dict[str, int]]:
    """The in-memory store lives in each server process: ask each one, over the channel Envoy uses (Unix socket,
    mutual TLS or TCP) with an admin credential, and add their counters up."""
    import grpc

    from .admin.keys_command import UsageError, _credential
    from .launch.processes import LaunchError
    from .server import USAGE_METHOD

    server = config.ext_proc
    try:
        metadata = (("authorization", f"Bearer {_credential(config)}"),)
    except UsageError as exc:
        raise LaunchError(f"reading usage from the running servers takes an admin credential: {exc}") from None
    prefix = ""
    totals: dict[str, int] = {}
    for index in range(server.processes):
        target, open_channel = _server_channel(server, index)
        with open_channel() as channel:
            try:
                usage: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(USAGE_METHOD)
                reply = usage(b"", timeout=5, metadata=metadata)
            except grpc.RpcError as exc:
                raise LaunchError(f"the ext_proc server at {target} did not answer ({exc.code().name}: "
                                  f"{exc.details()}); the in-memory limiter's usage lives in the running "
                                  "servers") from None
        data = json.loads(reply)
        prefix = data["prefix"] or prefix
        for key, value in data["values"].items():
            totals[key] = totals.get(key, 0) + value
    return prefix, totals


def _server_channel(server: ExtProcServer, index: int) -> tuple[str, Callable[[], grpc.Channel]]:
    import grpc

    if server.socket_dir is not None:
        target = f"unix:{server.socket_path(index)}"
        return target, lambda: grpc.insecure_channel(target)
    host = server.host if server.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    target = f"{host}:{server.port + index}"
    tls = server.tls
    if tls is None:
        return target, lambda: grpc.insecure_channel(target)
    credentials = grpc.ssl_channel_credentials(tls.ca_file.read_bytes(), tls.client_key_file.read_bytes(),
                                               tls.client_cert_file.read_bytes())
    return target, lambda: grpc.secure_channel(target, credentials,
                                               options=(("grpc.ssl_target_name_override", tls.server_name),))


if __name__ == "__main__":
    sys.exit(main())
