"""The workers page in a real browser: what a server without remote executors says, and the live workers
of a Redis executor (an in-process worker on the test run's redis-server)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import expect

from dagrun.api import ApiServer, ApiSettings
from dagrun.engine.orchestrator import Orchestrator
from tests.executors.conftest import Gate
from tests.executors.redis_support import TOKEN, RedisWorkers, remote_flow
from tests.ui.conftest import WAIT_MS, Dashboard, sign_in

pytestmark = pytest.mark.browser

ADD_EXECUTOR = "dagrun serve api --orchestrate --executor NAME=URL"


@contextlib.asynccontextmanager
async def another_server(dashboard: Dashboard, orchestrator: Orchestrator | None) -> AsyncIterator[Dashboard]:
    """A second API server on the dashboard's store, with `orchestrator` (None: it drives no runs), and a
    page signed in on its workers page, watched like the first."""
    settings = ApiSettings(port=0, keepalive_s=0.5)
    server = ApiServer(dashboard.control, token=dashboard.token, orchestrator=orchestrator, settings=settings)
    async with server:
        context = await dashboard.browser.new_context(base_url=server.url)
        context.set_default_timeout(WAIT_MS)
        try:
            page = await context.new_page()
            other = Dashboard(server.url, dashboard.token, dashboard.store, dashboard.control, dashboard.browser, page)
            other.watch(page)
            await sign_in(page, dashboard.token, "/ui/workers")
            yield other
            other.check_clean()
        finally:
            await context.close()


async def test_a_server_that_drives_no_runs_says_it_knows_no_executors(dashboard: Dashboard) -> None:
    async with another_server(dashboard, orchestrator=None) as other:
        notice = other.page.get_by_role("status")
        await expect(notice).to_contain_text("This server drives no runs, so it knows no executors")
        await expect(notice.locator("code")).to_have_text(ADD_EXECUTOR)


async def test_a_server_with_only_the_local_executor_says_how_to_add_one(dashboard: Dashboard) -> None:
    page = dashboard.page
    await page.goto("/ui/workers")
    notice = page.get_by_role("status")
    await expect(notice).to_contain_text("it has no executor with workers")
    await expect(notice.locator("code")).to_have_text(ADD_EXECUTOR)
    await expect(page.locator("section.executor")).to_have_count(0)


async def test_an_executor_shows_its_live_workers_and_says_how_to_start_one(
    dashboard: Dashboard, redis_url: str, tmp_path: Path
) -> None:
    async with (
        Orchestrator(dashboard.store, executors={"remote": redis_url}, token=TOKEN) as orchestrator,
        another_server(dashboard, orchestrator) as other,
    ):
        page = other.page
        section = page.locator('section.executor[data-executor="remote"]')
        await expect(section.get_by_role("heading")).to_have_text("remote 0 live workers")
        await expect(section.locator("code")).to_have_text("dagrun worker redis URL --token-file FILE --context C")
        await expect(page.get_by_role("status")).to_be_hidden()

        workers = RedisWorkers(redis_url, tmp_path)
        gate = Gate()
        try:
            await workers.start(contexts=("default", "gpu"), worker_id="ui-worker-1", functions=gate.functions())
            held = remote_flow({"id": "hold", "script": "outputs['r'] = wait_release()"})
            run_id = await orchestrator.start_run(held)
            await expect(section.get_by_role("heading")).to_have_text("remote 1 live worker", timeout=WAIT_MS)
            await expect(section.locator("code")).to_be_hidden()
            cells = section.locator('tr[data-worker-id="ui-worker-1"] td')
            await expect(cells.nth(2)).to_have_text("default, gpu")
            running = cells.nth(3).get_by_role("link", name=f"{run_id}/hold#1")
            await expect(running).to_have_attribute("href", f"/ui/runs/{run_id}", timeout=WAIT_MS)
            await expect(cells.nth(6)).to_have_text(re.compile(r"^\d s$"))  # seconds since its last heartbeat

            gate.release.set()
            assert (await dashboard.control.wait_for_completion(run_id)).status.value == "succeeded"
            await expect(cells.nth(3)).to_have_text("idle", timeout=WAIT_MS)
            await expect(cells.nth(4)).to_have_text("1")  # steps done
            await expect(cells.nth(5)).to_have_text("0")  # errors
        finally:
            await workers.close_all()
