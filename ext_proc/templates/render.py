"""A template version made into a request's messages: pure functions over the validated template and the request's
variables, no I/O.

Placeholders are replaced in one pass over the template's text (`re.sub`): a variable's value is inserted verbatim and
never scanned again, so a value holding `{{other}}` stays those characters (a client can't reach another variable, or
anything the template did not put there, through a value).

The variables a request sends must be exactly what the template uses: a missing one and one the template does not know
(declared `variables`, else its placeholders) are both a 400, so a typo in a name is never a silently empty prompt.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..config.models import PromptTemplate
from ..config.prompt_syntax import PLACEHOLDER, placeholders
from ..errors import BadRequest
from ..json_types import JsonObject


def check_variables(template: PromptTemplate, variables: Mapping[str, str], param: str) -> None:
    """`param`: where the request put its variables (`prompt_variables`, `prompt.variables`), named in the 400."""
    used = placeholders(template.messages)
    known = template.variables if template.variables is not None else used
    unknown = [name for name in variables if name not in known]
    if unknown:
        raise BadRequest(f"The prompt template {template.name!r} (version {template.version}) has no variable "
                         f"{unknown[0]!r}; its variables: {', '.join(known) or 'none'}.",
                         param=f"{param}.{unknown[0]}", code="unknown_prompt_variable")
    missing = [name for name in used if name not in variables]
    if missing:
        raise BadRequest(f"The prompt template {template.name!r} (version {template.version}) needs the variable "
                         f"{missing[0]!r}; send it in `{param}`.", param=param, code="missing_prompt_variable")


def render_messages(template: PromptTemplate, variables: Mapping[str, str]) -> list[JsonObject]:
    """The template's messages with every placeholder replaced (`check_variables` passed: each one has a value)."""
    return [_render_message(message, variables) for message in template.messages]


def _render_message(message: dict[str, Any], variables: Mapping[str, str]) -> JsonObject:
    content = message["content"]
    if isinstance(content, str):
        rendered: object = _fill(content, variables)
    else:
        rendered = [{"type": "text", "text": _fill(part["text"], variables)} for part in content]
    return {**message, "content": rendered}


def _fill(text: str, variables: Mapping[str, str]) -> str:
    return PLACEHOLDER.sub(lambda match: variables[match.group(1)], text)


def responses_items(messages: list[JsonObject]) -> list[JsonObject]:
    """Chat messages as Responses `input` message items (text parts: `input_text`, an assistant's `output_text`)."""
    items = []
    for message in messages:
        content = message["content"]
        if not isinstance(content, str):
            kind = "output_text" if message["role"] == "assistant" else "input_text"
            content = [{"type": kind, "text": part["text"]} for part in content]
        items.append({"type": "message", "role": message["role"], "content": content})
    return items


def responses_text_format(response_format: dict[str, Any]) -> JsonObject:
    """A chat `response_format` in the Responses API's `text.format` shape (json_schema's fields one level up)."""
    if response_format["type"] != "json_schema":
        return {"type": response_format["type"]}
    return {"type": "json_schema", **response_format["json_schema"]}
