"""Names shared by the ext_proc server, the rendered Envoy config and the tests.

Every internal header, metadata namespace and default lives here so the two sides (Python and Envoy config) can
never drift apart.
"""

INTERNAL_HEADER_PREFIX = "x-babelgate-int-"
"""Headers with this prefix are Babelgate's own; clients may not set them."""

HEADER_CHAIN = INTERNAL_HEADER_PREFIX + "chain"
HEADER_MCP = INTERNAL_HEADER_PREFIX + "mcp"
"""Names the MCP server a forwarded MCP request goes to (its Envoy route)."""
"""Set by the route stage; Envoy's route table matches it to pick the chain's aggregate cluster."""

HEADER_ACCESS_LOG = INTERNAL_HEADER_PREFIX + "access-log"
"""Response header from a chain's attempt stage to the route stage: the answer's fields for Envoy's access log."""
HEADER_LATENCY = INTERNAL_HEADER_PREFIX + "latency"
"""Response header from a chain's attempt stage to the route stage: the attempt's latency samples
(`routing.latency.handed`), for a route ranked by latency."""

CLIENT_HEADER_PREFIX = "x-babelgate-"
"""Every header with this prefix is removed before a request leaves Envoy for a provider."""

RESPONSE_HEADER_BACKEND = "x-babelgate-backend"
RESPONSE_HEADER_ATTEMPTS = "x-babelgate-attempts"
RESPONSE_HEADER_REQUEST_ID = "x-babelgate-request-id"
RESPONSE_HEADER_MODEL = "x-babelgate-requested-model"
RESPONSE_HEADER_DROPPED_FIELDS = "x-babelgate-dropped-fields"
"""The request fields the serving backend's translation left out (they only steer or optimise), comma-separated."""

ENVOY_HEADER_PREFIX = "x-envoy-"
ENVOY_ATTEMPT_COUNT_HEADER = "x-envoy-attempt-count"
ENVOY_PER_TRY_TIMEOUT_HEADER = "x-envoy-upstream-rq-per-try-timeout-ms"

STAGE_METADATA_KEY = "x-babelgate-stage"
"""gRPC initial metadata that tells the server which stage a stream belongs to."""
STAGE_ROUTE = "route"
ROUTE_STAGE_FILTER = "babelgate.route_stage"
"""The route stage's HTTP filter name (per-route config refers to it)."""
STAGE_ATTEMPT = "attempt"
STAGE_METER = "meter"
STREAM_METER_FILTER = "babelgate.stream_meter"
"""The filter that reads a copy of a stream Envoy relays without waiting (`envoy_config/stream_meter.py`)."""
METERED_ROUTE_SUFFIX = ".metered"
"""A direct route's twin, chosen for a stream the stream meter settles: the same route, with that filter on."""

METADATA_NAMESPACE = "babelgate"
"""Dynamic and endpoint metadata namespace (filter_metadata key).

The route stage hands its decision to the attempt stage as dynamic metadata, not headers: Envoy shares one request
header map between all attempts, so anything the first attempt strips from the headers is gone for the retry.
"""
METADATA_BACKEND_KEY = "backend"
METADATA_ROUTE_KEY = "route"
METADATA_REQUESTED_KEY = "requested"
"""The model name the client sent (an alias, or a name a wildcard route matched)."""
METADATA_ENDPOINT_KEY = "endpoint"
METADATA_KEY_ID_KEY = "key_id"
METADATA_RESERVATION_KEY = "reservation"
METADATA_TEAM_KEY = "team"
METADATA_USER_KEY = "user"
METADATA_STARTED_KEY = "started"
"""Wall-clock second the request arrived (telemetry: a chain's report covers every attempt)."""
METADATA_TRACEPARENT_KEY = "traceparent"
"""The request span's W3C trace context: every attempt's span is its child."""
METADATA_BETAS_KEY = "anthropic_beta"
"""An Anthropic client's `anthropic-beta` header, for attempts that pass its body through (an attempt removes the
header, so a retry would not see it)."""
METADATA_PROMPT_KEY = "prompt"
"""The request's messages, only for routes whose content is logged."""
METADATA_TEMPLATE_KEY = "prompt_template"
"""The prompt template that made the request, as `<name>@<version>` (the request log's columns)."""
METADATA_CACHE_KEY = "cache"
"""On a route with a response cache: "miss" or "bypass", which the serving attempt tags its answer with."""
METADATA_CACHE_ENTRY_KEY = "cache_entry"
"""A miss's "<ttl> <max bytes> <key>": where the serving attempt stores the finished answer."""
METADATA_METER_BACKEND_KEY = "meter_backend"
METADATA_METER_MODEL_KEY = "meter_model"
METADATA_METER_ESTIMATE_KEY = "meter_estimate"
"""A stream the stream meter settles: its backend, the backend's model and the prompt estimate (beside the sealed
reservation)."""
METADATA_REPLIED_KEY = "replied"
"""Set by the route stage on its own immediate responses, so Envoy's local-reply rewriting leaves them alone."""

UPSTREAM_HOST_METADATA_ATTRIBUTE = "xds.upstream_host_metadata"

CHAIN_CLUSTER_PREFIX = "bg_chain_"
DIRECT_ROUTE_PREFIX = "bg_direct_"
BACKEND_CLUSTER_PREFIX = "bg_backend_"
MCP_CLUSTER_PREFIX = "bg_mcp_"
EXT_PROC_CLUSTER = "bg_ext_proc"

DEFAULT_LISTEN_PORT = 10000
DEFAULT_ADMIN_PORT = 9901
DEFAULT_EXT_PROC_PORT = 50051
DEFAULT_EXT_PROC_SERVER_NAME = "babelgate-ext-proc"
"""The name the ext_proc server's certificate carries and Envoy checks (mutual TLS, `babelgate certs`)."""
ADMIN_CLIENT_ADDRESS_HEADER = "x-babelgate-client-address"
"""Set by Envoy's admin route (overwriting whatever a client sent) to the downstream address Envoy resolved."""
ADMIN_MAX_MESSAGE_BYTES = 1 << 20
"""An admin request is a few hundred bytes; the admin server reads nothing bigger, and Envoy's admin route passes
nothing bigger."""
DEFAULT_ADMIN_API_PORT = 50050
"""Below the ext_proc ports, which count up from 50051 (one per process)."""
DEFAULT_MAX_REQUEST_BYTES = 4 * 1024 * 1024
DEFAULT_ANTHROPIC_MAX_TOKENS = 4096

JWT_METADATA_NAMESPACE = "envoy.filters.http.jwt_authn"
"""Where Envoy's `jwt_authn` filter puts verified token payloads (a fixed name, whatever the filter is called): the
route stage's ext_proc filter forwards this namespace, and only a filter of Envoy's can write it."""
JWT_PAYLOAD_KEY_PREFIX = "babelgate."
"""An issuer's verified payloads are under `babelgate.<issuer name>` in that namespace."""
JWT_FILTER = "babelgate.jwt_authn"
JWT_ID_PREFIX = "jwt:"
"""Identities from verified tokens are `jwt:<issuer name>:<subject>`; no virtual key id starts so."""
JWKS_CLUSTER_PREFIX = "bg_jwks_"
