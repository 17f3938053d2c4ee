"""The shape of an OpenAI chat request, checked once in the route stage so that every translator can rely on it.

Only JSON types are checked here, field by field as the OpenAI API documents them (a string where a string belongs, an
object where an object belongs); what a value means (a known role, a supported part type, a model's limits) is each
translator's business. A wrong type is a 400 naming the field, never an exception in a translator. Fields the gateway
does not know are left alone: translators pass, map or refuse them on purpose.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import BadRequest

_NUMBER = (int, float)
_TOOL_CHOICES = ("none", "auto", "required")


def _name(kinds: tuple[type, ...] | type) -> str:
    names = {str: "a string", bool: "a boolean", int: "an integer", float: "a number", dict: "an object",
             list: "an array"}
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if kinds == _NUMBER:
        return "a number"
    return " or ".join(names[k] for k in kinds)


def _expect(value: object, kinds: tuple[type, ...] | type, param: str, *, optional: bool = True) -> None:
    if value is None and optional:
        return
    kinds_tuple = kinds if isinstance(kinds, tuple) else (kinds,)
    # JSON true/false are Python bools, which are ints too: a boolean is never a number here
    if isinstance(value, bool) and bool not in kinds_tuple:
        raise BadRequest(f"`{param}` must be {_name(kinds)}.", param=param)
    if not isinstance(value, kinds_tuple):
        raise BadRequest(f"`{param}` must be {_name(kinds)}.", param=param)


def _strings(value: object, param: str) -> None:
    _expect(value, list, param)
    for index, item in enumerate(value or ()):  # type: ignore[arg-type]
        _expect(item, str, f"{param}[{index}]", optional=False)


_SCALARS: dict[str, tuple[type, ...] | type] = {
    "model": str, "stream": bool, "temperature": _NUMBER, "top_p": _NUMBER, "presence_penalty": _NUMBER,
    "frequency_penalty": _NUMBER, "max_tokens": int, "max_completion_tokens": int, "n": int, "seed": int,
    "user": str, "reasoning_effort": str, "service_tier": str, "parallel_tool_calls": bool, "logprobs": bool,
    "top_logprobs": int, "store": bool, "verbosity": str, "safety_identifier": str, "prompt_cache_key": str,
    "stream_options": dict, "response_format": dict, "metadata": dict, "logit_bias": dict, "prediction": dict,
    "audio": dict, "web_search_options": dict, "tool_choice": (str, dict), "stop": (str, list), "tools": list,
    "modalities": list, "messages": list,
}


def check_chat_shape(body: dict) -> None:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("`messages` must be a non-empty array.", param="messages")
    for field, kinds in _SCALARS.items():
        _expect(body.get(field), kinds, field)
    for index, message in enumerate(messages):
        _message(message, f"messages[{index}]")
    stop = body.get("stop")
    if isinstance(stop, list):
        _strings(stop, "stop")
    _strings(body.get("modalities"), "modalities")
    options = body.get("stream_options")
    if options is not None:
        _expect(options.get("include_usage"), bool, "stream_options.include_usage")
    response_format = body.get("response_format")
    if response_format is not None:
        _expect(response_format.get("type"), str, "response_format.type", optional=False)
        _expect(response_format.get("json_schema"), dict, "response_format.json_schema")
    for index, tool in enumerate(body.get("tools") or ()):
        _tool(tool, f"tools[{index}]")
    choice = body.get("tool_choice")
    if isinstance(choice, str) and choice not in _TOOL_CHOICES:
        raise BadRequest(f"`tool_choice` must be one of {', '.join(_TOOL_CHOICES)}, or an object naming a function.",
                         param="tool_choice")
    if isinstance(choice, dict):
        _expect(choice.get("type"), str, "tool_choice.type")
        function = choice.get("function")
        _expect(function, dict, "tool_choice.function")
        if function is not None:
            _expect(function.get("name"), str, "tool_choice.function.name", optional=False)


def _message(message: object, param: str) -> None:
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise BadRequest(f"`{param}` must be an object with a string `role`.", param=param)
    for field in ("name", "tool_call_id", "refusal"):
        _expect(message.get(field), str, f"{param}.{field}")
    content = message.get("content")
    _expect(content, (str, list), f"{param}.content")
    if isinstance(content, list):
        for index, part in enumerate(content):
            _part(part, f"{param}.content[{index}]")
    calls = message.get("tool_calls")
    _expect(calls, list, f"{param}.tool_calls")
    for index, call in enumerate(calls or ()):
        where = f"{param}.tool_calls[{index}]"
        _expect(call, dict, where, optional=False)
        _expect(call.get("id"), str, f"{where}.id")
        _expect(call.get("type"), str, f"{where}.type")
        function = call.get("function")
        _expect(function, dict, f"{where}.function", optional=False)
        _expect(function.get("name"), str, f"{where}.function.name", optional=False)
        _expect(function.get("arguments"), str, f"{where}.function.arguments")
    _expect(message.get("function_call"), dict, f"{param}.function_call")
    _expect(message.get("audio"), dict, f"{param}.audio")


def _image_url(value: object, param: str) -> None:
    _expect(value, (str, dict), param, optional=False)
    if isinstance(value, dict):
        _expect(value.get("url"), str, f"{param}.url", optional=False)
        _expect(value.get("detail"), str, f"{param}.detail")


def _fields(*names: str) -> Callable[[object, str], None]:
    """An object whose named fields, where present, are strings."""
    def check(value: object, param: str) -> None:
        _expect(value, dict, param, optional=False)
        for name in names:
            _expect(value.get(name), str, f"{param}.{name}")  # type: ignore[union-attr]
    return check


_PARTS: dict[str, tuple[str, Callable[[object, str], None]]] = {
    "image_url": ("image_url", _image_url),
    "input_audio": ("input_audio", _fields("data", "format")),
    "file": ("file", _fields("file_data", "file_id", "filename")),
}


def _part(part: object, param: str) -> None:
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        raise BadRequest(f"`{param}` must be an object with a string `type`.", param=param)
    _expect(part.get("text"), str, f"{param}.text")
    known = _PARTS.get(part["type"])
    if known is not None:
        field, check = known
        check(part.get(field), f"{param}.{field}")


def _tool(tool: object, param: str) -> None:
    _expect(tool, dict, param, optional=False)
    _expect(tool.get("type"), str, f"{param}.type")  # type: ignore[union-attr]
    function = tool.get("function")  # type: ignore[union-attr]
    _expect(function, dict, f"{param}.function")
    if function is not None:
        _expect(function.get("name"), str, f"{param}.function.name", optional=False)
        _expect(function.get("description"), str, f"{param}.function.description")
        _expect(function.get("parameters"), dict, f"{param}.function.parameters")
        _expect(function.get("strict"), bool, f"{param}.function.strict")
