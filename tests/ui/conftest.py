"""Fixtures for the dashboard's browser tests: a real ApiServer (with an in-process Orchestrator, so runs
really run) over a SQLite store on 127.0.0.1, and a headless Chromium from the distribution's packages
(Playwright's own browser download is not reachable here), signed in through the login form.

Every page the browser loads is watched: a request to anything but the server, or an error on the
console, fails the test at teardown (`Dashboard.check_clean`), so each test checks both.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, Request, async_playwright

from dagrun.api import ApiServer, ApiSettings
from dagrun.engine.control import RunControl
from dagrun.engine.orchestrator import Orchestrator
from dagrun.flow.parser import parse_flow
from dagrun.sandbox.policy import check_script
from dagrun.store import Store, open_store

pytestmark = pytest.mark.browser

WAIT_MS = 15_000  # for the page to show what a run did: far above what it takes


def chromium_path() -> str:
    """The distribution's chromium (DAGRUN_CHROMIUM overrides); the tests fail, not skip, without one."""
    found = os.environ.get("DAGRUN_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("no chromium: install the distribution's package (bash .ci/test.sh does) or set DAGRUN_CHROMIUM")
    return found


async def launch_chromium(playwright: Any) -> Browser:
    browser: Browser = await playwright.chromium.launch(
        executable_path=chromium_path(), args=["--no-sandbox", "--disable-dev-shm-usage"], timeout=WAIT_MS
    )
    return browser


@dataclass
class Dashboard:
    """A served dashboard and a signed-in browser page on it."""

    url: str
    token: str
    store: Store
    control: RunControl
    browser: Browser
    page: Page
    console_errors: list[str] = field(default_factory=list)
    foreign_requests: list[str] = field(default_factory=list)

    async def new_page(self, *, signed_in: bool = True) -> Page:
        """Another page, in a context of its own (its own cookies), watched like the first."""
        context = await self.browser.new_context(base_url=self.url)
        page = await context.new_page()
        self.watch(page)
        if signed_in:
            await sign_in(page, self.token)
        return page

    def watch(self, page: Page) -> None:
        def on_console(message: ConsoleMessage) -> None:
            if message.type == "error":
                self.console_errors.append(f"{page.url}: {message.text}")

        def on_request(request: Request) -> None:
            if not (request.url.startswith(self.url) or request.url.startswith(("data:", "about:"))):
                self.foreign_requests.append(request.url)

        page.on("console", on_console)
        page.on("pageerror", lambda error: self.console_errors.append(f"{page.url}: {error}"))
        page.on("request", on_request)

    async def submit(self, flow: dict[str, Any], inputs: dict[str, Any] | None = None) -> str:
        parsed = parse_flow(flow, check_script=check_script)
        return await self.control.submit(parsed, inputs=inputs)

    async def until_ended(self, run_id: str) -> None:
        async with asyncio.timeout(WAIT_MS / 1000):
            await self.control.wait_for_completion(run_id)

    def check_clean(self) -> None:
        assert not self.foreign_requests, f"pages loaded from outside the server: {self.foreign_requests}"
        assert not self.console_errors, f"the browser console has errors: {self.console_errors}"


async def sign_in(page: Page, token: str, next_path: str = "/ui/runs") -> None:
    await page.goto(f"/ui/login?next={next_path}")
    await page.get_by_label("API token").fill(token)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(f"**{next_path}")


@pytest.fixture
async def dashboard(tmp_path: Path) -> AsyncIterator[Dashboard]:
    token = "ui-" + secrets.token_hex(16)
    async with contextlib.AsyncExitStack() as stack:
        store = await stack.enter_async_context(open_store(str(tmp_path / "dagrun.db")))
        orchestrator = await stack.enter_async_context(Orchestrator(store, processes=1))
        halt = asyncio.Event()
        serving = asyncio.create_task(orchestrator.serve(halt))

        async def stop_serving() -> None:
            halt.set()
            await serving

        stack.push_async_callback(stop_serving)
        settings = ApiSettings(port=0, keepalive_s=0.5)
        server = await stack.enter_async_context(
            ApiServer(orchestrator.control, token=token, orchestrator=orchestrator, settings=settings)
        )
        playwright = await stack.enter_async_context(async_playwright())
        browser = await launch_chromium(playwright)
        stack.push_async_callback(browser.close)
        context = await browser.new_context(base_url=server.url)
        context.set_default_timeout(WAIT_MS)
        page = await context.new_page()
        made = Dashboard(server.url, token, store, orchestrator.control, browser, page)
        made.watch(page)
        await sign_in(page, token)
        yield made
        made.check_clean()
