"""Shadowing an agent end to end: a multi-step agent whose model is a chat-completions
endpoint (a real local server answering with tool calls) and whose tools come from a real
MCP server over stdio, replayed by ``shadow replay`` from a configuration file, then
reported by ``shadow report``.

Checked from the outside: the MCP server's own record shows only allowlisted lookups ran;
every proposed action is stored; malformed and unknown tool calls are violations with
their reasons; every event has its prediction; and the report's per-tool precision,
recall and argument agreement equal the figures computed here from the tickets and what
the person did.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest
import yaml

from tests.candidates.mcp_server import CUSTOMERS, ORDERS
from tests.http_server import Reply, Request, TestServer

ROOT = Path(__file__).resolve().parents[2]
MCP_SERVER = ROOT / "tests" / "candidates" / "mcp_server.py"
START = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
ALLOW = ["get_customer", "get_orders"]
AMOUNT_TOLERANCE = 0.5


def refund(order: str, amount: float) -> dict[str, Any]:
    return {"tool": "issue_refund", "arguments": {"order_id": order, "amount": amount}}


def update(ticket: str, priority: str) -> dict[str, Any]:
    return {"tool": "update_ticket", "arguments": {"ticket_id": ticket, "priority": priority}}


@dataclass(frozen=True)
class Ticket:
    ticket_id: str
    customer_id: str
    human: list[dict[str, Any]]
    """What the person did with the ticket."""
    flag: str = ""
    """``glitch``: the model sends a refund whose arguments are not JSON; ``rogue``: it
    calls a tool the server does not have."""


TICKETS = [
    Ticket("t01", "c1", [refund("o9", 40.0), update("t01", "high")]),
    Ticket("t02", "c1", [refund("o9", 40.3), update("t02", "high")]),
    Ticket("t03", "c1", [refund("o9", 25.0), update("t03", "high")]),
    Ticket("t04", "c1", [update("t04", "high")]),
    Ticket("t05", "c1", [refund("o9", 40.0), update("t05", "normal")]),
    Ticket("t06", "c2", [update("t06", "low")]),
    Ticket("t07", "c2", [update("t07", "low"), refund("o7", 12.5)]),
    Ticket("t08", "c2", [update("t08", "normal")]),
    Ticket("t09", "c3", [update("t09", "low")]),
    Ticket("t10", "c1", [refund("o9", 40.0), update("t10", "high")], flag="glitch"),
    Ticket("t11", "c2", [update("t11", "low")], flag="rogue"),
    Ticket("t12", "c2", [update("t12", "low")]),
]


def proposed(ticket: Ticket) -> list[dict[str, Any]]:
    """The valid actions the scripted model proposes, from the server's data: a damaged
    last order is refunded in full and the ticket raised; otherwise the ticket is lowered;
    an unknown customer gets an answer and no action."""
    customer = CUSTOMERS.get(ticket.customer_id)
    if customer is None or ticket.flag == "rogue":
        return []
    order = ORDERS[customer["last_order"]]
    if order["status"] != "damaged":
        return [update(ticket.ticket_id, "low")]
    actions = [update(ticket.ticket_id, "high")]
    if ticket.flag != "glitch":
        actions.insert(0, refund(order["order_id"], order["amount"]))
    return actions


# -- the model: a chat-completions server that plays the agent -----------------------


def tool_call(ticket: str, step: int, name: str, arguments: str) -> dict[str, Any]:
    return {"id": f"{ticket}-{step}-{name}", "type": "function",
            "function": {"name": name, "arguments": arguments}}


def next_turn(messages: list[dict[str, Any]], ticket: dict[str, str]) -> dict[str, Any]:
    """The assistant's message for the conversation so far."""
    results = [json.loads(m["content"]) for m in messages if m["role"] == "tool"]
    ident, step = ticket["ticket_id"], len(results) + 1
    if not results:
        return {"role": "assistant", "content": None, "tool_calls": [tool_call(
            ident, step, "get_customer", json.dumps({"customer_id": ticket["customer_id"]}))]}
    if "error" in results[-1]:
        return {"role": "assistant", "content": "I cannot find that customer."}
    if len(results) == 1:
        return {"role": "assistant", "content": None, "tool_calls": [tool_call(
            ident, step, "get_orders", json.dumps({"order_id": results[0]["last_order"]}))]}
    if ticket["flag"] == "rogue":
        return {"role": "assistant", "content": None, "tool_calls": [
            tool_call(ident, step, "delete_customer", json.dumps({"customer_id": "c2"}))]}
    order = results[-1]
    if order["status"] != "damaged":
        return {"role": "assistant", "content": "Nothing to refund.", "tool_calls": [
            tool_call(ident, step, "update_ticket",
                      json.dumps({"ticket_id": ident, "priority": "low"}))]}
    arguments = (json.dumps({"order_id": order["order_id"], "amount": order["amount"]})
                 if ticket["flag"] != "glitch" else '{"order_id": "o9", "amount": ')
    return {"role": "assistant", "content": "Refunding the damaged order.", "tool_calls": [
        tool_call(ident, step, "issue_refund", arguments),
        tool_call(ident, step, "update_ticket",
                  json.dumps({"ticket_id": ident, "priority": "high"}))]}


def model(request: Request) -> Reply:
    body = request.json()
    if request.headers.get("authorization") != "Bearer agent-key":
        return Reply(status=401, body={"error": {"message": "bad key"}})
    messages = body["messages"]
    ticket = json.loads(next(m["content"] for m in messages if m["role"] == "user"))
    return Reply(body={
        "id": "chatcmpl-1", "object": "chat.completion", "model": "agent-model-2026",
        "choices": [{"index": 0, "message": next_turn(messages, ticket),
                     "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 100 * len(messages), "completion_tokens": 20}})


# -- the run -------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    db: Path
    record: Path
    report: dict[str, Any]
    requests: list[Request]


def write_lines(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def shadow(*arguments: str, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")}
    env["AGENT_KEY"] = "agent-key"
    done = subprocess.run([sys.executable, "-m", "shadow", *arguments], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    work = tmp_path_factory.mktemp("agent")
    record = work / "mcp-calls.jsonl"
    events = write_lines(work / "tickets.jsonl", [
        {"ticket": {"id": t.ticket_id, "customer_id": t.customer_id, "flag": t.flag,
                    "created_at": (START + timedelta(minutes=i)).isoformat()}}
        for i, t in enumerate(TICKETS)])
    outcomes = write_lines(work / "resolutions.jsonl", [
        {"ticket_id": t.ticket_id, "agent": "sam",
         "resolved_at": (START + timedelta(minutes=i, hours=2)).isoformat(), "actions": t.human}
        for i, t in enumerate(TICKETS)])
    with TestServer(model) as server:
        config = {
            "version": 1,
            "candidate": {
                "kind": "agent", "name": "refund-agent",
                "model": {"base_url": f"{server.url}/v1", "model": "agent-model",
                          "api_key_env": "AGENT_KEY",
                          "prices": {"prompt_per_1k": 0.5, "completion_per_1k": 1.5}},
                "tools": {"command": [sys.executable, str(MCP_SERVER), str(record), "stdio"]},
                "allow": ALLOW,
                "system": "You resolve refund tickets. Look the customer and order up first.",
                "user": '{"ticket_id": "{{ payload.id }}", '
                        '"customer_id": "{{ payload.customer_id }}", "flag": "{{ payload.flag }}"}',
                "max_steps": 5,
            },
            "comparator": {"kind": "actions", "tools": {"issue_refund": {"arguments": {
                "amount": {"kind": "numeric", "abs_tol": AMOUNT_TOLERANCE}}}}},
            "mapping": {
                "events": {"event_id": "ticket.id", "key": "ticket.id",
                           "occurred_at": "ticket.created_at", "payload": "ticket"},
                "outcomes": {"key": "ticket_id", "decided_at": "resolved_at", "actor": "agent",
                             "actions": "actions"},
            },
            "store": {"path": str(work / "agent.duckdb")},
        }
        path = work / "agent.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        shadow("replay", str(events), "--outcomes", str(outcomes), "--config", str(path),
               cwd=work)
        requests = list(server.requests)
    report = json.loads(shadow("report", "--config", str(path), "--format", "json", cwd=work))
    yield Run(work / "agent.duckdb", record, report, requests)


def query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql).fetchall()


def received(record: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in record.read_text(encoding="utf-8").splitlines()]


# -- what ran -------------------------------------------------------------------------


def test_only_allowlisted_lookups_ran_on_the_mcp_server(run: Run) -> None:
    expected = []
    for ticket in TICKETS:
        expected.append({"tool": "get_customer", "arguments": {"customer_id": ticket.customer_id}})
        if ticket.customer_id in CUSTOMERS:
            expected.append({"tool": "get_orders", "arguments": {
                "order_id": CUSTOMERS[ticket.customer_id]["last_order"]}})

    calls = received(run.record)

    assert {call["tool"] for call in calls} <= set(ALLOW)
    assert sorted(calls, key=json.dumps) == sorted(expected, key=json.dumps)


def test_every_executed_lookup_is_stored_with_its_result(run: Run) -> None:
    stored = query(run.db, "SELECT tool, arguments, result, error FROM tool_calls")

    assert len(stored) == len(received(run.record))
    for tool, arguments, result, error in stored:
        if tool == "get_customer":
            who = orjson.loads(arguments)["customer_id"]
            assert (orjson.loads(result) if result else None, error is None) == (
                (CUSTOMERS[who], True) if who in CUSTOMERS else (None, False))
        else:
            assert orjson.loads(result) == ORDERS[orjson.loads(arguments)["order_id"]]


def test_the_model_was_offered_every_tool_and_given_each_lookup_result(run: Run) -> None:
    first = run.requests[0].json()
    offered = sorted(tool["function"]["name"] for tool in first["tools"])

    assert {"get_customer", "get_orders", "issue_refund", "update_ticket"} <= set(offered)
    assert all(tool["type"] == "function" and "parameters" in tool["function"]
               for tool in first["tools"])
    assert (first["model"], first["temperature"]) == ("agent-model", 0.0)
    # A known customer: customer, order, decision; an unknown one: customer, answer.
    steps = sum(3 if t.customer_id in CUSTOMERS else 2 for t in TICKETS)
    assert len(run.requests) == steps


# -- what was proposed ------------------------------------------------------------------


def test_every_event_has_its_prediction_and_every_proposed_action_is_stored(run: Run) -> None:
    predictions = query(run.db, "SELECT event_id, error_type FROM predictions ORDER BY 1")
    stored = query(run.db, "SELECT event_id, tool, arguments FROM actions "
                           "WHERE side = 'prediction' AND valid ORDER BY event_id, ordinal")

    assert predictions == [(t.ticket_id, None) for t in sorted(TICKETS, key=lambda t: t.ticket_id)]
    assert [(e, t, orjson.loads(a)) for e, t, a in stored] == [
        (ticket.ticket_id, action["tool"], action["arguments"])
        for ticket in sorted(TICKETS, key=lambda t: t.ticket_id) for action in proposed(ticket)]


def test_malformed_and_unknown_tool_calls_are_violations_with_their_reasons(run: Run) -> None:
    flagged = dict(query(run.db, "SELECT event_id, violations FROM predictions "
                                 "WHERE len(violations) > 0"))

    assert sorted(flagged) == ["t10", "t11"]
    (glitch,) = flagged["t10"]
    assert glitch.startswith("tool_call:invalid_arguments issue_refund (t10-3-issue_refund): "
                             "the arguments are not JSON")
    assert flagged["t11"] == ["tool_call:unknown_tool delete_customer (t11-3-delete_customer) "
                              "is not among the tools offered (step 3)"]


def test_tokens_and_cost_are_summed_over_the_steps(run: Run) -> None:
    rows = dict((e, (p, c, cost, m)) for e, p, c, cost, m in query(
        run.db, "SELECT event_id, prompt_tokens, completion_tokens, cost, model FROM predictions"))

    for ticket in TICKETS:
        known = ticket.customer_id in CUSTOMERS
        # The prompt has two messages; each lookup adds the assistant's turn and its result.
        sizes = [2, 4, 6] if known else [2, 4]
        prompt, completion = 100 * sum(sizes), 20 * len(sizes)
        assert rows[ticket.ticket_id] == (
            prompt, completion, pytest.approx((prompt * 0.5 + completion * 1.5) / 1000),
            "agent-model-2026"), ticket.ticket_id


def test_each_prediction_keeps_the_messages_of_its_last_step(run: Run) -> None:
    rows = query(run.db, "SELECT p.event_id, r.request FROM predictions p "
                         "JOIN requests r USING (request_hash) WHERE p.event_id = 't01'")
    (_, request), = rows
    request = orjson.loads(request)
    last = [r.json() for r in run.requests if '"t01"' in r.json()["messages"][1]["content"]][-1]

    assert request["messages"] == last["messages"]
    assert request["parameters"] == {"model": "agent-model", "temperature": 0.0}
    assert request["allow"] == ALLOW


# -- the report -------------------------------------------------------------------------


def argument_verdicts(ai: dict[str, Any], human: dict[str, Any]) -> dict[str, bool]:
    verdicts = {}
    for name in sorted(set(ai) | set(human)):
        if name == "amount" and name in ai and name in human:
            verdicts[name] = abs(ai[name] - human[name]) <= AMOUNT_TOLERANCE
        else:
            verdicts[name] = ai.get(name) == human.get(name)
    return verdicts


def expected_tools() -> dict[str, dict[str, Any]]:
    """Per tool: proposed, taken, matched (one action per tool per side, so a pair is an
    action of the tool on both sides), and the argument verdicts of the pairs."""
    figures: dict[str, dict[str, Any]] = {}
    for ticket in TICKETS:
        mine = {a["tool"]: a["arguments"] for a in proposed(ticket)}
        theirs = {a["tool"]: a["arguments"] for a in ticket.human}
        for tool in set(mine) | set(theirs):
            found = figures.setdefault(tool, {"proposed": 0, "taken": 0, "matched": 0,
                                              "compared": 0, "agreed": 0})
            found["proposed"] += tool in mine
            found["taken"] += tool in theirs
            if tool in mine and tool in theirs:
                found["matched"] += 1
                verdicts = argument_verdicts(mine[tool], theirs[tool])
                found["compared"] += len(verdicts)
                found["agreed"] += sum(verdicts.values())
    return figures


def test_the_report_has_each_tools_precision_recall_and_argument_agreement(run: Run) -> None:
    (candidate,) = run.report["owner"]["candidates"]
    reported = {tool["tool"]: tool for tool in candidate["tools"]}
    expected = expected_tools()

    assert sorted(reported) == sorted(expected) == ["issue_refund", "update_ticket"]
    for tool, figures in expected.items():
        found = reported[tool]
        assert (found["proposed"], found["taken"], found["matched"]) == (
            figures["proposed"], figures["taken"], figures["matched"]), tool
        assert found["precision"] == pytest.approx(figures["matched"] / figures["proposed"])
        assert found["recall"] == pytest.approx(figures["matched"] / figures["taken"])
        assert (found["arguments_compared"], found["arguments_agreed"]) == (
            figures["compared"], figures["agreed"]), tool
        assert found["argument_agreement"] == pytest.approx(
            figures["agreed"] / figures["compared"])


def test_agreement_is_the_share_of_tickets_whose_actions_all_match(run: Run) -> None:
    def agrees(ticket: Ticket) -> bool:
        mine = {a["tool"]: a["arguments"] for a in proposed(ticket)}
        theirs = {a["tool"]: a["arguments"] for a in ticket.human}
        return mine.keys() == theirs.keys() and all(
            all(argument_verdicts(mine[tool], theirs[tool]).values()) for tool in mine)

    compared = dict(query(run.db, "SELECT event_id, agree FROM comparisons"))

    assert compared == {t.ticket_id: agrees(t) for t in TICKETS}
    assert 0 < sum(compared.values()) < len(TICKETS)
