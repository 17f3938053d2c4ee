"""Client URLs a provider would fetch with the gateway's own cloud identity: refused unless the backend grants them.

Bedrock reads an `s3://` image (Converse `s3Location`) with the gateway's AWS role, and Vertex reads a `gs://` file
(`fileData.fileUri`) with its service account: forwarded as they come, any key holder could read whatever the
gateway's role can. So a backend receives such a URL only when its `fetch_urls` grants it (`config.models.
FetchGrant`); any other is a 400 (`provider_fetch_not_allowed`) naming the client's param, which in a chain means
"this backend can't serve this request" (`stages/translations.translate`): another backend of the route may still
serve it.

Decisions worth knowing before changing this file:

- What is looked at: the URLs a client part carries (`image_url`, `file.file_data` / `file_id` / `file_url`, an
  Anthropic block's `source.url`), never text: a URL the model only reads is no fetch. An `s3:` or `gs:` scheme in
  any case, after leading whitespace, counts (a grant, lowercase, never matches `S3://`). Every backend applies the
  rule, not only Bedrock and Vertex: a grant says which backends may get the URL; elsewhere it is refused before a
  provider answers with its own error.
- Matching is exact: the URL starts with the grant's prefix, case-sensitively, and a prefix that does not end with
  `/` names an object or a folder (`s3://b/a` grants `s3://b/a` and `s3://b/a/...`, not `s3://b/ab`). Nothing is
  normalised; a URL holding `..`, `/./`, `%`, a backslash, whitespace or a control character is refused outright,
  granted or not, since a service may decode or normalise it into another object.
- An S3 grant's `bucket_owner` becomes `s3Location.bucketOwner` (botocore's bedrock-runtime model) on every
  location the URL reaches in the Converse request: a bucket of the same name in another account is never read.
- `provider_options` is merged into a translated request after translation and may carry its own `s3Location` or
  `fileData` (Google also reads `file_data` / `file_uri`): when a request has it, the Converse and Gemini requests
  are walked for them, and those are checked alike (named `provider_options`).
- AI Studio (`gemini`) reads its Files API URIs (`https://generativelanguage.googleapis.com/...`) with the
  gateway's key: another client's uploads. Refused there, with no grant.
- Anthropic Messages bodies that pass through untranslated (`anthropic_passthrough.request`): no service of that
  set fetches an `s3://` or `gs://` `source.url` (Bedrock's InvokeModel documents base64 sources only, Vertex
  answers "URL sources are not supported", Anthropic has no cloud identity), and the Messages format has no bucket
  owner to send: such a URL is refused there whatever the grants.
- Cheap when there is nothing to check: a request without such a URL and without `provider_options` costs one pass
  over its message parts, and its translated request is not walked.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from ..config.models import FetchGrant
from ..errors import BadRequest
from ..json_types import JsonObject
from .common import PROVIDER_OPTIONS

CODE = "provider_fetch_not_allowed"
FETCHED_SCHEMES = ("s3:", "gs:")
"""URL schemes a provider reads with the gateway's identity (compared lowercased)."""
GEMINI_FILES = "https://generativelanguage.googleapis.com/"
"""AI Studio's Files API: files of the gateway key's project."""
_WALKED = frozenset({"bedrock-converse", "gemini", "vertex-gemini"})
"""Schemas whose translated request may hold fetch references of its own (`provider_options`)."""
_S3_KEYS = ("s3Location",)
_FILE_KEYS = ("fileData", "file_data")
_URI_KEYS = ("fileUri", "file_uri")
_UNSAFE = ("..", "/./", "%", "\\")


def checked(schema: str, grants: Sequence[FetchGrant], body: JsonObject, upstream: JsonObject) -> JsonObject:
    """`upstream` (the translation of the OpenAI-form `body` for a backend of `schema` with `grants`) as it may be
    sent: every fetched URL granted, S3 bucket owners set. Raises BadRequest for a URL no grant allows."""
    found: dict[str, str] = {}
    for url, param in _client_urls(body, schema):
        found.setdefault(url, param)  # an error names where the URL first is
    if not found and PROVIDER_OPTIONS not in body:
        return upstream
    owners = False
    for url, param in found.items():
        owners = _grant(url, grants, param, schema).bucket_owner is not None or owners
    if schema not in _WALKED or (not owners and PROVIDER_OPTIONS not in body):
        return upstream
    walked = _walk(upstream, _Walk(schema, grants, found))
    assert isinstance(walked, dict)
    return walked


def check_messages(schema: str, body: JsonObject) -> None:
    """An Anthropic Messages body that goes untranslated to a backend of `schema`: refused when a source URL is one
    that a provider would fetch with the gateway's identity (see the module docstring)."""
    for url, param in _message_urls(body.get("messages"), "messages"):
        if _fetched(url, ""):
            raise BadRequest(f"{param}: {schema} backends don't read {_scheme(url)} URLs, and this gateway does not "
                             "let a provider fetch them with its own identity; send the content as base64",
                             param=param, code=CODE)


# --- finding URLs --------------------------------------------------------------------------------------------------


def _client_urls(body: JsonObject, schema: str) -> Iterator[tuple[str, str]]:
    """(URL, the client's param) for every URL in an OpenAI-form body's parts that a provider would fetch."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            if isinstance(part, dict):
                for url, param in _part_urls(part, f"messages[{i}].content[{j}]"):
                    if _fetched(url, schema):
                        yield url, param


def _part_urls(part: JsonObject, where: str) -> Iterator[tuple[str, str]]:
    kind = part.get("type")
    if kind == "image_url":
        image = part.get("image_url")
        if isinstance(image, str):
            yield image, f"{where}.image_url"
        elif isinstance(image, dict) and isinstance(image.get("url"), str):
            yield image["url"], f"{where}.image_url.url"
    elif kind == "file":
        file = part.get("file")
        if isinstance(file, dict):
            for name in ("file_data", "file_id", "file_url"):
                if isinstance(file.get(name), str):
                    yield file[name], f"{where}.file.{name}"
    elif kind == "anthropic" and isinstance(part.get("anthropic"), dict):
        yield from _block_urls(part["anthropic"], f"{where}.anthropic")


def _message_urls(messages: object, where: str) -> Iterator[tuple[str, str]]:
    """Source URLs of an Anthropic Messages conversation's blocks (tool results' and documents' inner blocks too)."""
    if not isinstance(messages, list):
        return
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            for j, block in enumerate(content):
                if isinstance(block, dict):
                    yield from _block_urls(block, f"{where}[{i}].content[{j}]")


def _block_urls(block: JsonObject, where: str) -> Iterator[tuple[str, str]]:
    source = block.get("source")
    if isinstance(source, dict):
        if isinstance(source.get("url"), str):
            yield source["url"], f"{where}.source.url"
        inner = source.get("content")
        if isinstance(inner, list):
            yield from _inner_urls(inner, f"{where}.source.content")
    inner = block.get("content")
    if isinstance(inner, list):
        yield from _inner_urls(inner, f"{where}.content")


def _inner_urls(blocks: list[object], where: str) -> Iterator[tuple[str, str]]:
    for k, block in enumerate(blocks):
        if isinstance(block, dict):
            yield from _block_urls(block, f"{where}[{k}]")


def _fetched(url: str, schema: str) -> bool:
    """A URL the provider would read with the gateway's identity."""
    start = url.lstrip()[:48].lower()  # lstrip copies nothing when there is nothing to strip
    return start.startswith(FETCHED_SCHEMES) or (schema == "gemini" and start.startswith(GEMINI_FILES))


def _scheme(url: str) -> str:
    return url.lstrip().partition(":")[0].lower() + "://"


# --- granting ------------------------------------------------------------------------------------------------------


def _grant(url: str, grants: Sequence[FetchGrant], param: str, schema: str) -> FetchGrant:
    """The grant that allows `url`; a BadRequest naming `param` when none does."""
    if any(marker in url for marker in _UNSAFE) or any(char.isspace() or char < " " or char == "\x7f"
                                                       for char in url):
        raise BadRequest(f"{param}: this URL holds `..`, `/./`, `%`, a backslash, whitespace or a control character; "
                         "the gateway lets providers fetch plain URLs only", param=param, code=CODE)
    if url.lower().startswith(GEMINI_FILES):
        raise BadRequest(f"{param}: a Files API URI names a file of the gateway's own Gemini project, which this "
                         "gateway does not let clients read; send the content inline (a base64 data URL)",
                         param=param, code=CODE)
    for grant in grants:
        if _covers(grant.prefix, url):
            return grant
    raise BadRequest(f"{param}: the {schema} backend would fetch this {_scheme(url)} URL with the gateway's own "
                     "identity, and its `fetch_urls` grants no prefix of it; send the content inline (a base64 data "
                     "URL)", param=param, code=CODE)


def _covers(prefix: str, url: str) -> bool:
    if prefix.endswith("/"):
        return url.startswith(prefix)
    return url == prefix or url.startswith(prefix + "/")


class _Walk:
    """What checking a translated request needs: the backend's schema and grants, and the client's URLs' params."""

    __slots__ = ("grants", "params", "schema")

    def __init__(self, schema: str, grants: Sequence[FetchGrant], params: dict[str, str]) -> None:
        self.schema, self.grants, self.params = schema, grants, params

    def s3_location(self, location: JsonObject) -> JsonObject:
        uri = location.get("uri")
        if not isinstance(uri, str):
            return location
        grant = _grant(uri, self.grants, self.params.get(uri, PROVIDER_OPTIONS), self.schema)
        if grant.bucket_owner is None or location.get("bucketOwner") == grant.bucket_owner:
            return location
        return {**location, "bucketOwner": grant.bucket_owner}

    def file_data(self, data: JsonObject) -> None:
        for key in _URI_KEYS:
            uri = data.get(key)
            if isinstance(uri, str) and _fetched(uri, self.schema):
                _grant(uri, self.grants, self.params.get(uri, PROVIDER_OPTIONS), self.schema)


def _walk(node: object, walk: _Walk) -> object:
    """`node` with every fetch reference in it checked; copied where a bucket owner was set (a translated request
    may share objects with the client's body, which other backends translate too)."""
    if isinstance(node, list):
        items = [_walk(item, walk) for item in node]
        return items if any(new is not old for new, old in zip(items, node, strict=True)) else node
    if not isinstance(node, dict):
        return node
    copy: JsonObject | None = None
    for key, value in node.items():
        new: object
        if key in _S3_KEYS and isinstance(value, dict):
            new = walk.s3_location(value)
        elif key in _FILE_KEYS and isinstance(value, dict):
            walk.file_data(value)
            new = value
        else:
            new = _walk(value, walk)
        if new is not value:
            if copy is None:
                copy = dict(node)
            copy[key] = new
    return node if copy is None else copy
