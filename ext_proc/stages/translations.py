"""A request in each backend's form: translated once per kind of backend that may serve it, the backends that
refuse it left out of its order, and the backends a client's body goes to as it is (Anthropic-family backends for an
Anthropic client, backends serving the Responses API for a Responses client).

The route stage checks a request by translating it (`translate`); a backend whose translator refuses it can't serve
it and leaves the request's candidates before the policy orders them, and the request is a 400 only when no
candidate can serve it (on a `fields: strict` route, when any refuses). A direct route sends its backend's
translation as it is, so a request is translated once for the backend that serves it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..client_formats import responses_request
from ..errors import BadRequest
from ..json_types import JsonObject
from ..providers import anthropic_passthrough, responses_passthrough
from ..runtime.build import BackendInfo, RouteInfo, Runtime
from . import count_tokens
from .endpoints import Endpoint


@dataclass(frozen=True, slots=True)
class Translations:
    """A request translated for each backend that may serve it, by backend id: backends whose translator refused
    it are not among them."""

    upstream: dict[str, JsonObject]
    dropped: dict[str, str]
    """The fields each backend's translation left out, comma-separated, for `x-babelgate-dropped-fields` (only
    backends that left some out)."""


def translate(route: RouteInfo, candidates: tuple[str, ...], body: JsonObject, model: str,
              default_max_tokens: int) -> Translations:
    """Translate the request once per translation kind among the candidates (backends of one kind translate it
    alike, so they share it). A backend whose translator refuses the request can't serve it and leaves its order;
    the request is a 400 only when no candidate can serve it (a `strict` route: when any refuses), naming each
    backend and why. A direct route sends its backend's translation as it is."""
    upstream: dict[str, JsonObject] = {}
    dropped: dict[str, str] = {}
    refusals: list[tuple[BackendInfo, tuple[str, ...], BadRequest]] = []
    everyone = candidates is route.backends
    for backend, same in route.translations:
        members = same if everyone else tuple(b for b in same if b in candidates)
        if not members:
            continue
        left_out: list[str] = []
        try:
            translated = backend.chat_request(body, route.backend_model(backend.id, model), default_max_tokens,
                                              left_out)
        except BadRequest as refused:
            if route.strict:
                raise refusal(route, [(backend, members, refused)]) from None
            refusals.append((backend, members, refused))
            continue
        named = ",".join(dict.fromkeys(left_out)) if left_out else ""
        for member in members:
            upstream[member] = translated
            if named:
                dropped[member] = named
    if not upstream:
        raise refusal(route, refusals)
    return Translations(upstream, dropped)


def anthropic_openai_form(original: JsonObject) -> tuple[JsonObject, bool]:
    """An Anthropic client's body in the OpenAI form, to route and estimate it; True when the client format refused
    it, and this is its rough form (`count_tokens.rough_form`)."""
    form = count_tokens.openai_form(original)
    return (form, False) if form is not None else (count_tokens.rough_form(original), True)


def passing_through(runtime: Runtime, endpoint: Endpoint, candidates: tuple[str, ...]) -> tuple[str, ...]:
    """The candidates a client's body goes to as it is: Anthropic-family backends for an Anthropic client, backends
    that serve the Responses API for a Responses client. None of them needs a translation, nor can refuse one."""
    if endpoint is Endpoint.MESSAGES:
        return tuple(b for b in candidates if anthropic_passthrough.passes_through(runtime.backends[b].schema))
    if endpoint is Endpoint.RESPONSES:
        return tuple(b for b in candidates if responses_passthrough.passes_through(runtime.backends[b].settings))
    return ()


def chat_form(original: JsonObject) -> tuple[JsonObject, bool]:
    """A Responses client's body in the chat form, to route and estimate it; True when the client format refused
    it, and this is its rough form."""
    body = without_previous(original)
    try:
        return responses_request.to_openai(body), False
    except BadRequest:
        return responses_request.rough_form(body), True


def without_previous(body: JsonObject) -> JsonObject:
    """The route stage already put the conversation `previous_response_id` names into `input`."""
    return {name: value for name, value in body.items() if name != "previous_response_id"}


def translate_others(route: RouteInfo, candidates: tuple[str, ...], passing: tuple[str, ...], body: JsonObject,
                      model: str, default_max_tokens: int) -> Translations:
    """`translate` for the candidates that don't take the body as it is: those that refuse leave the order, and
    since the passthrough candidates can serve the request, that is no 400 (unless the route is strict)."""
    try:
        return translate(route, tuple(b for b in candidates if b not in passing), body, model, default_max_tokens)
    except BadRequest:
        if route.strict:
            raise
        return Translations({}, {})


def refusal(route: RouteInfo, refusals: list[tuple[BackendInfo, tuple[str, ...], BadRequest]]) -> BadRequest:
    """The 400 for a request no backend (or, on a strict route, some backend) can serve: each backend and why."""
    reasons = []
    for backend, members, refused in refusals:
        preset = backend.settings.preset
        kind = f"{backend.schema}, preset {preset}" if preset else backend.schema
        what = f"`{refused.param}`" if refused.param else "this request"
        reasons.append((", ".join(repr(member) for member in members), kind, f"can't serve {what}: {refused.message}"))
    first = refusals[0][2]
    if len(refusals) == 1:
        names, kind, why = reasons[0]
        return BadRequest(f"Backend {names} ({kind}) of route {route.name!r} {why}", code=first.code,
                          param=first.param, headers=first.headers)
    listed = "; ".join(f"{names} ({kind}) {why}" for names, kind, why in reasons)
    return BadRequest(f"No backend of route {route.name!r} can serve this request: {listed}",
                      code=first.code if len({r.code for _, _, r in refusals}) == 1 else None,
                      param=first.param if len({r.param for _, _, r in refusals}) == 1 else None,
                      headers=first.headers)
