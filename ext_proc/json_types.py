"""Names for the JSON the per-request code passes around as plain dicts (parsed by orjson, never validated into
classes: the hot path stays on dicts). A name says which JSON it is; the type checker sees `dict[str, Any]`."""

from __future__ import annotations

from typing import Any, TypeAlias

JsonObject: TypeAlias = dict[str, Any]
"""Any JSON object: a request or answer body, or a part of one."""


def whole_numbers_as_ints(value: object) -> object:
    """`value` with every float that holds a whole number made an int, at any depth: a protobuf Struct carries every
    number as a double, and JSON Schema's `uniqueItems` counts 1 and 1.0 as the same."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: whole_numbers_as_ints(item) for key, item in value.items()}
    if isinstance(value, list):
        return [whole_numbers_as_ints(item) for item in value]
    return value
