//! Tests of the MCP endpoint without a tailnet.
