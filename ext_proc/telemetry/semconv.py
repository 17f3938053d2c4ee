"""OpenTelemetry GenAI semantic-convention names, and how Babelgate's schemas map onto them.

Kept as plain strings (the conventions are still incubating upstream; pinning the names here keeps dashboards stable
across opentelemetry-semantic-conventions releases).
"""

from __future__ import annotations

OPERATION_NAME = "gen_ai.operation.name"
PROVIDER_NAME = "gen_ai.provider.name"
REQUEST_MODEL = "gen_ai.request.model"
RESPONSE_MODEL = "gen_ai.response.model"
TOKEN_TYPE = "gen_ai.token.type"
USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
USAGE_CACHE_READ_INPUT_TOKENS = "gen_ai.usage.cache_read.input_tokens"
USAGE_REASONING_OUTPUT_TOKENS = "gen_ai.usage.reasoning.output_tokens"
REQUEST_STREAM = "gen_ai.request.stream"
RESPONSE_ID = "gen_ai.response.id"
ERROR_TYPE = "error.type"
SERVER_ADDRESS = "server.address"
HTTP_STATUS = "http.response.status_code"

MCP_METHOD_NAME = "mcp.method.name"
MCP_SESSION_ID = "mcp.session.id"
MCP_PROTOCOL_VERSION = "mcp.protocol.version"
TOOL_NAME = "gen_ai.tool.name"
PROMPT_NAME = "gen_ai.prompt.name"
RESOURCE_URI = "mcp.resource.uri"
JSONRPC_REQUEST_ID = "jsonrpc.request.id"
MCP_SERVER_OPERATION_DURATION = "mcp.server.operation.duration"
"""The MCP conventions' histogram: the gateway is the MCP server its clients talk to."""

CLIENT_TOKEN_USAGE = "gen_ai.client.token.usage"
CLIENT_OPERATION_DURATION = "gen_ai.client.operation.duration"
SERVER_TIME_TO_FIRST_TOKEN = "gen_ai.server.time_to_first_token"
SERVER_TIME_PER_OUTPUT_TOKEN = "gen_ai.server.time_per_output_token"

PROVIDER_BY_SCHEMA = {
    "openai": "openai",
    "anthropic": "anthropic",
    "azure-openai": "azure.ai.openai",
    "cohere": "cohere",
    "bedrock-converse": "aws.bedrock",
    "bedrock-anthropic": "aws.bedrock",
    "gemini": "gcp.gemini",
    "vertex-gemini": "gcp.vertex_ai",
    "vertex-anthropic": "gcp.vertex_ai",
}
PROVIDER_BY_PRESET = {"mistral": "mistral_ai", "groq": "groq", "deepseek": "deepseek", "xai": "x_ai"}

OPERATION_BY_ENDPOINT = {"chat": "chat", "messages": "chat", "responses": "chat", "embeddings": "embeddings"}

# Token histogram buckets from the GenAI conventions' advice (powers of 4).
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
FIRST_TOKEN_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
MCP_DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
PER_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)


def provider_name(schema: str, preset: str | None) -> str:
    if preset is not None:
        return PROVIDER_BY_PRESET.get(preset, preset)
    return PROVIDER_BY_SCHEMA.get(schema, schema)
