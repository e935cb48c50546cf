"""The inspector's page in a real browser: Chromium from the distribution, headless.

CI installs Debian's ``chromium`` and Playwright drives it
(``executable_path``, never a browser of Playwright's own). The test saves a
screenshot of the page under ``artifacts/`` and prints its path.
Elsewhere, without Chromium, it is skipped with the command that installs it;
under CI (``CI`` set) a missing browser fails it instead.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from typing import Any

import pytest

from connector import Config, RequestContext
from connector.daemon.supervisor import Connector
from connector.dev.engine import DevEngine
from connector.wire.frames import RequestFrame, ResponseFrame
from examples.memory_source import MemorySource
from tests.conftest import REPO

KEY = "sk_test_inspector_browser_7c41d0"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = REPO / "artifacts" / "inspector.png"


def _chromium() -> str:
    found = os.environ.get("ABLO_CHROMIUM") or shutil.which("chromium")
    try:
        import playwright  # noqa: F401
    except ImportError:
        found = None
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install chromium (apt-get install chromium) and playwright")
        pytest.skip("no Chromium here: apt-get install chromium (and pip install -e '.[dev]')")
    return found


class Tasks(MemorySource):
    async def load(self, model: str, id: str, ctx: RequestContext) -> dict[str, Any] | None:
        import logging

        logging.getLogger("tests.tasks").warning("loading %s %s", model, id)
        return await super().load(model, id, ctx)


def _commit(correlation: str, id: str, title: str) -> dict[str, Any]:
    return {
        "type": "commit",
        "correlationId": correlation,
        "operations": [{"type": "CREATE", "model": "task", "id": id, "input": {"title": title}}],
    }


async def test_the_page_shows_requests_live_replays_them_and_keeps_secrets() -> None:
    chromium = _chromium()
    from playwright.async_api import async_playwright, expect

    source = Tasks()
    async with DevEngine(KEY) as engine:
        config = Config(
            api_key=KEY, base_url=engine.base_url, inspect_addr="127.0.0.1:0", inspect_replay=True
        )
        connector = Connector(config, source)
        serving = asyncio.create_task(connector.run())
        profile = tempfile.mkdtemp(prefix="ablo-inspector-browser-")
        try:
            await connector.wait_ready(10)
            assert connector.inspector is not None and connector.inspector.url is not None
            url = connector.inspector.url
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch_persistent_context(
                    profile,
                    executable_path=chromium,
                    args=CHROMIUM_FLAGS,
                    viewport={"width": 1400, "height": 860},
                )
                page = await browser.new_page()
                await page.goto(url)
                await page.wait_for_selector("body[data-live=true]")
                await expect(page.locator("#state-word")).to_have_text("ready")
                rows = page.locator("#rows tr")

                # Requests sent through the local engine appear as they happen.
                assert (await engine.request(_commit("c1", "t1", "Write the README"))).status == 200
                assert (
                    await engine.request({"type": "load", "model": "task", "id": "t1"})
                ).status == 200
                listed = {"type": "list", "model": "task", "query": {"where": [["title", "x"]]}}
                assert (await engine.request(listed)).status == 200
                await expect(rows).to_have_count(3)
                await expect(rows.nth(0)).to_contain_text("list")
                await expect(rows.nth(1)).to_contain_text("load")
                await expect(rows.nth(2)).to_contain_text("CREATE task t1")

                # The detail view shows the right bodies, pretty, and the log line.
                await rows.nth(1).click()
                await expect(page.locator("#detail-title")).to_contain_text("load task")
                await expect(page.locator("#request-body")).to_contain_text('"id": "t1"')
                await expect(page.locator("#answer-body")).to_contain_text(
                    '"title": "Write the README"'
                )
                await expect(page.locator("#logs")).to_contain_text("loading task t1")
                await expect(page.locator("#command")).to_have_text(
                    "ablo-connector request load task t1"
                )

                # A replay produces a new row, its answer beside the old one.
                await page.click("#replay")
                await expect(rows).to_have_count(4)
                await expect(rows.nth(0)).to_contain_text("replay of")
                await expect(page.locator("#replay-pane")).to_be_visible()
                await expect(page.locator("#replay-body")).to_contain_text("Write the README")

                # Edited: the answer for another id.
                await page.click("#edit")
                await page.fill(
                    "#edit-body", json.dumps({"type": "load", "model": "task", "id": "t404"})
                )
                await page.click("#send-edited")
                await expect(rows).to_have_count(5)
                await expect(page.locator("#replay-body")).to_contain_text('"row": null')

                # A commit replay is marked as a real write before it runs.
                await rows.filter(has_text="CREATE task t1").click()
                await expect(page.locator("#replay")).to_have_text("Replay (writes)")
                source.commits.clear()  # so that the replay writes, not replays
                source.rows.clear()
                await page.click("#replay")
                await expect(page.locator("#write-warning")).to_be_visible()
                await expect(rows).to_have_count(5)  # nothing ran yet
                assert source.rows == {}
                await page.click("#confirm-write")
                await expect(rows).to_have_count(6)
                assert ("task", "t1") in source.rows

                # A bad signature shows its exact code.
                text = json.dumps({"type": "load", "model": "task", "id": "t1"})
                headers = engine.sign("msg_bad", text)
                headers["webhook-signature"] = "v1," + "B" * 43 + "="
                bad = RequestFrame(id="bad_1", method="POST", url="u", headers=headers, body=text)
                answer = await engine.exchange(bad, "bad_1")
                assert isinstance(answer, ResponseFrame) and answer.status == 401
                await expect(rows.nth(0)).to_contain_text("source_signature_invalid")

                # Filters, and the pause button.
                await page.select_option("#filter-operation", "commit")
                await expect(page.locator("#rows tr:not([hidden])")).to_have_count(2)
                await page.select_option("#filter-operation", "")
                await page.click("#pause")
                await engine.request({"type": "events"})
                await expect(page.locator("#held")).to_have_text("1 new while paused")
                await expect(rows).to_have_count(7)
                await page.click("#pause")
                await expect(rows).to_have_count(8)
                await expect(rows.nth(0)).to_contain_text("events")

                # Nothing secret in the page.
                await rows.filter(has_text="replay of").first.click()
                await expect(page.locator("#detail-title")).to_contain_text("replay_")
                html = await page.content()
                assert KEY not in html
                signature = engine.sign("msg_x", text)["webhook-signature"]
                assert signature[3:20] not in html

                # The screenshot: the list, a load's detail and its replay beside it.
                await rows.filter(has_text="t1").filter(has_text="load").last.click()
                await page.click("#replay")
                await expect(page.locator("#replay-pane")).to_be_visible()
                SCREENSHOT.parent.mkdir(exist_ok=True)
                # Written whole, then moved in place: CI runs the suite twice at
                # once (two websockets versions), and both take this picture.
                taken = SCREENSHOT.with_name(f".{os.getpid()}.{SCREENSHOT.name}")
                await page.screenshot(path=str(taken))
                os.replace(taken, SCREENSHOT)
                print(f"\nscreenshot of the inspector: {SCREENSHOT}")
                if os.environ.get("ABLO_UPDATE_README_SCREENSHOT"):
                    shutil.copyfile(SCREENSHOT, REPO / "docs" / "inspector.png")
                await browser.close()
        finally:
            connector.stop()
            await asyncio.wait_for(serving, 15)
            shutil.rmtree(profile, ignore_errors=True)
