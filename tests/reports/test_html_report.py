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
from dataclasses import replace
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from shadow.reports import charts
from shadow.reports.html import to_html
from shadow.reports.options import OwnerOptions
from shadow.reports.owner_model import (
    Baseline,
    Bucket,
    Check,
    CheckKind,
    Confusion,
    CostProjection,
    CoveragePoint,
    Day,
    Disagreement,
    ErrorKind,
    Errors,
    FieldRate,
    OwnerAgreement,
    OwnerCandidate,
    OwnerLatency,
    OwnerReport,
    RolloutSection,
    RolloutState,
    Segment,
    TimelineEntry,
    Verdict,
    ViolationExample,
    Violations,
)

EVIL = "<script>alert('x')</script>"


def candidate(name: str = "triage-llm", status: str = "not_ready") -> OwnerCandidate:
    return OwnerCandidate(
        name=name, version="2024-06-01",
        verdict=Verdict(status, (
            Check("sample size", "pass", 1200, 400, "enough compared decisions"),
            Check("agreement", "fail", 0.8712, 0.9, "lower bound below threshold"),
            Check("rollout state", "unknown", None, None, "no rollout yet"),
        )),
        agreement=OwnerAgreement(0.8712, 0.8511, 0.8891, n=1200, agreed=1045),
        over_time=tuple(Day(f"2024-06-0{d}", 100 + d, 85 + d, 0.85 + d / 100, 0.78 + d / 100,
                            0.9 + d / 100) for d in range(1, 6)),
        segments=(
            Segment("region", "eu", 700, 630, 0.9, 0.876, 0.92, floor=0.85, below_floor=False),
            Segment("region", "us", 500, 415, 0.83, 0.795, 0.86, floor=0.85, below_floor=True),
        ),
        confusion=Confusion(("approve", "reject", "escalate"),
                            ((500, 40, 10), (30, 400, 20), (5, 15, 180)), 3),
        fields=(FieldRate("category", 1200, 1100, 0.9167, None, None),
                FieldRate("priority", 1200, 960, 0.8, None, None)),
        coverage=tuple(CoveragePoint(t, 1 - t / 2, 900, 720, 0.8 + t / 5)
                       for t in (0.0, 0.25, 0.5, 0.75)),
        latency=OwnerLatency(120.0, 480.0, 910.0, (
            Bucket(100, 400), Bucket(250, 500), Bucket(500, 250), Bucket(1000, 50))),
        errors=Errors(0.0125, 15, (ErrorKind("TimeoutError", 10, "timed out after 5 s"),
                                   ErrorKind("ValueError", 5, EVIL))),
        cost=CostProjection(per_decision=0.0042, total=5.04, daily_volume_current=1000,
                            per_day_current=4.2, per_month_current=126.0, per_day_10x=42.0,
                            per_month_10x=1260.0, daily_volume_full=250000,
                            per_day_full=1050.0, per_month_full=31500.0),
        violations=Violations(
            configured=True, checked=1185, violating=5, rate=5 / 1185, threshold=0.01,
            kinds=(CheckKind("pii:email", 4, 4, 4 / 1185), CheckKind("tone", 1, 1, 1 / 1185)),
            examples=(ViolationExample("ev-9", "case-9", "2024-06-04T08:00:00+00:00",
                                       ("pii:email matched at output.reply",
                                        f"tone said {EVIL}")),)),
        disagreements=(Disagreement(
            event_id="ev-1", key="case-1", segment={"region": "us"},
            payload={"text": EVIL, "email": "[redacted]"}, output={"label": "approve"},
            outcome={"label": "reject"}, decided_at="2024-06-03T10:00:00+00:00", note=None),),
        predictions=1200,
    )


NBSP = "\u00a0"


def timeline() -> tuple[TimelineEntry, ...]:
    return (
        TimelineEntry("2024-06-01T09:00:00+00:00", "alice", "ops", "promote", 0, 1, 5, "ok",
                      "gate passed"),
        TimelineEntry("2024-06-02T09:00:00+00:00", "controller", None, "promote", 1, 2, 25,
                      "ok", "gate passed"),
        TimelineEntry("2024-06-03T09:00:00+00:00", "controller", None, "rollback", 2, 0, 0,
                      "rolled_back", "error rate 4 % > 2 %"))


def sample_report() -> OwnerReport:
    return OwnerReport(
        generated_at=datetime(2024, 6, 6, 12, 0, tzinfo=UTC), store="/data/shadow.duckdb",
        options=OwnerOptions(),
        candidates=(candidate(), candidate("rules-v2", "ready")),
        human_baseline=Baseline(80, 95, 86, 0.9053, 0.829, 0.949),
        rollout=RolloutSection(
            state=RolloutState("rules-rollout", "rules-v2", None, 2, 25, "progressing",
                               "2024-06-02T09:00:00+00:00", "2024-06-02T09:00:00+00:00", 2),
            timeline=timeline(), labels=None, withdrawn=()),
    )


def render(report: OwnerReport) -> str:
    return to_html(report, currency="$")


def empty_candidate() -> OwnerCandidate:
    """A candidate with nothing compared, measured or checked yet."""
    return OwnerCandidate(
        name="bare", version=None, verdict=Verdict("not_enough_data", ()),
        agreement=OwnerAgreement(None, None, None, n=0, agreed=0), over_time=(), segments=(),
        confusion=None, fields=(), coverage=None,
        latency=OwnerLatency(None, None, None, ()), errors=Errors(0.0, 0, ()),
        cost=CostProjection(None, None, 0.0, None, None, None, None, None, None, None),
        violations=Violations(None, 0, 0, None, None, (), ()), disagreements=(),
        predictions=0)


def with_candidate(report: OwnerReport, changed: OwnerCandidate) -> OwnerReport:
    """``report`` with its first candidate replaced by ``changed``, alone."""
    return replace(report, candidates=(changed,))


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
    page = parse(render(sample_report()))
    assert "NOT READY" in page.all_text
    assert "READY" in page.all_text.replace("NOT READY", "")
    assert page.count("section") == 2


def test_not_enough_data_is_the_verdict_when_none_is_given() -> None:
    report = with_candidate(sample_report(), empty_candidate())
    assert "NOT ENOUGH DATA" in parse(render(report)).all_text


def test_one_svg_per_chart_with_accessible_names() -> None:
    page = parse(render(sample_report()))
    svgs = [attrs for tag, attrs in page.tags if tag == "svg"]
    # per candidate: over time, baseline, segments, fields, coverage, latency; plus rollout
    assert len(svgs) == 2 * 6 + 1
    assert all(a.get("role") == "img" and a.get("aria-label") for a in svgs)
    assert sum(1 for tag, _ in page.tags if tag == "polygon") == 2  # interval bands


def test_every_svg_carries_a_title_element() -> None:
    document = render(sample_report())
    for match in re.finditer(r"<svg[^>]*>(.{0,200})", document):
        assert match.group(1).startswith("<title>")


def test_numbers_are_formatted_for_people() -> None:
    text = parse(render(sample_report())).all_text.replace(NBSP, " ")
    assert "87.1 % [85.1 %, 88.9 %]" in text
    assert "90.5 % [82.9 %, 94.9 %]" in text  # human baseline
    assert "$0.0042" in text and "$31,500.00" in text and "$1,260.00" in text
    assert "250,000" in text and "10,000" in text  # full and 10x daily volume
    assert "p95 480.0 ms" in re.sub(r"\s+", " ", text)
    assert "1.25 %" in text  # error rate


def test_no_line_breaks_between_a_number_and_its_percent_sign() -> None:
    report = sample_report()
    reason = html.escape(report.rollout.timeline[-1].reason or "")
    document = render(report).replace(reason, "")
    percentages = re.findall(r"\d(\s)%", document)  # the reason above is data, not a figure
    assert len(percentages) > 20
    assert set(percentages) == {NBSP}


def _texts(svg: str, cls: str | None = None) -> list[tuple[float, float, str]]:
    """(x, y, text) of the chart's ``<text>`` elements, of one class if given."""
    found = re.findall(r'<text x="([-\d.]+)" y="([-\d.]+)"[^>]*?(?: class="(\w+)")?>([^<]*)</text>',
                       svg)
    return [(float(x), float(y), text) for x, y, c, text in found if cls is None or c == cls]


def test_latency_markers_of_an_in_process_candidate_read_in_fractions_of_a_millisecond() -> None:
    latency = OwnerLatency(0.036, 0.0604, 0.079, (Bucket(0.1, 4000), Bucket(0.5, 3)))
    markers = _texts(charts.latency_histogram("latency", latency), "marker")
    assert [text for _, _, text in markers] == ["p50 0.036 ms", "p95 0.060 ms", "p99 0.079 ms"]
    rows = sorted(y for _, y, _ in markers)
    assert all(b - a >= 12 for a, b in itertools.pairwise(rows))  # 12px text, one row each
    summary = parse(render(sample_report())).all_text
    assert "p50 120.0 ms" in re.sub(r"\s+", " ", summary)


def test_threshold_labels_that_would_overlap_are_left_out() -> None:
    thresholds = [0.0, 0.1, 0.2, 0.5, 0.9, 0.95, 0.99]
    rows = [CoveragePoint(t, 1 - t, 10, 8, 0.8) for t in thresholds]
    labels = [(x, text) for x, y, text in _texts(charts.coverage_curve("c", rows), "axis")
              if re.fullmatch(r"\d\.\d\d", text)]
    xs = [x for x, _ in labels]
    assert all(b - a >= 32 for a, b in itertools.pairwise(xs))
    # 480 px for 0 to 0.99: 0.95 is 24 px after 0.90, 0.99 is 44 px after it.
    assert [text for _, text in labels] == ["0.00", "0.10", "0.20", "0.50", "0.90", "0.99"]


def test_floor_markers_and_below_floor_segments_are_shown() -> None:
    document = render(sample_report())
    assert 'stroke-dasharray="3 2"' in document  # floor marker
    assert "Below floor: region=us" in parse(document).all_text


def test_confusion_matrix_cells_are_shaded() -> None:
    page = parse(render(sample_report()))
    shaded = [a for tag, a in page.tags if tag == "td" and "rgba" in (a.get("style") or "")]
    assert len(shaded) == 2 * 9


def test_strings_from_the_data_are_escaped() -> None:
    report = sample_report()
    first = report.candidates[0]
    first = replace(first, name=EVIL,
                    segments=(replace(first.segments[0], value=EVIL), *first.segments[1:]))
    steps = report.rollout.timeline
    report = replace(report, candidates=(first, *report.candidates[1:]),
                     rollout=replace(report.rollout,
                                     timeline=(replace(steps[0], reason=EVIL), *steps[1:])))
    document = render(report)
    page = parse(document)
    assert page.script_tags == 0
    assert "<script>" not in document
    assert "&lt;script&gt;" in document
    assert EVIL in page.all_text  # shown to the reader as text


def test_violations_section_shows_the_figures_and_escapes_the_texts() -> None:
    first = sample_report().candidates[0]
    errors, (shown,) = first.errors, first.disagreements
    first = replace(  # only the violations carry EVIL
        first, errors=replace(errors, kinds=(errors.kinds[0],
                                             replace(errors.kinds[1], example="bad value"))),
        disagreements=(replace(shown, payload={"text": "hello"}),))
    report = with_candidate(sample_report(), first)
    document = render(report).replace(NBSP, " ")
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
    def budget(threshold: float | None) -> str:
        return render(with_candidate(report, replace(
            first, violations=replace(first.violations, threshold=threshold))))

    assert 'Budget 0.40\u00a0%: <span class="fail">FAIL</span>' in budget(0.004)
    assert "Budget" not in budget(None)


def test_a_flat_segment_reads_as_name_value_lines_and_a_nested_one_as_json() -> None:
    report = sample_report()
    first = report.candidates[0]
    (row,) = first.disagreements

    def shown(segment: Any) -> str:
        changed = replace(first, disagreements=(replace(row, segment=segment),))
        return render(with_candidate(report, changed))

    cell = '<span class="muted">lang:</span> &lt;b&gt;de&lt;/b&gt;<br>'
    cell += '<span class="muted">tier:</span> pro<br><span class="muted">vip:</span> true'
    assert cell in shown({"tier": "pro", "lang": "<b>de</b>", "vip": True})
    assert ('<pre>{\n  &quot;region&quot;: {\n    &quot;country&quot;'
            in shown({"region": {"country": "us"}}))


def test_payload_reads_as_its_fields_in_their_order_with_line_breaks_kept() -> None:
    # Was: the payload as JSON with sorted keys, its text's line breaks as literal \n.
    report = sample_report()
    first = report.candidates[0]
    (row,) = first.disagreements
    payload = {"subject": "Refund <now>", "body": "line one\nline two", "meta": {"b": 1, "a": 2}}
    document = render(with_candidate(
        report, replace(first, disagreements=(replace(row, payload=payload),))))
    assert ('<dl class="payload"><dt>subject</dt><dd>Refund &lt;now&gt;</dd>'
            "<dt>body</dt><dd>line one\nline two</dd>"
            "<dt>meta</dt><dd>{\n  &quot;b&quot;: 1,\n  &quot;a&quot;: 2\n}</dd></dl>") in document
    assert re.search(r"\.payload dd \{[^}]*white-space: pre-wrap", document)


def test_disagreements_say_their_order_and_label_both_times() -> None:
    text = re.sub(r"\s+", " ", parse(render(sample_report())).all_text)
    assert "The 1 most recent of 155 disagreements, newest event first." in text
    assert "event time – " in text  # the sample row does not say when its event happened
    assert "decided 2024-06-03 10:00 UTC" in text


def test_no_external_references() -> None:
    document = render(sample_report())
    page = parse(document)
    for _, attrs in page.tags:
        for name in ("src", "href", "xlink:href", "data", "action"):
            assert attrs.get(name) is None
    assert page.count("script") == page.count("link") == page.count("img") == 0
    markup = re.sub(r">[^<]*<", "><", document)  # drop the plain text between tags
    assert "http://" not in markup and "https://" not in markup and "//" not in markup
    assert "url(" not in document and "@import" not in document


def test_print_styles_break_pages_between_candidates() -> None:
    document = render(sample_report())
    assert "@media print" in document and "break-before: page" in document


NO_ROLLOUT = RolloutSection(state=None, timeline=(), labels=None, withdrawn=())


@pytest.mark.parametrize("report", [
    replace(sample_report(), candidates=(), human_baseline=None, rollout=NO_ROLLOUT),
    replace(sample_report(), candidates=(empty_candidate(),), human_baseline=None,
            rollout=NO_ROLLOUT),
], ids=["no candidates", "a candidate without data"])
def test_renders_without_data(report: OwnerReport) -> None:
    page = parse(to_html(report))
    assert "no data" in page.all_text
    assert page.count("html") == 1


def test_sections_with_partial_values_render_no_data() -> None:
    report = sample_report()
    bare = report.candidates[0]
    bare = replace(
        bare, agreement=OwnerAgreement(None, None, None, n=0, agreed=0),
        over_time=(Day("2024-06-01", 0, 0, None, None, None),),
        latency=OwnerLatency(None, None, None, ()),
        cost=CostProjection(None, None, 0.0, None, None, None, None, None, None, None),
        errors=Errors(0.0, 0, ()),
        segments=(replace(bare.segments[0], rate=None, low=None, high=None),
                  *bare.segments[1:]))
    report = replace(report, candidates=(bare, *report.candidates[1:]), human_baseline=None)
    assert "no data" in parse(render(report)).all_text


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
    report.write_text(render(sample_report()), encoding="utf-8")
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
