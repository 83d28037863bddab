"""The demo's HTML report in headless Chromium at 1280×900: the verdict and its reason are
on the first screen, without scrolling."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from shadow.demo.run import run_demo
from tests.reports.test_html_report import DevTools, chromium_binary, launch, page_websocket

WIDTH, HEIGHT = 1280, 900

BOXES = """[...document.querySelectorAll('.verdict-line, .next-step, table.facts')].map(e => {
  const r = e.getBoundingClientRect();
  return {cls: e.className, text: e.innerText, top: r.top, bottom: r.bottom};
})"""


async def first_screen(browser_ws: str, url: str) -> tuple[dict[str, Any], bytes]:
    async with aiohttp.ClientSession() as session:
        ws_url = await page_websocket(session, browser_ws)
        async with session.ws_connect(ws_url, max_msg_size=64 * 1024 * 1024) as ws:
            tools = DevTools(ws)
            await tools.call("Page.enable")
            await tools.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT,
                             deviceScaleFactor=1, mobile=False)
            await tools.call("Page.navigate", url=url)
            await asyncio.wait_for(tools.until("Page.loadEventFired"), 15)
            facts = {"viewport": await tools.evaluate("[innerWidth, innerHeight, scrollY]"),
                     "boxes": await tools.evaluate(BOXES)}
            shot = await tools.call("Page.captureScreenshot", format="png")
            return facts, base64.b64decode(shot["data"])


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("demo")
    run_demo(directory, events=5000)
    return directory / "report.html"


@pytest.mark.timeout(90)
def test_the_verdict_and_its_reason_are_on_the_first_screen(
        demo_report: Path, tmp_path: Path) -> None:
    binary = chromium_binary()
    browser, browser_ws, drain = launch(binary, str(tmp_path / "profile"))
    try:
        facts, png = asyncio.run(asyncio.wait_for(
            first_screen(browser_ws, demo_report.as_uri()), 45))
    finally:
        os.killpg(browser.pid, signal.SIGKILL)
        browser.wait()
        drain.join(5)
        assert browser.stderr is not None
        browser.stderr.close()
    (tmp_path / "first-screen.png").write_bytes(png)
    assert facts["viewport"] == [WIDTH, HEIGHT, 0]
    boxes = {box["cls"]: box for box in facts["boxes"]}
    verdict = boxes["verdict-line"]
    # The demo: German tickets agree 52.4 % of 924, below the configured floor of 70 %.
    text = verdict["text"].replace("\u00a0", " ")
    assert text.startswith("NOT READY: language=de 52.4 % < floor 70 % (n=924)")
    assert 0 <= verdict["top"] < verdict["bottom"] <= HEIGHT
    assert boxes["next-step"]["bottom"] <= HEIGHT
    # The data window and what is missing are on the first screen too.
    facts_table = boxes["facts"]
    assert facts_table["bottom"] <= HEIGHT
    assert "2024-03-04" in facts_table["text"] and "pending" in facts_table["text"]
