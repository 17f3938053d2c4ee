"""The fake Azure OpenAI provider: `POST /openai/deployments/{deployment}/chat/completions` (JSON or SSE),
`.../embeddings`, and the Responses API at `POST /openai/responses` (the deployment in the body's `model`; `GET`/
`DELETE /openai/responses/{id}` are 404s, the demo stores nothing), each with `?api-version=`.

The answers are the fake OpenAI provider's (`openai_server.answer`), dressed as Azure's: content-filter annotations
(`prompt_filter_results`, `content_filter_results` on every choice), the filter-only opening chunk of a stream, the
deployment name as the model, Azure's error body (`{"error": {"code", "message"}}`) and its 401/404 wording. A user
message containing `CONTENT_FILTER_TRIGGER` is refused the way Azure refuses a filtered prompt (400,
`code: content_filter` with `innererror`).

Auth is like Azure's: an `api-key` header matching the key, or an `Authorization: Bearer` token. Entra ID tokens are
signed by Microsoft and can't be verified here, so any well-formed bearer token is accepted.

Like Azure, a request without `api-version` is a 404 and an unknown version a 400; the Responses API also wants a
version from 2025-03-01-preview on. Its answers are the fake OpenAI provider's Responses answers unchanged (Azure adds
no filter annotations there); a filtered prompt is refused as for chat. Azure's newer `/openai/v1/...` paths (no
`api-version`) are not served.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs

import orjson

from ext_proc.demo import openai_server
from ext_proc.demo.answers import Call, Reply, text_of

KIND = "azure"
CONTENT_FILTER_TRIGGER = "demo-content-filter"

_ROUTE = re.compile(r"/openai/deployments/([^/]+)/(chat/completions|embeddings)")
_RESPONSES_ROUTE = re.compile(r"/openai/responses(/[^?]+)?")
_RESPONSES_SINCE = "2025-03-01"
_API_VERSION = re.compile(r"\d{4}-\d{2}-\d{2}(-preview)?")
_SAFE = {"filtered": False, "severity": "safe"}
_FILTER_RESULTS = {"hate": _SAFE, "self_harm": _SAFE, "sexual": _SAFE, "violence": _SAFE}
_PROMPT_FILTER_RESULTS = [{"prompt_index": 0, "content_filter_results": _FILTER_RESULTS}]
_DENIED = ("Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key "
           "for an active subscription and use a correct regional API endpoint for your resource.")


def answer(call: Call) -> Reply:
    path, _, query = call.path.partition("?")
    route = _ROUTE.fullmatch(path)
    responses = _RESPONSES_ROUTE.fullmatch(path)
    if route is None and responses is None:
        return error(404, "Resource not found")
    if route is not None and call.method != "POST":
        return error(405, f"The HTTP method '{call.method}' is not supported for this operation.")
    versions = parse_qs(query or call.query).get("api-version")
    if not versions:
        return error(404, "Resource not found")
    if not _API_VERSION.fullmatch(versions[0]):
        return error(400, "API version not supported", code="BadRequest")
    if not _authorized(call):
        return error(401, _DENIED, code="401")
    if route is None:
        return _responses(call, "/v1" + path.removeprefix("/openai"), versions[0])
    deployment, operation = route.groups()
    body = call.body
    if isinstance(body, dict):
        if operation == "chat/completions" and _mentions_trigger(body.get("messages")):
            return _content_filter_refusal()
        body = {**body, "model": deployment}  # Azure answers with the deployment's model whatever `model` says
    reply = openai_server.answer(Call(call.name, "POST", f"/v1/{operation}", call.headers, body, None,
                                      verbose=call.verbose))
    if reply.status != 200:
        return _azure_error(reply)
    if operation == "embeddings":
        return reply
    if reply.events is not None:
        return Reply(200, events=_annotated_events(reply.events), headers=reply.headers)
    completion = orjson.loads(reply.body)
    for choice in completion.get("choices") or ():
        choice["content_filter_results"] = _FILTER_RESULTS
    completion["prompt_filter_results"] = _PROMPT_FILTER_RESULTS
    return Reply(200, orjson.dumps(completion), None, reply.headers)


def error(status: int, message: str, *, code: str | None = None, param: str | None = None) -> Reply:
    """An answer in Azure's error format; a 429 also tells the client when to retry."""
    error_object: dict[str, object] = {"code": code or str(status), "message": message}
    if param is not None:
        error_object["param"] = param
    headers = (("retry-after", "1"),) if status == 429 else ()
    return Reply(status, orjson.dumps({"error": error_object}), None, headers)


def _authorized(call: Call) -> bool:
    if call.api_key is not None and call.headers.get("api-key") == call.api_key:
        return True
    scheme, _, token = call.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token and " " not in token:
        return True
    return call.api_key is None and "api-key" in call.headers


def _responses(call: Call, path: str, version: str) -> Reply:
    """The Responses API: the fake OpenAI provider's answer, its errors in Azure's format."""
    if version[:10] < _RESPONSES_SINCE:
        return error(400, "Azure OpenAI Responses API is enabled only for api-version 2025-03-01-preview and later",
                     code="BadRequest")
    if isinstance(call.body, dict) and _input_mentions_trigger(call.body.get("input")):
        return _content_filter_refusal()
    reply = openai_server.answer(Call(call.name, call.method, path, call.headers, call.body, None,
                                      verbose=call.verbose))
    return reply if reply.status == 200 else _azure_error(reply)


def _input_mentions_trigger(value: object) -> bool:
    """Whether a Responses `input` (a string, or items) has a user message containing the trigger."""
    if isinstance(value, str):
        return CONTENT_FILTER_TRIGGER in value
    return isinstance(value, list) and any(
        isinstance(item, dict) and item.get("role") == "user" and CONTENT_FILTER_TRIGGER in _input_text(
            item.get("content")) for item in value)


def _input_text(content: object) -> str:
    if isinstance(content, list):
        return " ".join(str(part.get("text")) for part in content if isinstance(part, dict))
    return content if isinstance(content, str) else ""


def _mentions_trigger(messages: object) -> bool:
    return isinstance(messages, list) and any(
        isinstance(message, dict) and message.get("role") == "user"
        and CONTENT_FILTER_TRIGGER in text_of(message.get("content")) for message in messages)


def _content_filter_refusal() -> Reply:
    flagged = {**_FILTER_RESULTS, "violence": {"filtered": True, "severity": "medium"}}
    body = {"error": {
        "message": "The response was filtered due to the prompt triggering Azure OpenAI's content management policy. "
                   "Please modify your prompt and retry.",
        "type": None, "param": "prompt", "code": "content_filter", "status": 400,
        "innererror": {"code": "ResponsibleAIPolicyViolation", "content_filter_result": flagged},
    }}
    return Reply(400, orjson.dumps(body))


def _azure_error(reply: Reply) -> Reply:
    """The fake OpenAI provider's error, re-rendered in Azure's format (same status and message)."""
    try:
        payload = orjson.loads(reply.body)
    except orjson.JSONDecodeError:
        payload = None
    inner = payload.get("error") if isinstance(payload, dict) else None
    inner = inner if isinstance(inner, dict) else {}
    code = inner.get("code") if isinstance(inner.get("code"), str) else None
    param = inner.get("param") if isinstance(inner.get("param"), str) else None
    message = inner.get("message")
    message = message if isinstance(message, str) else "The request failed."
    rendered = error(reply.status, message, code=code, param=param)
    return Reply(rendered.status, rendered.body, None, rendered.headers)


def _annotated_events(events: tuple[bytes, ...]) -> tuple[bytes, ...]:
    """Azure's stream: a filter-only chunk first, then the chunks with `content_filter_results` on each choice."""
    opening = {"choices": [], "created": 0, "id": "", "model": "", "object": "",
               "prompt_filter_results": _PROMPT_FILTER_RESULTS}
    out = [_sse(opening)]
    for event in events:
        data = event.removeprefix(b"data: ").strip()
        if data == b"[DONE]":
            out.append(event)
            continue
        chunk = orjson.loads(data)
        for choice in chunk.get("choices") or ():
            if choice.get("delta", {}).get("content") or choice.get("finish_reason"):
                choice["content_filter_results"] = _FILTER_RESULTS if choice.get("delta") else {}
        out.append(_sse(chunk))
    return tuple(out)


def _sse(data: dict[str, object]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"

