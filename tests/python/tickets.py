"""The demo's ticket tracker: a small MCP server (official Python SDK,
FastMCP) on 127.0.0.1:<port>/mcp."""

import sys

from mcp.server.fastmcp import FastMCP

TICKETS = {
    "T-1": "VPN drops every hour for the Berlin office",
    "T-2": "Printer on floor 3 jams; vendor key sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc" + " in the notes",
    "T-3": "Quarterly access review due Friday",
}

server = FastMCP("tickets", host="127.0.0.1", port=int(sys.argv[1]))


@server.tool()
def search_tickets(query: str) -> list[str]:
    """Ticket ids whose title contains the query (case-insensitive)."""
    return [k for k, v in TICKETS.items() if query.lower() in v.lower()]


@server.tool()
def get_ticket(ticket_id: str) -> str:
    """The ticket's text."""
    return TICKETS.get(ticket_id, "no such ticket")


@server.tool()
def delete_ticket(ticket_id: str) -> str:
    """Delete a ticket (the demo's endpoint file denies this tool)."""
    return f"deleted {ticket_id}"


server.run(transport="streamable-http")
