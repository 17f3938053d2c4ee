"""`babelgate keys create | list | revoke | rotate`.

With a config that has an admin API (or `--admin HOST:PORT`), through that API: the running gateway stores the key
and every process honours the change within a second. With `--keys-file` (or a config without an admin API), by
editing the keys file directly, for gateways that run without one; running servers reload the file. A new key is
printed once, on stdout, and stored only as a hash.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml
from google.protobuf.json_format import MessageToDict

from ..auth.credentials import read_secret
from ..auth.virtual_keys import generate_key, hash_key
from ..config.loading import load_config
from ..config.models import METRICS, Config
from ..transport.grpc import RpcError
from . import admin_pb2 as pb
from .client import AdminClient, AdminError, operator
from .key_store import FileKeyStore, KeyStoreError, record
from .service import key_message, new_virtual_key

audit = logging.getLogger("babelgate.audit")

CREDENTIAL_ENV = "BABELGATE_ADMIN_KEY"


class UsageError(Exception):
    """The command can't run as given; the message says what to change."""


@dataclass
class FileTarget:
    store: FileKeyStore
    model_names: dict[str, str] | None
    """Each route's model name and alias -> the route's model name; None when no config says (`--keys-file`)."""


def add_parser(commands: argparse._SubParsersAction) -> None:
    keys = commands.add_parser("keys", help="manage virtual keys (through the admin API, or in a keys file)")
    actions = keys.add_subparsers(dest="keys_command", required=True)
    create = actions.add_parser("create", help="create a key; it is printed once and stored only as a hash")
    create.add_argument("--id", required=True)
    create.add_argument("--models", default="*", help="comma-separated public model names or aliases, or *")
    create.add_argument("--prompts", default="*", help="comma-separated prompt template names (globs), or *")
    create.add_argument("--team")
    create.add_argument("--user", help="the end user its requests count against in per-user limits")
    create.add_argument("--asserts-users", action="store_true",
                        help="a service that names the end user of each request (x-user-id, the body's user)")
    create.add_argument("--expires", help="ISO date/time, or a duration such as 30d, 12h, 15m")
    create.add_argument("--limit", action="append", default=[], metavar="WINDOW:METRIC=N[,METRIC=N]",
                        help="e.g. minute:requests=60 or day:total_tokens=1000000,usd=5 (repeatable)")
    listing = actions.add_parser("list", help="the keys, never their secrets")
    listing.add_argument("--json", action="store_true")
    revoke = actions.add_parser("revoke", help="remove a key; running servers refuse it within a second")
    revoke.add_argument("--id", required=True)
    rotate = actions.add_parser("rotate", help="a new secret for a key (printed once); the old one stops working")
    rotate.add_argument("--id", required=True)
    for action in (create, listing, revoke, rotate):
        where = action.add_mutually_exclusive_group()
        where.add_argument("-c", "--config", type=Path,
                           help="the gateway's config: its admin API, or else its keys_file")
        where.add_argument("--admin", metavar="HOST:PORT", help=f"the admin API (credential from ${CREDENTIAL_ENV})")
        where.add_argument("--keys-file", type=Path, help="edit this YAML file directly (no admin API)")
        action.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        target = _target(args)
        handler = {"create": _create, "list": _list, "revoke": _revoke, "rotate": _rotate}[args.keys_command]
        return handler(args, target)
    except (UsageError, AdminError, KeyStoreError) as exc:
        print(f"babelgate: {exc}", file=sys.stderr)
        return 2
    except RpcError as exc:
        print(f"babelgate: {exc.message}", file=sys.stderr)
        return 2


def _target(args: argparse.Namespace) -> AdminClient | FileTarget | None:
    if args.admin:
        return AdminClient(args.admin, _credential(None))
    if args.keys_file:
        return FileTarget(FileKeyStore(args.keys_file), None)
    if args.config is None:
        return None
    config = load_config(args.config)
    if config.admin is not None:
        host = config.ext_proc.host if config.ext_proc.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        return AdminClient(f"{host}:{config.admin.port}", _credential(config))
    if config.keys_file is not None:
        return FileTarget(FileKeyStore(config.keys_file), config.model_names())
    raise UsageError(f"{args.config} has neither an admin API nor a keys_file: keys written in the config itself "
                     "are changed by editing it")


def _credential(config: Config | None) -> str:
    presented = os.environ.get(CREDENTIAL_ENV)
    if presented:
        return presented.strip()
    if config is not None and config.admin is not None:
        return read_secret(config.admin.credentials[0].secret, "admin.credentials[0].secret")
    raise UsageError(f"set {CREDENTIAL_ENV} to an admin credential")


def add_admin_target(parser: argparse.ArgumentParser) -> None:
    """`-c CONFIG` or `--admin HOST:PORT`: which admin API a command talks to."""
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("-c", "--config", type=Path, help="the gateway's config: its admin API")
    where.add_argument("--admin", metavar="HOST:PORT", help=f"the admin API (credential from ${CREDENTIAL_ENV})")


def admin_client(args: argparse.Namespace, needed_for: str) -> AdminClient:
    """The client `add_admin_target`'s options name; `needed_for` says why in the error for a config without one."""
    if args.admin:
        return AdminClient(args.admin, _credential(None))
    config = load_config(args.config)
    if config.admin is None:
        raise UsageError(f"{args.config} has no admin API (`admin:`): {needed_for}")
    host = config.ext_proc.host if config.ext_proc.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    return AdminClient(f"{host}:{config.admin.port}", _credential(config))


# -- commands -----------------------------------------------------------------------------------------------------

def _create(args: argparse.Namespace, target: AdminClient | FileTarget | None) -> int:
    wanted = pb.Key(id=args.id, team=args.team or "", user=args.user or "", asserts_users=args.asserts_users,
                    limits=[_limit(text) for text in args.limit],
                    models=[m.strip() for m in args.models.split(",") if m.strip() and m.strip() != "*"],
                    prompts=[p.strip() for p in args.prompts.split(",") if p.strip() and p.strip() != "*"])
    if args.expires:
        wanted.expires_at.FromDatetime(_parse_expiry(args.expires))
    if isinstance(target, AdminClient):
        created = target.call("CreateKey", pb.CreateKeyRequest(key=wanted), pb.CreateKeyResponse)
        print(f"created key {args.id!r} through the admin API at {target.address}", file=sys.stderr)
        print(created.secret)
        return 0
    secret = generate_key()
    key = new_virtual_key(wanted, hash_key(secret), target.model_names if target else None)
    if target is None:
        print("# Add this under `virtual_keys:` in your config:", file=sys.stderr)
        print(yaml.safe_dump([record(key)], sort_keys=False), file=sys.stderr)
    elif not asyncio.run(target.store.create(key)):
        raise UsageError(f"a key with id {key.id!r} already exists in {target.store.path}")
    else:
        print(f"stored the hash of key {key.id!r} in {target.store.path}", file=sys.stderr)
    audit.info("virtual key %r created by %s (team %s, models %s, expires %s)", key.id, operator(),
               key.team or "-", ",".join(key.models), key.expires_at.isoformat() if key.expires_at else "never")
    print(secret)
    return 0


def _list(args: argparse.Namespace, target: AdminClient | FileTarget | None) -> int:
    if isinstance(target, AdminClient):
        keys = list(target.call("ListKeys", pb.ListKeysRequest(), pb.ListKeysResponse).keys)
    elif target is not None:
        keys = [key_message(k) for k in asyncio.run(target.store.list())]
    else:
        raise UsageError("give -c CONFIG, --admin HOST:PORT or --keys-file FILE")
    rows = [MessageToDict(k, preserving_proto_field_name=True) for k in keys]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = [("id", "team", "models", "limits", "expires", "created")]
    for row in rows:
        limits = " ".join(_limit_text(limit) for limit in row.get("limits", []))
        table.append((row["id"], row.get("team", "-") or "-", ",".join(row.get("models", [])) or "*", limits or "-",
                      row.get("expires_at", "never"), row.get("created_at", "-")))
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
    return 0


def _revoke(args: argparse.Namespace, target: AdminClient | FileTarget | None) -> int:
    if isinstance(target, AdminClient):
        target.call("RevokeKey", pb.RevokeKeyRequest(id=args.id), pb.RevokeKeyResponse)
        print(f"revoked key {args.id!r} through the admin API at {target.address}", file=sys.stderr)
        return 0
    store = _file_store(target)
    if not asyncio.run(store.revoke(args.id)):
        raise UsageError(f"no key with id {args.id!r} in {store.path}")
    audit.info("virtual key %r revoked by %s", args.id, operator())
    print(f"revoked key {args.id!r}: removed from {store.path}", file=sys.stderr)
    return 0


def _rotate(args: argparse.Namespace, target: AdminClient | FileTarget | None) -> int:
    if isinstance(target, AdminClient):
        rotated = target.call("RotateKey", pb.RotateKeyRequest(id=args.id), pb.CreateKeyResponse)
        print(f"rotated key {args.id!r} through the admin API at {target.address}", file=sys.stderr)
        print(rotated.secret)
        return 0
    store = _file_store(target)
    current = next((k for k in asyncio.run(store.list()) if k.id == args.id), None)
    if current is None:
        raise UsageError(f"no key with id {args.id!r} in {store.path}")
    secret = generate_key()
    asyncio.run(store.replace(current.model_copy(update={"hash": hash_key(secret)})))
    audit.info("virtual key %r rotated by %s; the old secret is refused", args.id, operator())
    print(secret)
    return 0


def _file_store(target: AdminClient | FileTarget | None) -> FileKeyStore:
    if not isinstance(target, FileTarget):
        raise UsageError("give --keys-file, -c with a config that has an admin API or a keys_file, or --admin "
                         "(keys written in the config itself are changed by editing it)")
    return target.store


# -- parsing ------------------------------------------------------------------------------------------------------

def _limit(text: str) -> pb.Limit:
    window, _, amounts = text.partition(":")
    limit = pb.Limit(window=window.strip())
    for pair in filter(None, (p.strip() for p in amounts.split(","))):
        metric, _, value = pair.partition("=")
        if metric not in METRICS:
            raise UsageError(f"--limit {text!r}: unknown metric {metric!r} (one of {', '.join(METRICS)})")
        try:
            setattr(limit, metric, float(value) if metric == "usd" else int(value))
        except ValueError:
            raise UsageError(f"--limit {text!r}: {value!r} is not a number") from None
    return limit


def _limit_text(limit: dict) -> str:
    return limit["window"] + ":" + ",".join(f"{m}={limit[m]}" for m in METRICS if m in limit)


def _parse_expiry(text: str) -> datetime:
    match = re.fullmatch(r"(\d+)([dhm])", text.strip())
    if match:
        unit = {"d": "days", "h": "hours", "m": "minutes"}[match.group(2)]
        return datetime.now(UTC) + timedelta(**{unit: int(match.group(1))})
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--expires {text!r}: give an ISO date/time or a duration such as 30d, 12h, 15m") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
