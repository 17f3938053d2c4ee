"""The admin API's protos are compiled by the build (grpcio-tools), not committed: the module and the descriptor
set Envoy's transcoder needs exist after `pip install`, carry the HTTP rules, and are not in git."""

from __future__ import annotations

import subprocess
from pathlib import Path

from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

import ext_proc.admin
from ext_proc.admin import admin_pb2

PACKAGE = Path(ext_proc.admin.__file__).parent
ROOT = Path(__file__).resolve().parents[2]


def test_the_service_and_its_messages_are_generated() -> None:
    service = admin_pb2.DESCRIPTOR.services_by_name["Admin"]
    assert [m.name for m in service.methods] == ["CreateKey", "ListKeys", "RevokeKey", "RotateKey", "ListRoutes",
                                                 "GetUsage", "ListMcpServers", "CreatePromptVersion", "ListPrompts",
                                                 "GetPrompt", "SetPromptLabel"]
    created = admin_pb2.CreateKeyResponse(key=admin_pb2.Key(id="alice", models=["gpt-4o"]), secret="bg-x")
    assert admin_pb2.CreateKeyResponse.FromString(created.SerializeToString()).key.models == ["gpt-4o"]


def test_the_descriptor_set_carries_the_http_rules_and_its_imports() -> None:
    files = descriptor_pb2.FileDescriptorSet.FromString((PACKAGE / "admin.pb").read_bytes()).file
    names = {f.name for f in files}
    # named by its path under protos/: a bare "admin.proto" could be another package's in the shared descriptor pool
    assert {"babelgate/admin/v1/admin.proto", "google/api/annotations.proto", "google/api/http.proto"} <= names
    admin = next(f for f in files if f.name == "babelgate/admin/v1/admin.proto")
    rules = {m.name: m.options.Extensions[annotations_pb2.http] for m in admin.service[0].method}
    assert rules["CreateKey"].post == "/admin/v1/keys" and rules["CreateKey"].body == "*"
    assert rules["RevokeKey"].delete == "/admin/v1/keys/{id}"


def test_generated_files_are_not_committed() -> None:
    tracked = subprocess.run(["git", "ls-files", "ext_proc/admin", "ext_proc/wire", "protos"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    assert {"protos/babelgate/admin/v1/admin.proto", "protos/babelgate/envoy/v3/external_processor.proto"} <= set(
        tracked)
    assert not [name for name in tracked if name.endswith(("_pb2.py", "_pb2.pyi", ".pb"))]
