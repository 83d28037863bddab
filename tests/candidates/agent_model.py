"""A scripted model step for ``kind: agent`` configurations in tests: lookup, decide, refund."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from shadow.candidates.agent import ToolCall, Turn
from shadow.candidates.mcp_tools import Tool


def refund(messages: Sequence[Mapping[str, Any]], tools: Sequence[Tool]) -> Turn:
    """Look the customer up, then their last order, then refund it in full; a failed
    lookup ends with an answer and no action."""
    results = [json.loads(m["content"]) for m in messages if m["role"] == "tool"]
    if not results:
        customer = json.loads(messages[-1]["content"])["customer_id"]
        return Turn(None, (ToolCall("get_customer", {"customer_id": customer}),))
    if "error" in results[-1]:
        return Turn("I cannot find that customer.")
    if len(results) == 1:
        return Turn(None, (ToolCall("get_orders", {"order_id": results[0]["last_order"]}),))
    order = results[-1]
    return Turn("refund", (ToolCall("issue_refund", {"order_id": order["order_id"],
                                                      "amount": order["amount"]}),))
