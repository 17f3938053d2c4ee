"""Run one demo provider: `python -m ext_proc.demo --kind openai --name openai-a [--port 0] ...`.

`--kind mcp` runs the demo MCP tool server (Streamable HTTP at `/mcp`, see `mcp_tools.py`) the same way.

Prints `{"name": ..., "kind": ..., "port": ...}` as one JSON line on stdout once listening, so a parent process can
read the port it got; stops cleanly on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
import sys

import orjson

from ext_proc.demo.server import KINDS, start_demo_provider


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        _parser().error("--tls-cert and --tls-key go together")
    try:
        import uvloop
    except ImportError:
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(_serve(args))


async def _serve(args: argparse.Namespace) -> int:
    ssl_context = None
    if args.tls_cert:
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(args.tls_cert, args.tls_key)
    try:
        provider = await start_demo_provider(
            args.kind, args.name, args.host, args.port, args.api_key, ssl_context, args.faults
        )
    except (ValueError, OSError) as exc:
        print(f"demo provider {args.name}: {exc}", file=sys.stderr)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    sys.stdout.buffer.write(orjson.dumps({"name": provider.name, "kind": provider.kind, "port": provider.port}) + b"\n")
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        await provider.close()
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ext_proc.demo",
                                     description="Run a fake LLM provider (or, --kind mcp, an MCP tool server).")
    parser.add_argument("--kind", required=True, choices=KINDS)
    parser.add_argument("--name", required=True, help="provider name, echoed in x-demo-provider and answers")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on stdout)")
    parser.add_argument("--api-key", help="require this key (OpenAI bearer token, Anthropic x-api-key)")
    parser.add_argument("--tls-cert", help="PEM certificate chain; serve HTTPS")
    parser.add_argument("--tls-key", help="PEM private key for --tls-cert")
    parser.add_argument("--faults", help="fault spec applied to every request, e.g. '*:stall=100,openai-a:503'")
    return parser


if __name__ == "__main__":
    sys.exit(main())
