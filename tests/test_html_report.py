"""The HTML owner report: structure, numbers, escaping, offline-ness, and a real browser."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import html
import itertools
import os
import re
import shutil
import signal
import struct
import subprocess
import threading
import zlib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from shadow.reports import charts
from shadow.reports.html import to_html

EVIL = "<script>alert('x')</script>"


def candidate(name: str = "triage-llm", status: str = "not_ready") -> dict[str, Any]:
    return {
        "name": name, "version": "2024-06-01",
        "verdict": {"status": status, "checks": [
            {"name": "sample size", "status": "pass", "value": 1200, "threshold": 400,
             "detail": "enough compared decisions"},
            {"name": "agreement", "status": "fail", "value": 0.8712, "threshold": 0.9,
             "detail": "lower bound below threshold"},
            {"name": "rollout state", "status": "unknown", "value": None, "threshold": None,
             "detail": "no rollout yet"},
        ]},
        "agreement": {"rate": 0.8712, "low": 0.8511, "high": 0.8891, "n": 1200, "agreed": 1045,
                      "method": "wilson"},
        "over_time": [{"day": f"2024-06-0{d}", "compared": 100 + d, "agreed": 85 + d,
                       "rate": 0.85 + d / 100, "low": 0.78 + d / 100, "high": 0.9 + d / 100}
                      for d in range(1, 6)],
        "segments": [
            {"field": "region", "value": "eu", "compared": 700, "agreed": 630, "rate": 0.9,
             "low": 0.876, "high": 0.92, "floor": 0.85, "below_floor": False},
            {"field": "region", "value": "us", "compared": 500, "agreed": 415, "rate": 0.83,
             "low": 0.795, "high": 0.86, "floor": 0.85, "below_floor": True},
        ],
        "confusion": {"labels": ["approve", "reject", "escalate"],
                      "matrix": [[500, 40, 10], [30, 400, 20], [5, 15, 180]], "other": 3},
        "fields": [{"field": "category", "compared": 1200, "agreed": 1100, "rate": 0.9167},
                   {"field": "priority", "compared": 1200, "agreed": 960, "rate": 0.8}],
        "coverage": [{"threshold": t, "coverage": 1 - t / 2, "agreement": 0.8 + t / 5, "n": 900}
                     for t in (0.0, 0.25, 0.5, 0.75)],
        "latency": {"p50": 120.0, "p95": 480.0, "p99": 910.0,
                    "histogram": [{"le_ms": 100, "count": 400}, {"le_ms": 250, "count": 500},
                                  {"le_ms": 500, "count": 250}, {"le_ms": 1000, "count": 50}]},
        "errors": {"rate": 0.0125, "count": 15, "kinds": [
            {"kind": "TimeoutError", "count": 10, "example": "timed out after 5 s"},
            {"kind": "ValueError", "count": 5, "example": EVIL}]},
        "cost": {"per_decision": 0.0042, "daily_volume_current": 1000,
                 "per_day_current": 4.2, "per_month_current": 126.0, "per_day_10x": 42.0,
                 "per_month_10x": 1260.0, "daily_volume_full": 250000, "per_day_full": 1050.0,
                 "per_month_full": 31500.0},
        "violations": {"checked": 1185, "violating": 5, "rate": 5 / 1185, "threshold": 0.01,
                       "kinds": [{"check": "pii:email", "predictions": 4, "count": 4,
                                  "rate": 4 / 1185},
                                 {"check": "tone", "predictions": 1, "count": 1,
                                  "rate": 1 / 1185}],
                       "examples": [{"event_id": "ev-9", "key": "case-9",
                                     "occurred_at": "2024-06-04T08:00:00+00:00",
                                     "violations": ["pii:email matched at output.reply",
                                                    f"tone said {EVIL}"]}]},
        "disagreements": [{"event_id": "ev-1", "key": "case-1", "segment": {"region": "us"},
                           "payload": {"text": EVIL, "email": "[redacted]"},
                           "output": {"label": "approve"}, "outcome": {"label": "reject"},
                           "decided_at": "2024-06-03T10:00:00+00:00"}],
    }


NBSP = "\u00a0"


def sample_report() -> dict[str, Any]:
    return {
        "generated_at": "2024-06-06T12:00:00+00:00", "store": "/data/shadow.duckdb",
        "options": {"currency": "$"},
        "candidates": [candidate(), candidate("rules-v2", "ready")],
        "human_baseline": {"keys": 80, "pairs": 95, "agreed": 86, "rate": 0.9053,
                           "low": 0.829, "high": 0.949},
        "rollout": {"state": {"candidate": "rules-v2", "step": 2, "percent": 25},
                    "timeline": [
            {"at": "2024-06-01T09:00:00+00:00", "actor": "alice", "action": "promote",
             "from_step": 0, "to_step": 1, "percent": 5, "status": "ok", "reason": "gate passed"},
            {"at": "2024-06-02T09:00:00+00:00", "actor": "controller", "action": "promote",
             "from_step": 1, "to_step": 2, "percent": 25, "status": "ok", "reason": "gate passed"},
            {"at": "2024-06-03T09:00:00+00:00", "actor": "controller", "action": "rollback",
             "from_step": 2, "to_step": 0, "percent": 0, "status": "rolled_back",
             "reason": "error rate 4 % > 2 %"}]},
    }


def empty_candidate() -> dict[str, Any]:
    return {"name": "bare", "version": None, "verdict": None, "agreement": None,
            "over_time": [], "segments": [], "confusion": None, "fields": [], "coverage": None,
            "latency": None, "errors": None, "cost": None, "disagreements": []}


class Page(HTMLParser):
    """Collects tags with their attributes, and the visible text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.script_tags = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self.script_tags += tag == "script"

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def count(self, tag: str) -> int:
        return sum(1 for name, _ in self.tags if name == tag)

    @property
    def all_text(self) -> str:
        return " ".join(self.text)


def parse(document: str) -> Page:
    page = Page()
    page.feed(document)
    page.close()
    return page


def test_headline_verdicts_appear_for_every_candidate() -> None:
    page = parse(to_html(sample_report()))
    assert "NOT READY" in page.all_text
    assert "READY" in page.all_text.replace("NOT READY", "")
    assert page.count("section") == 2


def test_not_enough_data_is_the_verdict_when_none_is_given() -> None:
    report = sample_report()
    report["candidates"] = [empty_candidate()]
    assert "NOT ENOUGH DATA" in parse(to_html(report)).all_text


def test_one_svg_per_chart_with_accessible_names() -> None:
    page = parse(to_html(sample_report()))
    svgs = [attrs for tag, attrs in page.tags if tag == "svg"]
    # per candidate: over time, baseline, segments, fields, coverage, latency; plus rollout
    assert len(svgs) == 2 * 6 + 1
    assert all(a.get("role") == "img" and a.get("aria-label") for a in svgs)
    assert sum(1 for tag, _ in page.tags if tag == "polygon") == 2  # interval bands


def test_every_svg_carries_a_title_element() -> None:
    document = to_html(sample_report())
    for match in re.finditer(r"<svg[^>]*>(.{0,200})", document):
        assert match.group(1).startswith("<title>")


def test_numbers_are_formatted_for_people() -> None:
    text = parse(to_html(sample_report())).all_text.replace(NBSP, " ")
    assert "87.1 % [85.1 %, 88.9 %]" in text
    assert "90.5 % [82.9 %, 94.9 %]" in text  # human baseline
    assert "$0.0042" in text and "$31,500.00" in text and "$1,260.00" in text
    assert "250,000" in text and "10,000" in text  # full and 10x daily volume
    assert "p95 480.0 ms" in re.sub(r"\s+", " ", text)
    assert "1.25 %" in text  # error rate


def test_no_line_breaks_between_a_number_and_its_percent_sign() -> None:
    report = sample_report()
    reason = html.escape(report["rollout"]["timeline"][-1]["reason"])
    document = to_html(report).replace(reason, "")
    percentages = re.findall(r"\d(\s)%", document)  # the reason above is data, not a figure
    assert len(percentages) > 20
    assert set(percentages) == {NBSP}


def _texts(svg: str, cls: str | None = None) -> list[tuple[float, float, str]]:
    """(x, y, text) of the chart's ``<text>`` elements, of one class if given."""
    found = re.findall(r'<text x="([-\d.]+)" y="([-\d.]+)"[^>]*?(?: class="(\w+)")?>([^<]*)</text>',
                       svg)
    return [(float(x), float(y), text) for x, y, c, text in found if cls is None or c == cls]


def test_latency_markers_of_an_in_process_candidate_read_in_fractions_of_a_millisecond() -> None:
    latency = {"p50": 0.036, "p95": 0.0604, "p99": 0.079,
               "histogram": [{"le_ms": 0.1, "count": 4000}, {"le_ms": 0.5, "count": 3}]}
    markers = _texts(charts.latency_histogram("latency", latency), "marker")
    assert [text for _, _, text in markers] == ["p50 0.036 ms", "p95 0.060 ms", "p99 0.079 ms"]
    rows = sorted(y for _, y, _ in markers)
    assert all(b - a >= 12 for a, b in itertools.pairwise(rows))  # 12px text, one row each
    summary = parse(to_html(sample_report())).all_text
    assert "p50 120.0 ms" in re.sub(r"\s+", " ", summary)


def test_threshold_labels_that_would_overlap_are_left_out() -> None:
    thresholds = [0.0, 0.1, 0.2, 0.5, 0.9, 0.95, 0.99]
    rows = [{"threshold": t, "coverage": 1 - t, "agreement": 0.8, "n": 10} for t in thresholds]
    labels = [(x, text) for x, y, text in _texts(charts.coverage_curve("c", rows), "axis")
              if re.fullmatch(r"\d\.\d\d", text)]
    xs = [x for x, _ in labels]
    assert all(b - a >= 32 for a, b in itertools.pairwise(xs))
    # 480 px for 0 to 0.99: 0.95 is 24 px after 0.90, 0.99 is 44 px after it.
    assert [text for _, text in labels] == ["0.00", "0.10", "0.20", "0.50", "0.90", "0.99"]


def test_floor_markers_and_below_floor_segments_are_shown() -> None:
    document = to_html(sample_report())
    assert 'stroke-dasharray="3 2"' in document  # floor marker
    assert "Below floor: region=us" in parse(document).all_text


def test_confusion_matrix_cells_are_shaded() -> None:
    page = parse(to_html(sample_report()))
    shaded = [a for tag, a in page.tags if tag == "td" and "rgba" in (a.get("style") or "")]
    assert len(shaded) == 2 * 9


def test_strings_from_the_data_are_escaped() -> None:
    report = sample_report()
    report["candidates"][0]["name"] = EVIL
    report["candidates"][0]["segments"][0]["value"] = EVIL
    report["rollout"]["timeline"][0]["reason"] = EVIL
    document = to_html(report)
    page = parse(document)
    assert page.script_tags == 0
    assert "<script>" not in document
    assert "&lt;script&gt;" in document
    assert EVIL in page.all_text  # shown to the reader as text


def test_violations_section_shows_the_figures_and_escapes_the_texts() -> None:
    report = sample_report()
    first = report["candidates"][0]
    first["errors"]["kinds"][1]["example"] = "bad value"  # only the violations carry EVIL
    first["disagreements"][0]["payload"]["text"] = "hello"
    report["candidates"] = [first]
    document = to_html(report).replace(NBSP, " ")
    page = parse(document)
    assert page.script_tags == 0 and "<script>" not in document
    assert f"tone said {EVIL}" in page.all_text
    assert "tone said &lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in document
    assert "<h3>Hard-constraint violations</h3>" in document
    assert "<strong>0.42 %</strong> of checked outputs violated a hard constraint" in document
    assert "(5 of 1,185 checked;" in document
    assert 'Budget 1.00 %: <span class="pass">PASS</span>' in document
    assert ('<td>pii:email</td><td class="num">4</td><td class="num">0.34 %</td>'
            '<td class="num">4</td>') in document
    assert "<td>0.42 %</td>" not in document and '<td class="num">0.42 %</td>' in document
    first["violations"]["threshold"] = 0.004
    assert 'Budget 0.40\u00a0%: <span class="fail">FAIL</span>' in to_html(report)
    first["violations"]["threshold"] = None
    assert "Budget" not in to_html(report)


def test_a_flat_segment_reads_as_name_value_lines_and_a_nested_one_as_json() -> None:
    report = sample_report()
    (row,) = report["candidates"][0]["disagreements"]
    row["segment"] = {"tier": "pro", "lang": "<b>de</b>", "vip": True}
    cell = '<span class="muted">lang:</span> &lt;b&gt;de&lt;/b&gt;<br>'
    cell += '<span class="muted">tier:</span> pro<br><span class="muted">vip:</span> true'
    assert cell in to_html(report)
    row["segment"] = {"region": {"country": "us"}}
    assert '<pre>{\n  &quot;region&quot;: {\n    &quot;country&quot;' in to_html(report)


def test_payload_is_pretty_json_in_pre() -> None:
    document = to_html(sample_report())
    assert '<pre>{\n  &quot;email&quot;: &quot;[redacted]&quot;,' in document


def test_no_external_references() -> None:
    document = to_html(sample_report())
    page = parse(document)
    for _, attrs in page.tags:
        for name in ("src", "href", "xlink:href", "data", "action"):
            assert attrs.get(name) is None
    assert page.count("script") == page.count("link") == page.count("img") == 0
    markup = re.sub(r">[^<]*<", "><", document)  # drop the plain text between tags
    assert "http://" not in markup and "https://" not in markup and "//" not in markup
    assert "url(" not in document and "@import" not in document


def test_print_styles_break_pages_between_candidates() -> None:
    document = to_html(sample_report())
    assert "@media print" in document and "break-before: page" in document


@pytest.mark.parametrize("report", [
    {},
    {"candidates": None, "human_baseline": None, "rollout": None},
    {"candidates": [], "rollout": {"state": None, "timeline": []}},
    {"candidates": [empty_candidate()], "rollout": {"state": None, "timeline": None}},
])
def test_renders_without_data(report: dict[str, Any]) -> None:
    page = parse(to_html(report))
    assert "no data" in page.all_text
    assert page.count("html") == 1


def test_sections_with_partial_values_render_no_data() -> None:
    report = sample_report()
    bare = report["candidates"][0]
    bare["agreement"] = {"rate": None, "low": None, "high": None, "n": 0, "agreed": 0}
    bare["over_time"] = [{"day": "2024-06-01", "compared": 0, "agreed": 0, "rate": None,
                          "low": None, "high": None}]
    bare["latency"] = {"p50": None, "p95": None, "p99": None, "histogram": []}
    bare["cost"] = dict.fromkeys(bare["cost"])
    bare["errors"] = {"rate": None, "count": None, "kinds": []}
    bare["segments"][0].update(rate=None, low=None, high=None, floor=None)
    report["human_baseline"] = None
    assert "no data" in parse(to_html(report)).all_text


# -- end to end in headless Chromium -------------------------------------------------------


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("SHADOW_REQUIRE_CHROMIUM") == "1":
        pytest.fail("SHADOW_REQUIRE_CHROMIUM=1 but no chromium on PATH")
    pytest.skip("chromium not installed (apt-get install -y chromium)")


class DevTools:
    """A minimal Chrome DevTools Protocol client over one page target's websocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        while True:
            message: dict[str, Any] = await self.ws.receive_json()
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                result: dict[str, Any] = message["result"]
                return result
            self.events.append(message)

    async def until(self, method: str) -> None:
        while not any(e.get("method") == method for e in self.events):
            self.events.append(await self.ws.receive_json())

    async def evaluate(self, expression: str) -> Any:
        reply = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in reply, reply
        return reply["result"]["value"]


def launch(binary: str, profile: str) -> tuple[subprocess.Popen[str], str, threading.Thread]:
    browser = subprocess.Popen(
        [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--remote-debugging-port=0", f"--user-data-dir={profile}", "--window-size=1280,2000",
         "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert browser.stderr is not None
    for line in browser.stderr:  # the browser prints this once its endpoint is up
        if "DevTools listening on " in line:
            # keep draining stderr so a chatty browser never blocks on a full pipe
            drain = threading.Thread(target=browser.stderr.read, daemon=True)
            drain.start()
            return browser, line.split("DevTools listening on ", 1)[1].strip(), drain
    with contextlib.suppress(ProcessLookupError):
        os.killpg(browser.pid, signal.SIGKILL)
    raise AssertionError(f"chromium exited ({browser.wait()}) without a DevTools endpoint")


async def page_websocket(session: aiohttp.ClientSession, browser_ws: str) -> str:
    """The websocket of the about:blank page target (the browser endpoint has no Page)."""
    port = re.search(r":(\d+)/", browser_ws)
    assert port
    async with session.get(f"http://127.0.0.1:{port.group(1)}/json/list") as reply:
        targets = await reply.json()
    pages = [t for t in targets if t.get("type") == "page"]
    assert pages, targets
    address: str = pages[0]["webSocketDebuggerUrl"]
    return address


async def render_in_browser(browser_ws: str, url: str) -> tuple[DevTools, dict[str, Any]]:
    async with aiohttp.ClientSession() as session:
        ws_url = await page_websocket(session, browser_ws)
        async with session.ws_connect(ws_url, max_msg_size=64 * 1024 * 1024) as ws:
            tools = DevTools(ws)
            for domain in ("Runtime", "Log", "Network", "Page"):
                await tools.call(f"{domain}.enable")
            await tools.call("Page.navigate", url=url)
            await asyncio.wait_for(tools.until("Page.loadEventFired"), 15)
            facts = {
                "svgs": await tools.evaluate("document.querySelectorAll('svg').length"),
                "sizes": await tools.evaluate(
                    "[...document.querySelectorAll('svg')].map(s => {"
                    " const r = s.getBoundingClientRect(); return [r.width, r.height]; })"),
                "png": (await tools.call("Page.captureScreenshot", format="png"))["data"],
            }
            return tools, facts


def problems(events: list[dict[str, Any]], url: str) -> list[dict[str, Any]]:
    found = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            found.append(event)
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            found.append(event)
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            found.append(event)
        elif method == "Network.requestWillBeSent" and params["request"]["url"] != url:
            found.append(event)
    return found


def png_size_and_colours(data: bytes) -> tuple[int, int, int]:
    """Width, height and the number of distinct scanlines' worth of colour variety."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    chunks, offset = [], 8
    while offset < len(data):
        length = struct.unpack(">I", data[offset:offset + 4])[0]
        kind = data[offset + 4:offset + 8]
        if kind == b"IDAT":
            chunks.append(data[offset + 8:offset + 8 + length])
        offset += 12 + length
    raw = zlib.decompress(b"".join(chunks))
    return width, height, len(set(raw[i:i + 3] for i in range(0, min(len(raw), 600_000), 3)))


@pytest.mark.timeout(60)
def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    binary = chromium_binary()
    report = tmp_path / "report.html"
    report.write_text(to_html(sample_report()), encoding="utf-8")
    url = report.as_uri()
    browser, browser_ws, drain = launch(binary, str(tmp_path / "profile"))
    try:
        tools, facts = asyncio.run(asyncio.wait_for(render_in_browser(browser_ws, url), 30))
    finally:
        os.killpg(browser.pid, signal.SIGKILL)  # the browser and its renderer/GPU children
        browser.wait()
        drain.join(5)
        assert browser.stderr is not None
        browser.stderr.close()
    assert problems(tools.events, url) == []
    assert facts["svgs"] == 13
    assert all(width > 0 and height > 0 for width, height in facts["sizes"]), facts["sizes"]
    png = base64.b64decode(facts["png"])
    (tmp_path / "report.png").write_bytes(png)
    width, height, colours = png_size_and_colours(png)
    assert width >= 800 and height >= 600
    assert len(png) > 20_000 and colours > 20  # not a blank page
