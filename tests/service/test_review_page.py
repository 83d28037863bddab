"""The review page (``GET /review``) in headless Chromium against a real ``shadow run``.

A support desk's rollout (the README's tier policy) is promoted to 100 % live before the
daemon starts; the daemon then reads the desk's tickets, and every confident reply draft
becomes an open proposal of tier review. Each test drives the page as a person would,
through the Chrome DevTools Protocol (the client of ``tests/reports/test_html_report.py``),
and reads the outcome back from the daemon's API and its action sink. Each test decides
only the proposals reserved for it, so they share one daemon in any order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from shadow.core.models import Event
from shadow.store.database import Store
from tests.daemon_process import get, ready_api, start_daemon, stop
from tests.reports.test_html_report import DevTools, chromium_binary, launch, page_websocket
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
SAM, LEE = "sam-operates-the-desk", "lee-only-looks"
"""The values of an ``operate`` token named sam and a ``read`` token named lee."""
HTML_SUBJECT = '<script>document.title="pwned"</script><b>Cancel</b> my order & refund'
HTML_BODY = '<img src="https://example.com/x.png" onerror="document.title=1">Sorry!'

# Each ticket: (subject, what the agent proposes, its confidence). Replies of 0.7 and
# more are tier review (the README's policy); the rest never reach the page.
TICKETS: dict[str, tuple[str, str, float]] = {
    "e0": ("Where is my parcel?", "reply", 0.92),
    "e1": ("Wrong size, can I swap?", "reply", 0.81),
    "e2": ("Please stop the newsletter", "reply", 0.75),
    "e3": ("Invoice copy, please", "reply", 0.9),
    "e4": ("Tag this one", "tag", 0.99),
    "e5": ("I want my money back", "refund", 0.99),
    "e6": ("Something odd", "reply", 0.5),
    "e7": (HTML_SUBJECT, "reply", 0.88),
    "e8": ("Keyboard only", "reply", 0.7),
}
REVIEWED = [e for e, (_, kind, confidence) in TICKETS.items()
            if kind == "reply" and confidence >= 0.7]
APPROVE, EDIT, REJECT, TAKEN, KEYS = "e0", "e1", "e2", "e3", "e8"
UNDECIDED = "e7"  # only looked at, never decided: escaping, invalid JSON, a read token

CONFIG = """
candidate: {callable: "tests.service.test_review_page:agent", name: desk, version: "3"}
store: {path: desk.duckdb, batch_size: 1}
sources:
  events: [{kind: file, path: tickets.jsonl}]
rollout:
  name: desk
  steps: [{percent: 0}, {percent: 100}]
  max_decision_age: null
  sink: {kind: file, path: actions.jsonl}
  review_sink: {kind: file, path: reviews.jsonl}
  tiers:
    rules:
      - {tool: add_tag, tier: auto}
      - {tool: send_reply, confidence: {at_least: 0.7}, tier: review}
      - {tool: issue_refund, tier: human}
    default: human
    evidence: [subject, customer.plan]
    redact: [customer.email]
daemon:
  api:
    port: 0
    tokens:
      - {name: sam, scope: operate, env: DESK_SAM_TOKEN}
      - {name: lee, scope: read, env: DESK_LEE_TOKEN}
  jobs: {evaluate_every: 1s, compare_every: 1s}
  shutdown_deadline: 10s
"""


def output_of(event_id: str) -> dict[str, Any]:
    """What the desk's agent proposes for a ticket."""
    subject, kind, confidence = TICKETS[event_id]
    action = {
        "reply": {"tool": "send_reply", "arguments": {
            "body": HTML_BODY if event_id == UNDECIDED else f"About: {subject}"}},
        "tag": {"tool": "add_tag", "arguments": {"tag": "misc"}},
        "refund": {"tool": "issue_refund", "arguments": {"amount": 25}},
    }[kind]
    return {"actions": [{**action, "confidence": confidence}]}


def agent(event: Event) -> Any:
    return output_of(event.event_id)


def key_of(event_id: str) -> str:
    return "T-" + event_id[1:]


@dataclass(frozen=True)
class Desk:
    directory: Path
    api: str
    review_ids: dict[str, str]
    """Each ticket's review id, as first listed (decided reviews leave the list)."""

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, *,
             token: str = SAM) -> tuple[int, Any]:
        status, text = get(self.api + path, token=token, method=method, body=body)
        return status, json.loads(text) if text else None

    def open_reviews(self) -> list[dict[str, Any]]:
        status, found = self.call("GET", "/reviews?status=open&limit=1000", token=LEE)
        assert status == 200, found
        reviews: list[dict[str, Any]] = found["reviews"]
        return reviews

    def acted(self) -> list[dict[str, Any]]:
        """What the action sink received (the file sink's lines)."""
        path = self.directory / "actions.jsonl"
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def desk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Desk]:
    directory = tmp_path_factory.mktemp("desk")
    config = directory / "desk.yaml"
    config.write_text(CONFIG, encoding="utf-8")
    (directory / "tickets.jsonl").write_text("".join(
        json.dumps({"event_id": e, "key": key_of(e), "occurred_at": "2026-03-02T09:00:00Z",
                    "payload": {"subject": subject, "kind": kind,
                                "customer": {"plan": "pro", "email": f"{e}@example.com"}}})
        + "\n" for e, (subject, kind, _) in TICKETS.items()), encoding="utf-8")
    with Store(directory / "desk.duckdb"):
        pass  # an empty store, for the rollout to be promoted before any ticket arrives
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")}
    env["PYTHONPATH"] = str(ROOT)  # the agent lives in this module
    promoted = subprocess.run(
        [sys.executable, "-m", "shadow", "rollout", "promote", "--force", "--actor", "dana",
         "--reason", "the desk goes live", "--config", str(config)],
        cwd=directory, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert promoted.returncode == 0, promoted.stderr
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DESK_SAM_TOKEN", SAM)
        patch.setenv("DESK_LEE_TOKEN", LEE)
        patch.setenv("PYTHONPATH", str(ROOT))  # the agent lives in this module
        daemon = start_daemon(config, "desk.log", token=None)
    try:
        looking = Desk(directory, ready_api(directory / "desk.duckdb", process=daemon), {})
        listed = wait_until(looking.open_reviews, accept=lambda found: len(found) == len(REVIEWED),
                            timeout_s=60, what=f"{len(REVIEWED)} open proposals")
        yield Desk(directory, looking.api, {r["event_id"]: r["review_id"] for r in listed})
    finally:
        code, log = stop(daemon)
    assert code == 0, log
    assert "Traceback" not in log


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[str]:
    """A headless Chromium of its own for each test (an empty sessionStorage); its
    DevTools websocket."""
    process, endpoint, drain = launch(chromium_binary(), str(tmp_path / "profile"))
    try:
        yield endpoint
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the browser and its renderer children
        process.wait()
        drain.join(5)
        assert process.stderr is not None
        process.stderr.close()


class Page:
    """The review page in one browser tab, driven through DevTools."""

    def __init__(self, tools: DevTools, api: str) -> None:
        self.tools, self.api = tools, api

    async def run(self, expression: str) -> Any:
        return await self.tools.evaluate(expression)

    async def until(self, condition: str, what: str, timeout_s: float = 15) -> Any:
        """Wait in the page until the JavaScript ``condition`` is truthy; its value."""
        expression = f"""new Promise((resolve, reject) => {{
          const started = Date.now();
          const check = () => {{
            let value;
            try {{ value = ({condition}); }} catch (failure) {{ value = undefined; }}
            if (value) resolve(value);
            else if (Date.now() - started > {timeout_s * 1000}) reject(new Error("timeout"));
            else setTimeout(check, 50);
          }};
          check();
        }})"""
        reply = await self.tools.call("Runtime.evaluate", expression=expression,
                                      awaitPromise=True, returnByValue=True)
        assert "exceptionDetails" not in reply, f"waited for {what}: {reply}"
        return reply["result"]["value"]

    async def type_into(self, selector: str, text: str) -> None:
        """Focus the field and replace its text, as typing does."""
        await self.run(f"(() => {{ const f = document.querySelector({json.dumps(selector)});"
                       f" f.focus(); f.select(); return true; }})()")
        await self.tools.call("Input.insertText", text=text)

    async def press(self, key: str) -> None:
        codes = {"Enter": 13, "Tab": 9}
        for kind in ("keyDown", "keyUp"):
            await self.tools.call("Input.dispatchKeyEvent", type=kind, key=key, code=key,
                                  windowsVirtualKeyCode=codes[key],
                                  **({"text": "\r"} if key == "Enter" and kind == "keyDown"
                                     else {}))

    async def sign_in(self, token: str) -> int:
        """Enter the token in the page as a person does; how many rows it then lists."""
        await self.type_into("#token", token)
        await self.press("Enter")
        shown: int = await self.until(
            "/^(\\d+ open proposals?|No open proposals)/.test("
            "document.getElementById('status').textContent) "
            "|| document.getElementById('error').textContent ? "
            "document.querySelectorAll('li.review').length + 1 : 0", "the list or an error")
        return shown - 1

    def row(self, event_id: str) -> str:
        """A JavaScript expression for the row of the ticket's proposal."""
        return f"[...document.querySelectorAll('li.review')].find(li => li.querySelector('h2')" \
               f".textContent.endsWith('(event {event_id})'))"

    async def click(self, event_id: str, button: str) -> None:
        found = await self.run(f"(() => {{ const b = [...{self.row(event_id)}"
                               f".querySelectorAll('button')].find(b => b.textContent === "
                               f"{json.dumps(button)}); if (b) b.click(); return !!b; }})()")
        assert found, f"no {button} button on the row of {event_id}"

    async def gone(self, event_id: str) -> None:
        await self.until(f"!{self.row(event_id)}", f"the row of {event_id} to leave")

    def requests(self) -> list[dict[str, Any]]:
        return [e["params"]["request"] for e in self.tools.events
                if e.get("method") == "Network.requestWillBeSent"]

    def problems(self) -> list[dict[str, Any]]:
        """Script errors and Content-Security-Policy violations the page caused."""
        found = []
        for event in self.tools.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(event)
            elif method == "Log.entryAdded" and params["entry"].get("source") != "network" \
                    and params["entry"].get("level") == "error":
                found.append(event)
        return found


@contextlib.asynccontextmanager
async def review_page(browser: str, desk: Desk) -> AsyncIterator[Page]:
    """The page at ``/review`` loaded; on the way out, every request it made went to the
    daemon, and nothing broke a rule of its Content-Security-Policy."""
    async with aiohttp.ClientSession() as session:
        ws_url = await page_websocket(session, browser)
        async with session.ws_connect(ws_url, max_msg_size=64 * 1024 * 1024) as ws:
            tools = DevTools(ws)
            for domain in ("Runtime", "Log", "Network", "Page"):
                await tools.call(f"{domain}.enable")
            await tools.call("Page.navigate", url=desk.api + "/review")
            await asyncio.wait_for(tools.until("Page.loadEventFired"), 15)
            page = Page(tools, desk.api)
            yield page
            await page.run("1")  # the events of the last actions are in
    daemon = urlsplit(desk.api)
    for request in page.requests():
        sent_to = urlsplit(request["url"])
        assert (sent_to.scheme, sent_to.hostname, sent_to.port) == (
            "http", "127.0.0.1", daemon.port), request["url"]
    assert page.problems() == []


def decide(browser: str, desk: Desk, scenario: Any) -> Any:
    async def go() -> Any:
        async with review_page(browser, desk) as page:
            return await scenario(page)

    return asyncio.run(asyncio.wait_for(go(), 60))


def verdict_of(desk: Desk, event_id: str, verdict: str, output: Any = None, *,
               reviewer: str = "sam") -> dict[str, Any]:
    """The review's stored verdict, read back through the API without changing it: another
    verdict is refused naming the stored one, and the same one given again is answered
    with the stored verdict."""
    path = f"/reviews/{desk.review_ids[event_id]}/verdict"
    other = "reject" if verdict != "reject" else "approve"
    status, refused = desk.call("POST", path, {"verdict": other})
    assert status == 409, refused
    assert refused["error"].endswith(f"already has a verdict ({verdict})")
    body: dict[str, Any] = {"verdict": verdict, "reviewer": reviewer}
    if output is not None:
        body["output"] = output
    status, stored = desk.call("POST", path, body)
    assert status == 200, stored
    return {k: stored[k] for k in ("verdict", "status", "output", "reviewer", "source")}


def published(desk: Desk, event_id: str) -> list[tuple[str, Any]]:
    """The verdict and output of each message of the review on the action sink."""
    return [(a["verdict"], a["output"]) for a in desk.acted()
            if a.get("review_id") == desk.review_ids[event_id]]


# -- the page and its headers ---------------------------------------------------------


def test_the_page_needs_no_token_but_every_data_call_does(desk: Desk) -> None:
    status, page = get(desk.api + "/review")
    assert status == 200 and "<h1>Open proposals</h1>" in page
    assert get(desk.api + "/reviews?status=open")[0] == 401
    assert get(desk.api + "/reviews?status=open", token="guess")[0] == 403
    for word in ("Where is my parcel", "rev_", "T-0"):  # the page holds no data
        assert word not in page


def test_the_page_is_served_with_a_policy_that_allows_only_itself_and_the_daemon(
        desk: Desk) -> None:
    response = urlopen_headers(desk.api + "/review")
    policy = dict(part.strip().split(" ", 1) for part in
                  response["Content-Security-Policy"].split(";"))
    assert policy["default-src"] == "'none'"
    assert policy["connect-src"] == "'self'"
    assert policy["script-src"].startswith("'sha256-") and " " not in policy["script-src"]
    assert policy["style-src"].startswith("'sha256-") and " " not in policy["style-src"]
    assert policy["frame-ancestors"] == "'none'"
    assert policy["require-trusted-types-for"] == "'script'"
    assert response["Content-Type"].startswith("text/html")
    assert response["Cache-Control"] == "no-store"
    assert response["Referrer-Policy"] == "no-referrer"


def urlopen_headers(url: str) -> dict[str, str]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return dict(response.headers.items())


# -- looking ------------------------------------------------------------------------------


ROWS = """[...document.querySelectorAll('li.review')].map(li => ({
  id: li.dataset.reviewId, title: li.querySelector('h2').textContent,
  facts: Object.fromEntries([...li.querySelectorAll('dl.facts dt')].map(
    dt => [dt.textContent, dt.nextElementSibling.textContent])),
  evidence: Object.fromEntries([...li.querySelectorAll('dl.evidence dt')].map(
    dt => [dt.textContent, dt.nextElementSibling.textContent])),
  tools: [...li.querySelectorAll('li.action .tool')].map(t => t.textContent),
  actions: [...li.querySelectorAll('li.action')].map(a => a.textContent),
  arguments: [...li.querySelectorAll('li.action pre')].map(p => JSON.parse(p.textContent)),
  output: JSON.parse(li.querySelector('article > pre').textContent),
  buttons: [...li.querySelectorAll('.buttons button')].filter(b => !b.closest('form'))
           .map(b => b.textContent)}))"""


def test_the_list_shows_each_open_proposal_with_its_evidence_newest_first(
        browser: str, desk: Desk) -> None:
    async def look(page: Page) -> Any:
        await page.sign_in(LEE)
        return await page.run(ROWS)

    rows = decide(browser, desk, look)
    open_now = desk.open_reviews()
    newest_first = sorted(open_now, key=lambda r: (datetime.fromisoformat(r["proposed_at"]),
                                                   r["review_id"]), reverse=True)
    assert [row["id"] for row in rows] == [r["review_id"] for r in newest_first]
    assert len(rows) >= 1
    for row, review in zip(rows, newest_first, strict=True):
        event_id = review["event_id"]
        subject, _, confidence = TICKETS[event_id]
        assert row["title"] == f"{key_of(event_id)} (event {event_id})"
        assert row["facts"] == {
            "Review": review["review_id"], "Event": event_id, "Key": key_of(event_id),
            "Candidate": "desk version 3", "Step": "1 (100 % live)", "Rule": "review by rules[1]",
            "Proposed": review["proposed_at"], "Confidence": "not given"}
        # the customer's e-mail is neither evidence nor shown
        assert row["evidence"] == {"subject": subject, "customer.plan": "pro"}
        assert row["tools"] == ["send_reply"]
        assert f"confidence {confidence:.2f}" in row["actions"][0]
        assert row["arguments"] == [output_of(event_id)["actions"][0]["arguments"]]
        assert row["output"] == output_of(event_id)
        assert row["buttons"] == ["Approve", "Edit", "Reject"]


def test_values_holding_html_are_shown_as_text(browser: str, desk: Desk) -> None:
    async def look(page: Page) -> Any:
        await page.sign_in(SAM)
        row = page.row(UNDECIDED)
        return await page.run(f"""({{
          title: document.title,
          scripts: document.scripts.length,
          images: document.images.length,
          bold: {row}.querySelectorAll('b').length,
          subject: {row}.querySelector('dl.evidence dd').textContent,
          arguments: {row}.querySelector('li.action pre').textContent}})""")

    found = decide(browser, desk, look)
    assert found["title"] == "Open proposals · shadow"
    assert (found["scripts"], found["images"], found["bold"]) == (1, 0, 0)
    assert found["subject"] == HTML_SUBJECT
    assert json.loads(found["arguments"]) == {"body": HTML_BODY}


def test_a_wrong_token_shows_an_error_and_no_data(browser: str, desk: Desk) -> None:
    async def look(page: Page) -> Any:
        shown = await page.sign_in("not-a-token-of-this-desk")
        return shown, await page.run(
            "({error: document.getElementById('error').textContent,"
            " text: document.body.textContent,"
            " kept: sessionStorage.length})")

    shown, found = decide(browser, desk, look)
    assert shown == 0
    assert found["error"].startswith("The daemon does not accept this token.")
    assert "not one the daemon accepts" in found["error"]
    assert "rev_" not in found["text"] and "Where is my parcel" not in found["text"]
    assert found["kept"] == 0  # a token the daemon refuses is not kept


def test_the_token_is_kept_in_session_storage_only_and_never_in_the_url(
        browser: str, desk: Desk) -> None:
    async def look(page: Page) -> Any:
        await page.sign_in(LEE)
        return await page.run("({session: Object.values(sessionStorage), local: localStorage"
                              ".length, url: location.href, field: document.getElementById"
                              "('token').value})")

    found = decide(browser, desk, look)
    assert found == {"session": [LEE], "local": 0, "url": desk.api + "/review", "field": ""}


# -- deciding -----------------------------------------------------------------------------


def test_approve_stores_an_approve_and_the_row_leaves(browser: str, desk: Desk) -> None:
    async def approve(page: Page) -> Any:
        await page.sign_in(SAM)
        await page.click(APPROVE, "Approve")
        await page.gone(APPROVE)
        return await page.run("document.getElementById('status').textContent")

    said = decide(browser, desk, approve)
    assert said.startswith(f"Approved {key_of(APPROVE)} as sam.")
    assert APPROVE not in {r["event_id"] for r in desk.open_reviews()}
    assert verdict_of(desk, APPROVE, "approve") == {
        "verdict": "approve", "status": "approved", "output": output_of(APPROVE),
        "reviewer": "sam", "source": "api:sam"}
    assert wait_until(lambda: published(desk, APPROVE), timeout_s=30,
                      what="the approved reply on the action sink") == [
        ("approve", output_of(APPROVE))]


def test_edit_sends_the_changed_json_and_stores_an_edit(browser: str, desk: Desk) -> None:
    changed = {"actions": [{"tool": "send_reply", "arguments": {
        "body": "Of course: size M is on its way, send the L back when it suits you."}}]}

    async def edit(page: Page) -> Any:
        await page.sign_in(SAM)
        await page.type_into("#reviewer", "Robin")
        await page.click(EDIT, "Edit")
        area = await page.run(f"{page.row(EDIT)}.querySelector('textarea').id")
        shown = await page.run(f"JSON.parse(document.getElementById('{area}').value)")
        focused = await page.run("document.activeElement.id")
        await page.type_into(f"#{area}", json.dumps(changed, indent=2))
        await page.click(EDIT, "Send edit")
        await page.gone(EDIT)
        return area, shown, focused

    area, shown, focused = decide(browser, desk, edit)
    assert shown == output_of(EDIT)  # the proposal's output, to start from
    assert focused == area
    assert EDIT not in {r["event_id"] for r in desk.open_reviews()}
    assert verdict_of(desk, EDIT, "edit", changed, reviewer="Robin") == {
        "verdict": "edit", "status": "edited", "output": changed, "reviewer": "Robin",
        "source": "api:sam"}
    assert wait_until(lambda: published(desk, EDIT), timeout_s=30,
                      what="the edited reply on the action sink") == [("edit", changed)]


def test_reject_stores_a_reject_and_publishes_nothing(browser: str, desk: Desk) -> None:
    async def reject(page: Page) -> Any:
        await page.sign_in(SAM)
        await page.click(REJECT, "Reject")
        await page.gone(REJECT)
        return await page.run("document.getElementById('status').textContent")

    said = decide(browser, desk, reject)
    assert said.startswith(f"Rejected {key_of(REJECT)} as sam.")
    assert REJECT not in {r["event_id"] for r in desk.open_reviews()}
    assert verdict_of(desk, REJECT, "reject") == {
        "verdict": "reject", "status": "rejected", "output": None, "reviewer": "sam",
        "source": "api:sam"}
    assert published(desk, REJECT) == []


def test_invalid_json_in_an_edit_is_refused_in_the_page_without_a_request(
        browser: str, desk: Desk) -> None:
    async def edit(page: Page) -> Any:
        await page.sign_in(SAM)
        await page.click(UNDECIDED, "Edit")
        area = await page.run(page.row(UNDECIDED) + ".querySelector('textarea').id")
        await page.type_into(f"#{area}", '{"actions": [{"tool": "send_reply",')
        await page.click(UNDECIDED, "Send edit")
        said = await page.until(f"{page.row(UNDECIDED)}.querySelector('form.edit .row-alert')"
                                f".textContent", "the page to refuse the edit")
        await page.type_into(f"#{area}", "null")
        await page.click(UNDECIDED, "Send edit")
        null = await page.until(f"{page.row(UNDECIDED)}.querySelector('form.edit .row-alert')"
                                f".textContent.includes('null')", "the page to refuse null")
        invalid = await page.run(f"document.getElementById({json.dumps(area)})"
                                 f".getAttribute('aria-invalid')")
        return said, null, invalid, await page.run(f"!!{page.row(UNDECIDED)}")

    said, null, invalid, still = decide(browser, desk, edit)
    assert said.startswith("Not sent: the output is not JSON (")
    assert null and invalid == "true" and still
    assert UNDECIDED in {r["event_id"] for r in desk.open_reviews()}


def test_a_token_that_may_only_read_sees_the_list_and_the_refusal_in_words(
        browser: str, desk: Desk) -> None:
    async def approve(page: Page) -> Any:
        shown = await page.sign_in(LEE)
        await page.click(UNDECIDED, "Approve")
        said = await page.until(f"{page.row(UNDECIDED)}.querySelector('article > .row-alert')"
                                f".textContent", "the refusal")
        return shown, said, await page.run(
            f"[...{page.row(UNDECIDED)}.querySelectorAll('button')].every(b => !b.disabled)")

    shown, said, usable = decide(browser, desk, approve)
    assert shown >= 1
    review_id = desk.review_ids[UNDECIDED]
    assert said == (f"This token may not do that. The daemon said: POST /reviews/{review_id}"
                    f"/verdict needs the scope operate; the token 'lee' has read")
    assert usable
    assert UNDECIDED in {r["event_id"] for r in desk.open_reviews()}


def test_a_proposal_decided_meanwhile_leaves_with_the_conflict_in_words(
        browser: str, desk: Desk) -> None:
    async def approve(page: Page) -> Any:
        await page.sign_in(SAM)
        status, _ = desk.call("POST", f"/reviews/{desk.review_ids[TAKEN]}/verdict",
                              {"verdict": "reject", "reviewer": "kim"})
        assert status == 200
        await page.click(TAKEN, "Approve")
        await page.gone(TAKEN)
        return await page.run("document.getElementById('error').textContent")

    said = decide(browser, desk, approve)
    assert said == (f"{key_of(TAKEN)} left the list: Someone decided this proposal first, "
                    f"or it was withdrawn. The daemon said: review "
                    f"'{desk.review_ids[TAKEN]}' already has a verdict (reject)")
    assert verdict_of(desk, TAKEN, "reject", reviewer="kim")["status"] == "rejected"


def test_the_page_works_from_the_keyboard(browser: str, desk: Desk) -> None:
    async def approve(page: Page) -> Any:
        await page.sign_in(SAM)
        unlabelled = await page.run(
            "[...document.querySelectorAll('input, textarea')].filter(f => !f.labels.length)"
            ".map(f => f.id)")
        target = f"[...{page.row(KEYS)}.querySelectorAll('button')].find(b => " \
                 f"b.textContent === 'Approve')"
        for _ in range(300):  # Tab through the page until its Approve button has the focus
            if await page.run(f"document.activeElement === {target}"):
                break
            await page.press("Tab")
        else:
            raise AssertionError("Tab never reached the Approve button")
        await page.press("Enter")
        await page.gone(KEYS)
        return unlabelled

    assert decide(browser, desk, approve) == []
    assert KEYS not in {r["event_id"] for r in desk.open_reviews()}
    stored = verdict_of(desk, KEYS, "approve")
    assert (stored["status"], stored["reviewer"]) == ("approved", "sam")
