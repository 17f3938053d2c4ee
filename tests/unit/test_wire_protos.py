"""The ext_proc messages Babelgate compiles from its own .proto files (protos/babelgate/envoy/v3) are Envoy's on the
wire: every field has Envoy's number, kind and cardinality, every enum value Envoy's number. Envoy's API is read from
envoy-data-plane (a runtime dependency, generated from Envoy's own protos), so a mistyped number fails here rather
than as a garbled header in an end-to-end test."""

from __future__ import annotations

import dataclasses
import importlib

import pytest
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from ext_proc.wire import base_pb2, external_processor_pb2, http_status_pb2, processing_mode_pb2

ENVOY_PACKAGE = {  # our message or enum -> Envoy's proto package that defines it
    **dict.fromkeys(("Metadata", "HeaderValue", "HeaderValueOption", "HeaderMap"), "envoy.config.core.v3"),
    **dict.fromkeys(("StatusCode", "HttpStatus"), "envoy.type.v3"),
    "ProcessingMode": "envoy.extensions.filters.http.ext_proc.v3",
}
EXT_PROC = "envoy.service.ext_proc.v3"
KINDS = {
    FieldDescriptor.TYPE_BOOL: "bool", FieldDescriptor.TYPE_STRING: "string", FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_UINT32: "uint32", FieldDescriptor.TYPE_ENUM: "enum", FieldDescriptor.TYPE_MESSAGE: "message",
}
FILES = (base_pb2, http_status_pb2, processing_mode_pb2, external_processor_pb2)


def ours() -> list[Descriptor | EnumDescriptor]:
    found: list[Descriptor | EnumDescriptor] = []

    def visit(message: Descriptor) -> None:
        found.append(message)
        found.extend(message.enum_types)
        for nested in message.nested_types:
            if not nested.GetOptions().map_entry:
                visit(nested)

    for module in FILES:
        found.extend(module.DESCRIPTOR.enum_types_by_name.values())
        for message in module.DESCRIPTOR.message_types_by_name.values():
            visit(message)
    return found


def envoy_class(descriptor: Descriptor | EnumDescriptor) -> type:
    """betterproto names a nested type after its parents: HeaderValueOption.HeaderAppendAction ->
    HeaderValueOptionHeaderAppendAction."""
    outer = descriptor.full_name.split(".")[3]
    package = importlib.import_module(f"envoy_data_plane.{ENVOY_PACKAGE.get(outer, EXT_PROC)}")
    return getattr(package, "".join(descriptor.full_name.split(".")[3:]))


def test_every_declaration_is_in_babelgates_own_proto_package() -> None:
    assert {d.full_name.rsplit(".", 1)[0] for d in ours() if d.containing_type is None} == {"babelgate.envoy.v3"}
    assert len(ours()) > 20


@pytest.mark.parametrize("descriptor", ours(), ids=lambda d: d.full_name.removeprefix("babelgate.envoy.v3."))
def test_numbers_kinds_and_cardinality_are_envoys(descriptor: Descriptor | EnumDescriptor) -> None:
    envoy = envoy_class(descriptor)
    if isinstance(descriptor, EnumDescriptor):
        assert {value.name: value.number for value in descriptor.values} == {
            value.name: value.value for value in envoy if value.name in descriptor.values_by_name}
        return
    envoy_fields = {f.name: f.metadata["betterproto"] for f in dataclasses.fields(envoy)}
    for field in descriptor.fields:
        name = "append_" if field.name == "append" and "append_" in envoy_fields else field.name
        assert name in envoy_fields, f"{descriptor.name}.{field.name} is not Envoy's"
        theirs = envoy_fields[name]
        assert field.number == theirs.number, f"{descriptor.name}.{field.name}"
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            assert theirs.proto_type == "map", f"{descriptor.name}.{field.name}"
            continue
        assert KINDS[field.type] == theirs.proto_type, f"{descriptor.name}.{field.name}"
        assert field.is_repeated == theirs.repeated, f"{descriptor.name}.{field.name}"
        oneof = field.containing_oneof.name if field.containing_oneof is not None else None
        assert oneof == theirs.group, f"{descriptor.name}.{field.name}"


def test_a_message_envoy_sends_parses_with_fields_we_do_not_declare_kept() -> None:
    """Envoy's newer fields (unknown to these files) survive a parse and re-serialisation untouched."""
    from envoy_data_plane.envoy.config.core.v3 import HeaderMap, HeaderValue
    from envoy_data_plane.envoy.service.ext_proc.v3 import HttpHeaders, ProcessingRequest

    envoy_message = ProcessingRequest(
        request_headers=HttpHeaders(headers=HeaderMap(headers=[HeaderValue(key=":path", raw_value=b"/v1/chat")]),
                                    end_of_stream=False),
        observability_mode=True)
    wire = bytes(envoy_message) + b"\xa8\x06\x01"  # field 101, varint 1: a field no Envoy version has yet
    parsed = external_processor_pb2.ProcessingRequest.FromString(wire)
    assert parsed.WhichOneof("request") == "request_headers"
    assert parsed.request_headers.headers.headers[0].raw_value == b"/v1/chat"
    assert parsed.observability_mode
    assert parsed.SerializeToString().endswith(b"\xa8\x06\x01")
