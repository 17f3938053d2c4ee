"""The protocol core of the gateway's MCP endpoint (see each module's docstring)."""
