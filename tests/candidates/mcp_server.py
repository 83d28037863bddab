"""A real MCP server for the agent tests, built with the ``mcp`` SDK, that records every call.

Run as ``python mcp_server.py RECORD stdio`` or ``python mcp_server.py RECORD http PORT``.
Every ``tools/call`` it receives is appended to RECORD as one JSON line
``{"tool": ..., "arguments": {...}}`` before the tool runs, so a test reads from the
server's own record which tools were executed, whatever the client says.

Read-only lookups (``readOnlyHint: true``): ``get_customer``, ``get_orders``,
``slow_lookup`` (sleeps), ``broken_lookup`` (fails); ``plain_lookup`` has no annotation.
Writes (``readOnlyHint: false``): ``issue_refund``, ``update_ticket``, and
``archive_customer``, whose name looks harmless.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

CUSTOMERS: dict[str, dict[str, Any]] = {
    "c1": {"customer_id": "c1", "name": "Ada", "plan": "pro", "last_order": "o9"},
    "c2": {"customer_id": "c2", "name": "Bo", "plan": "free", "last_order": "o7"},
}
ORDERS: dict[str, dict[str, Any]] = {
    "o9": {"order_id": "o9", "amount": 40.0, "status": "damaged"},
    "o7": {"order_id": "o7", "amount": 12.5, "status": "delivered"},
}
READ = ToolAnnotations(read_only_hint=True)
WRITE = ToolAnnotations(read_only_hint=False, destructive_hint=True)


def build(record: Path) -> MCPServer:
    server = MCPServer("crm", log_level="WARNING")

    def received(tool: str, **arguments: Any) -> None:
        with record.open("a", encoding="utf-8") as out:
            out.write(json.dumps({"tool": tool, "arguments": arguments}) + "\n")

    @server.tool(annotations=READ)
    def get_customer(customer_id: str) -> dict[str, Any]:
        """A customer's record."""
        received("get_customer", customer_id=customer_id)
        if customer_id not in CUSTOMERS:
            raise ToolError(f"no customer {customer_id}")
        return CUSTOMERS[customer_id]

    @server.tool(annotations=READ)
    def get_orders(order_id: str) -> dict[str, Any]:
        """One order."""
        received("get_orders", order_id=order_id)
        return ORDERS[order_id]

    @server.tool(annotations=READ)
    def slow_lookup(seconds: float) -> str:
        """Answers after a while."""
        received("slow_lookup", seconds=seconds)
        time.sleep(seconds)
        return "late"

    @server.tool(annotations=READ)
    def broken_lookup(customer_id: str) -> str:
        """Always fails."""
        received("broken_lookup", customer_id=customer_id)
        raise ToolError("the CRM is down")

    @server.tool()
    def plain_lookup(customer_id: str) -> str:
        """Says nothing about whether it writes."""
        received("plain_lookup", customer_id=customer_id)
        return f"plain {customer_id}"

    @server.tool(annotations=WRITE)
    def issue_refund(order_id: str, amount: float) -> str:
        """Refund an order."""
        received("issue_refund", order_id=order_id, amount=amount)
        return "refunded"

    @server.tool(annotations=WRITE)
    def update_ticket(ticket_id: str, priority: str) -> str:
        """Change a ticket."""
        received("update_ticket", ticket_id=ticket_id, priority=priority)
        return "updated"

    @server.tool(annotations=WRITE)
    def archive_customer(customer_id: str) -> str:
        """Archive a customer (it writes, whatever its name suggests)."""
        received("archive_customer", customer_id=customer_id)
        return "archived"

    return server


def main(argv: list[str]) -> None:
    record, transport = Path(argv[0]), argv[1]
    server = build(record)
    if transport == "stdio":
        server.run("stdio")
    else:
        server.run("streamable-http", host="127.0.0.1", port=int(argv[2]))


if __name__ == "__main__":
    main(sys.argv[1:])
