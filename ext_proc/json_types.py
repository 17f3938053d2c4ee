"""Names for the JSON the per-request code passes around as plain dicts (parsed by orjson, never validated into
classes: the hot path stays on dicts). A name says which JSON it is; the type checker sees `dict[str, Any]`."""

from __future__ import annotations

from typing import Any, TypeAlias

JsonObject: TypeAlias = dict[str, Any]
"""Any JSON object: a request or answer body, or a part of one."""
