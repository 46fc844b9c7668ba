"""An agent using the official Python MCP SDK over the tailnet (through a
userspace tailscaled's HTTP proxy). Runs the calls given as JSON on stdin
and prints one JSON report of what it saw; the Rust test asserts on it.

usage: mcp_agent.py URL PROXY < SCENARIO_JSON
scenario: {"calls": [[tool, args], ...], "raw": [[content_type, body_text], ...]}
"""

import asyncio
import json
import sys

import httpx
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client


def text_of(result):
    return "\n".join(getattr(c, "text", "") for c in result.content)


async def main(url, proxy, scenario):
    report = {"calls": [], "raw": []}
    timeout = httpx.Timeout(30, read=60)
    async with httpx.AsyncClient(proxy=proxy, timeout=timeout) as http:
        async with streamable_http_client(url, http_client=http) as (read, write, _):
            async with ClientSession(read, write) as session:
                init = await session.initialize()
                report["server"] = init.serverInfo.name
                tools = await session.list_tools()
                report["tools"] = sorted(t.name for t in tools.tools)
                for name, args in scenario.get("calls", []):
                    try:
                        res = await session.call_tool(name, args)
                        report["calls"].append(
                            {"tool": name, "is_error": bool(res.isError), "text": text_of(res)}
                        )
                    except Exception as e:  # a JSON-RPC error surfaces as an exception
                        report["calls"].append({"tool": name, "exception": str(e)})
        # Raw requests the SDK would never send: malformed JSON, huge bodies.
        for content_type, body in scenario.get("raw", []):
            r = await http.post(
                url,
                content=body.encode(),
                headers={
                    "content-type": content_type,
                    "accept": "application/json, text/event-stream",
                },
            )
            report["raw"].append({"status": r.status_code, "body": r.text[:500]})
    print(json.dumps(report))


asyncio.run(main(sys.argv[1], sys.argv[2], json.load(sys.stdin)))
