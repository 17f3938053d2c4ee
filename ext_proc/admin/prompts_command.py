"""`babelgate prompts create | list | get | label`: prompt templates, through the admin API (the running gateway
stores them, in Redis or beside the keys file, and every process serves a change within a second).

`create NAME --file template.yaml [--label production]` stores the file's template (YAML or JSON: messages, model,
temperature, ... as `config.models.PromptTemplate` describes) as NAME's next version; `get NAME[@version|label]`
prints one version; `label NAME VERSION LABEL` points a label at a version.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml
from google.protobuf.json_format import MessageToDict
from google.protobuf.struct_pb2 import Struct

from ..config.prompt_syntax import parse_reference
from . import admin_pb2 as pb
from .client import AdminClient, AdminError
from .keys_command import UsageError, add_admin_target, admin_client
from .service import plain_json

_COLUMNS = ("name", "latest", "labels", "model", "source")


def add_parser(commands: argparse._SubParsersAction) -> None:
    prompts = commands.add_parser("prompts", help="manage prompt templates (through the admin API)")
    actions = prompts.add_subparsers(dest="prompts_command", required=True)
    create = actions.add_parser("create", help="store a template file as the next version of NAME")
    create.add_argument("name")
    create.add_argument("--file", type=Path, required=True, help="the template: YAML or JSON (messages, model...)")
    create.add_argument("--label", help="point this label (e.g. production) at the new version")
    listing = actions.add_parser("list", help="every template: latest version, labels, default model")
    listing.add_argument("--json", action="store_true")
    get = actions.add_parser("get", help="one version: NAME (production, else latest), NAME@3, NAME@staging")
    get.add_argument("reference", metavar="NAME[@REF]")
    get.add_argument("--json", action="store_true")
    label = actions.add_parser("label", help="point LABEL at VERSION of NAME")
    label.add_argument("name")
    label.add_argument("version", type=int)
    label.add_argument("label")
    for action in (create, listing, get, label):
        add_admin_target(action)
        action.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        client = admin_client(args, "templates are stored through it (or written in the config's `prompts:`)")
        try:
            handler = {"create": _create, "list": _list, "get": _get, "label": _label}[args.prompts_command]
            return handler(args, client)
        finally:
            client.close()
    except (UsageError, AdminError) as exc:
        print(f"babelgate: {exc}", file=sys.stderr)
        return 2


def _create(args: argparse.Namespace, client: AdminClient) -> int:
    try:
        data = yaml.safe_load(args.file.read_text())
    except OSError as exc:
        raise UsageError(f"can't read {args.file}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{args.file} is not valid YAML or JSON: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{args.file}: expected a mapping (messages, model, ...)")
    template = Struct()
    template.update(json.loads(json.dumps(data, default=str)))
    reply = client.call("CreatePromptVersion", pb.CreatePromptVersionRequest(
        name=args.name, template=template, label=args.label or ""), pb.PromptVersion)
    labelled = f" ({', '.join(reply.labels)})" if reply.labels else ""
    print(f"prompt {reply.name} version {reply.version} created{labelled}")
    return 0


def _list(args: argparse.Namespace, client: AdminClient) -> int:
    reply = client.call("ListPrompts", pb.ListPromptsRequest(), pb.ListPromptsResponse)
    if args.json:
        print(json.dumps([_dict(prompt) for prompt in reply.prompts], indent=2))
    elif not reply.prompts:
        print("no prompt templates", file=sys.stderr)
    else:
        print(table(list(reply.prompts)))
    return 0


def _get(args: argparse.Namespace, client: AdminClient) -> int:
    name, ref = parse_reference(args.reference)
    reply = client.call("GetPrompt", pb.GetPromptRequest(name=name, ref=ref or ""), pb.PromptVersion)
    shown = _dict(reply)
    if args.json:
        print(json.dumps(shown, indent=2))
    else:
        print(yaml.safe_dump(shown, sort_keys=False, allow_unicode=True), end="")
    return 0


def _label(args: argparse.Namespace, client: AdminClient) -> int:
    reply = client.call("SetPromptLabel", pb.SetPromptLabelRequest(name=args.name, label=args.label,
                                                                   version=args.version), pb.Prompt)
    print(f"prompt {reply.name}: {args.label} -> version {reply.labels[args.label]}")
    return 0


def table(prompts: list[pb.Prompt]) -> str:
    lines = [_COLUMNS]
    for prompt in prompts:
        labels = ",".join(f"{label}={version}" for label, version in sorted(prompt.labels.items())) or "-"
        lines.append((prompt.name, str(prompt.latest), labels, prompt.model or "-",
                      "config" if prompt.from_config else "stored"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(_COLUMNS))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
                     for line in lines)


def _dict(message: pb.Prompt | pb.PromptVersion) -> dict:
    shown = MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    return plain_json(shown)  # type: ignore[return-value]
