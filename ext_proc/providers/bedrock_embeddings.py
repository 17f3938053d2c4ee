"""OpenAI embeddings <-> Bedrock embedding models through InvokeModel (`POST /model/{modelId}/invoke`).

The model family is read from the model id (foundation model id, inference profile or ARN):

- `amazon.titan-embed-text-v2*`: `{inputText, dimensions (256, 512 or 1024), normalize: true}` ->
  `{embedding, inputTextTokenCount}`. `amazon.titan-embed-text-v1` / `amazon.titan-embed-g1-text-02` take
  `{inputText}` only. Titan embeds ONE text per call (batches exist only as asynchronous batch-inference jobs), so
  an `input` list of more than one item is refused rather than fanned out.
- `cohere.embed-*` (english/multilingual v3, v4): `{texts, input_type}` -> `{embeddings, id, texts}`, up to 96
  texts per call. `input_type` defaults to `search_document`; clients may send Cohere's `input_type` as an extra
  field. v4 takes `dimensions` as `output_dimension` (256, 512, 1024 or 1536).

Answers here are float arrays; the attempt stage packs them as base64 when the client asked for
`encoding_format: base64`.
Cohere on Bedrock reports no token counts in the body, so its usage is 0 and the gateway charges its own estimate.
"""

from __future__ import annotations

from urllib.parse import quote

from ..errors import BadRequest
from ..json_types import JsonObject
from .common import DROPPED, MAPPED

FIELDS: dict[str, str] = {
    "input": MAPPED,  # one string (Titan) or up to 96 strings (Cohere); token arrays are refused
    "model": MAPPED,  # the backend's model id, in the path
    "dimensions": MAPPED,  # Titan v2 `dimensions`, Cohere v4 `output_dimension`; refused elsewhere
    "encoding_format": MAPPED,  # float here; base64 packed by the attempt stage
    "user": DROPPED,  # no Bedrock equivalent; does not change the vectors
    "input_type": MAPPED,  # Cohere extension: search_document (default), search_query, classification, clustering
}

COHERE_MAX_TEXTS = 96
_TITAN_V2_DIMENSIONS = (256, 512, 1024)
_COHERE_V4_DIMENSIONS = (256, 512, 1024, 1536)
_COHERE_INPUT_TYPES = ("search_document", "search_query", "classification", "clustering")


def embeddings_path(model: str, backend: object = None) -> str:
    return f"/model/{quote(model, safe='')}/invoke"


def embedding_family(model: str) -> str:
    """`titan-v2`, `titan-v1`, `cohere-v3`, `cohere-v4` or `other`."""
    if "amazon.titan-embed-text-v2" in model:
        return "titan-v2"
    if "amazon.titan-embed-text-v1" in model or "amazon.titan-embed-g1-text" in model:
        return "titan-v1"
    if "cohere.embed-v4" in model:
        return "cohere-v4"
    if "cohere.embed-" in model:
        return "cohere-v3"
    return "other"


def embeddings_request(body: JsonObject, model: str, backend: object = None) -> JsonObject:
    """An OpenAI embeddings request -> the InvokeModel body of `model`'s family."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    for name in body:
        if name not in FIELDS:
            raise BadRequest(f"'{name}' is not an embeddings field the bedrock translator knows; it is refused "
                             "rather than ignored", param=name)
    encoding = body.get("encoding_format")
    if encoding is not None and encoding not in ("float", "base64"):
        raise BadRequest("'encoding_format' must be 'float' or 'base64'", param="encoding_format")
    family = embedding_family(model)
    texts = _texts(body.get("input"))
    dimensions = body.get("dimensions")
    if dimensions is not None and (not isinstance(dimensions, int) or isinstance(dimensions, bool)):
        raise BadRequest("'dimensions' must be an integer", param="dimensions")
    if family.startswith("titan"):
        if body.get("input_type") is not None:
            raise BadRequest("'input_type' applies to cohere.embed models only", param="input_type")
        if len(texts) != 1:
            raise BadRequest(f"Amazon Titan embedding models embed one text per request on Bedrock, and 'input' "
                             f"holds {len(texts)}; send one string (or use a cohere.embed model for batches)",
                             param="input")
        request: JsonObject = {"inputText": texts[0]}
        if family == "titan-v2":
            request["normalize"] = True  # OpenAI embeddings are unit vectors
            if dimensions is not None:
                request["dimensions"] = _one_of(dimensions, _TITAN_V2_DIMENSIONS, "amazon.titan-embed-text-v2")
        elif dimensions is not None:
            raise BadRequest("'dimensions' is not supported by amazon.titan-embed-text-v1 (1536 dimensions)",
                             param="dimensions")
        return request
    if family.startswith("cohere"):
        if len(texts) > COHERE_MAX_TEXTS:
            raise BadRequest(f"cohere.embed models take at most {COHERE_MAX_TEXTS} texts per request",
                             param="input")
        input_type = body.get("input_type") or "search_document"
        if input_type not in _COHERE_INPUT_TYPES:
            raise BadRequest(f"'input_type' must be one of {', '.join(_COHERE_INPUT_TYPES)}", param="input_type")
        request = {"texts": texts, "input_type": input_type}
        if dimensions is not None:
            if family != "cohere-v4":
                raise BadRequest("'dimensions' is supported by cohere.embed-v4 only", param="dimensions")
            request["output_dimension"] = _one_of(dimensions, _COHERE_V4_DIMENSIONS, "cohere.embed-v4")
        return request
    raise BadRequest("embeddings on bedrock backends support amazon.titan-embed-text and cohere.embed model ids; "
                     "this backend's model is neither", param="model")


def _texts(value: object) -> list[str]:
    if isinstance(value, str):
        value = [value]
    elif not isinstance(value, list) or not value:
        raise BadRequest("'input' must be a non-empty string or array of strings", param="input")
    texts = [item for item in value if isinstance(item, str) and item]
    if len(texts) != len(value):
        raise BadRequest("'input' must hold non-empty strings on bedrock backends (token arrays can't be sent)",
                         param="input")
    return texts


def _one_of(value: int, allowed: tuple[int, ...], family: str) -> int:
    if value not in allowed:
        raise BadRequest(f"'dimensions' must be one of {', '.join(map(str, allowed))} for {family}",
                         param="dimensions")
    return value


def embeddings_response(body: JsonObject, model: str) -> JsonObject:
    """A Titan (`embedding`) or Cohere (`embeddings`) answer -> an OpenAI embeddings `list`."""
    if "embedding" in body:
        vectors = [body["embedding"]]
        tokens = body.get("inputTextTokenCount") or 0
    else:
        embeddings = body["embeddings"]
        vectors = embeddings["float"] if isinstance(embeddings, dict) else embeddings
        billed = (body.get("meta") or {}).get("billed_units") or {}
        tokens = billed.get("input_tokens") or 0
    if not isinstance(vectors, list) or not all(isinstance(vector, list) for vector in vectors):
        raise ValueError("the bedrock embedding answer holds no float vectors")
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": index, "embedding": vector} for index, vector in enumerate(vectors)],
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
