"""The MCP gateway (WebSocket and Streamable HTTP) and FlockClient; built in a later release."""
