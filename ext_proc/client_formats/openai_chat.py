"""The shape of an OpenAI chat request, checked once in the route stage so that every translator can rely on it.

Only JSON types are checked here, field by field as the OpenAI API documents them (a string where a string belongs, an
object where an object belongs); what a value means (a known role, a supported part type, a model's limits) is each
translator's business. A wrong type is a 400 naming the field, never an exception in a translator. Fields the gateway
does not know are left alone: translators pass, map or refuse them on purpose.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import BadRequest
from ..json_types import JsonObject

_NUMBER = (int, float)
_TOOL_CHOICES = ("none", "auto", "required")


def _name(kinds: tuple[type, ...]) -> str:
    names = {str: "a string", bool: "a boolean", int: "an integer", float: "a number", dict: "an object",
             list: "an array"}
    return "a number" if kinds == _NUMBER else " or ".join(names[k] for k in kinds)


def _expect(value: object, kinds: tuple[type, ...], param: str, *, optional: bool = True) -> None:
    # Exact types: a parsed JSON value is exactly one of str, int, float, bool, dict, list or None, and a JSON
    # boolean must not pass for a number (bool is an int subclass).
    if value is None and optional:
        return
    if type(value) not in kinds:
        raise BadRequest(f"`{param}` must be {_name(kinds)}.", param=param)


def _object(value: object, param: str) -> JsonObject:
    """`_expect(value, _O, param, optional=False)`, returning `value` typed as the object it was found to be."""
    if type(value) is not dict:
        raise BadRequest(f"`{param}` must be {_name(_O)}.", param=param)
    return value


def _strings(values: list[object], param: str) -> None:
    """The items of an array whose type `_fields_of` has already checked."""
    for index, item in enumerate(values):
        _expect(item, (str,), f"{param}[{index}]", optional=False)


def _fields_of(body: dict, types: dict[str, tuple[type, ...]], where: str) -> None:
    """The JSON type of each field present; walks what the client sent, not the whole table (the hot path)."""
    for field, value in body.items():
        kinds = types.get(field)
        if kinds is not None and value is not None and type(value) not in kinds:
            raise BadRequest(f"`{where}{field}` must be {_name(kinds)}.", param=where + field)


_S, _B, _I, _O, _A = (str,), (bool,), (int,), (dict,), (list,)
_TOP_LEVEL: dict[str, tuple[type, ...]] = {
    "model": _S, "stream": _B, "temperature": _NUMBER, "top_p": _NUMBER, "presence_penalty": _NUMBER,
    "frequency_penalty": _NUMBER, "max_tokens": _I, "max_completion_tokens": _I, "n": _I, "seed": _I, "user": _S,
    "reasoning_effort": _S, "service_tier": _S, "parallel_tool_calls": _B, "logprobs": _B, "top_logprobs": _I,
    "store": _B, "verbosity": _S, "safety_identifier": _S, "prompt_cache_key": _S, "stream_options": _O,
    "response_format": _O, "metadata": _O, "logit_bias": _O, "prediction": _O, "audio": _O, "web_search_options": _O,
    "tool_choice": (str, dict), "stop": (str, list), "tools": _A, "modalities": _A,
}
_MESSAGE: dict[str, tuple[type, ...]] = {
    "name": _S, "tool_call_id": _S, "refusal": _S, "content": (str, list), "tool_calls": _A, "function_call": _O,
    "audio": _O,
}


def check_chat_shape(body: dict) -> None:
    messages = body.get("messages")
    if type(messages) is not list or not messages:
        raise BadRequest("`messages` must be a non-empty array.", param="messages")
    _fields_of(body, _TOP_LEVEL, "")
    for index, message in enumerate(messages):
        _message(message, index)
    stop = body.get("stop")
    if type(stop) is list:
        _strings(stop, "stop")
    if body.get("modalities") is not None:
        _strings(body["modalities"], "modalities")
    options = body.get("stream_options")
    if options is not None:
        _expect(options.get("include_usage"), _B, "stream_options.include_usage")
    response_format = body.get("response_format")
    if response_format is not None:
        _expect(response_format.get("type"), _S, "response_format.type", optional=False)
        _expect(response_format.get("json_schema"), _O, "response_format.json_schema")
    for index, tool in enumerate(body.get("tools") or ()):
        _tool(tool, f"tools[{index}]")
    choice = body.get("tool_choice")
    if type(choice) is str and choice not in _TOOL_CHOICES:
        raise BadRequest(f"`tool_choice` must be one of {', '.join(_TOOL_CHOICES)}, or an object naming a function.",
                         param="tool_choice")
    if type(choice) is dict:
        _expect(choice.get("type"), _S, "tool_choice.type")
        function = choice.get("function")
        _expect(function, _O, "tool_choice.function")
        if function is not None:
            _expect(function.get("name"), _S, "tool_choice.function.name", optional=False)


def _message(message: object, index: int) -> None:
    if type(message) is not dict or type(message.get("role")) is not str:
        param = f"messages[{index}]"
        raise BadRequest(f"`{param}` must be an object with a string `role`.", param=param)
    if len(message) == 2 and type(message.get("content")) is str:
        return  # the usual message: a role and a text
    _fields_of(message, _MESSAGE, f"messages[{index}].")
    param = f"messages[{index}]"
    content = message.get("content")
    if type(content) is list:
        for number, part in enumerate(content):
            _part(part, f"{param}.content[{number}]")
    for number, call in enumerate(message.get("tool_calls") or ()):
        where = f"{param}.tool_calls[{number}]"
        call = _object(call, where)
        _expect(call.get("id"), _S, f"{where}.id")
        _expect(call.get("type"), _S, f"{where}.type")
        function = call.get("function")
        function = _object(function, f"{where}.function")
        _expect(function.get("name"), _S, f"{where}.function.name", optional=False)
        _expect(function.get("arguments"), _S, f"{where}.function.arguments")


def _image_url(value: object, param: str) -> None:
    _expect(value, (str, dict), param, optional=False)
    if type(value) is dict:
        _expect(value.get("url"), _S, f"{param}.url", optional=False)
        _expect(value.get("detail"), _S, f"{param}.detail")


def _fields(*names: str) -> Callable[[object, str], None]:
    """An object whose named fields, where present, are strings."""
    def check(value: object, param: str) -> None:
        fields = _object(value, param)
        for name in names:
            _expect(fields.get(name), _S, f"{param}.{name}")
    return check


_PARTS: dict[str, tuple[str, Callable[[object, str], None]]] = {
    "image_url": ("image_url", _image_url),
    "input_audio": ("input_audio", _fields("data", "format")),
    "file": ("file", _fields("file_data", "file_id", "filename")),
}


def _part(part: object, param: str) -> None:
    if type(part) is not dict or type(part.get("type")) is not str:
        raise BadRequest(f"`{param}` must be an object with a string `type`.", param=param)
    _expect(part.get("text"), _S, f"{param}.text")
    known = _PARTS.get(part["type"])
    if known is not None:
        field, check = known
        check(part.get(field), f"{param}.{field}")


def _tool(tool: object, param: str) -> None:
    tool = _object(tool, param)
    _expect(tool.get("type"), _S, f"{param}.type")
    function = tool.get("function")
    _expect(function, _O, f"{param}.function")
    if function is not None:
        _expect(function.get("name"), _S, f"{param}.function.name", optional=False)
        _expect(function.get("description"), _S, f"{param}.function.description")
        _expect(function.get("parameters"), _O, f"{param}.function.parameters")
        _expect(function.get("strict"), _B, f"{param}.function.strict")
