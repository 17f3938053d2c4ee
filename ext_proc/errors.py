"""The gateway's error hierarchy and the one function that renders OpenAI-style error bodies.

Every failure the client sees goes through `error_body`, so the shape `{"error": {"message", "type", "code", "param"}}`
is defined in exactly one place.
"""

from __future__ import annotations

import orjson


class GatewayError(Exception):
    """An error that is answered to the client with an HTTP status and an OpenAI-style body."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None,
                 headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param
        self.headers = headers

    def body(self, style: str = "openai") -> bytes:
        if style == "anthropic":
            return orjson.dumps(anthropic_error(self.status, self.message))
        return error_body(self.message, self.type, self.code, self.param)


class BadRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class Unauthorized(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(GatewayError):
    status = 403
    type = "permission_error"
    code = "model_not_allowed"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"
    scope = ""
    """The kind of scope whose limit refused: key, team, user, route or backend."""


class UpstreamError(GatewayError):
    status = 502
    type = "upstream_error"
    code = "bad_gateway"


class Unavailable(GatewayError):
    status = 503
    type = "service_unavailable"
    code = "service_unavailable"


class UpstreamTimeout(GatewayError):
    status = 504
    type = "timeout"
    code = "upstream_timeout"


def error_body(message: str, type_: str, code: str | int | None = None, param: str | None = None) -> bytes:
    """Render the OpenAI error envelope. The message must never contain a credential."""
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


def status_error_type(status: int) -> str:
    """The OpenAI error `type` conventionally paired with an HTTP status."""
    return _TYPE_BY_STATUS.get(status, "server_error" if status >= 500 else "invalid_request_error")


_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "timeout",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout",
}


def anthropic_error(status: int, message: str) -> dict:
    """The same failure in Anthropic's error shape, for clients of `/anthropic/v1/messages`."""
    return {"type": "error", "error": {"type": _ANTHROPIC_TYPE_BY_STATUS.get(status, "api_error" if status >= 500
                                                                             else "invalid_request_error"),
                                       "message": message}}


def anthropic_error_from_openai(status: int, error: dict) -> dict:
    inner = error.get("error")
    message = inner.get("message") if isinstance(inner, dict) else None
    return anthropic_error(status, str(message or "The upstream request failed."))


_ANTHROPIC_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def bounded(text: str, limit: int) -> str:
    """`text` cut to `limit` characters (the last an ellipsis): what an error message quotes of client data."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
