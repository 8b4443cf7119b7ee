"""The runs page in a real browser: the list, its filters in the URL, paging, and live status changes."""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Any

import pytest
from playwright.async_api import Locator, Page, expect

from dagrun.contract.states import RunStatus
from dagrun.engine.control import new_run_id, new_run_record
from dagrun.flow.parser import parse_flow
from tests.ui.conftest import WAIT_MS, Dashboard

pytestmark = pytest.mark.browser

QUICK: dict[str, Any] = {"name": "quick", "steps": [{"id": "add", "script": "outputs['n'] = 1 + 1"}]}
# A run that stays running until it is signalled: its first step waits, its second has not started.
APPROVAL: dict[str, Any] = {
    "name": "approval",
    "steps": [
        {"id": "approve", "wait_for": {"fields": ["ok"]}},
        {"id": "ship", "depends_on": ["approve"], "script": "outputs['shipped'] = inputs['ok']",
         "inputs": {"ok": "${steps.approve.ok}"}},
    ],
}  # fmt: skip


async def at_url(page: Page, path_and_query: str) -> None:
    """The page shows `path_and_query` in its address bar (the filters replace it, navigating nowhere)."""
    await expect(page).to_have_url(re.compile(re.escape(path_and_query) + "$"))


def rows(page: Page) -> Locator:
    return page.locator("table.runs tbody tr")


def row(page: Page, run_id: str) -> Locator:
    return page.locator(f'table.runs tbody tr[data-run-id="{run_id}"]')


async def ended_and_waiting_runs(dashboard: Dashboard) -> tuple[str, str]:
    """A run of QUICK that has succeeded, then a run of APPROVAL that waits for its signal."""
    ended = await dashboard.submit(QUICK)
    await dashboard.until_ended(ended)
    return ended, await dashboard.submit(APPROVAL)


async def test_runs_are_listed_newest_first_with_status_badges_and_step_counts(dashboard: Dashboard) -> None:
    page = dashboard.page
    await expect(page.get_by_text("No runs yet")).to_be_visible()

    ended, waiting = await ended_and_waiting_runs(dashboard)
    await page.reload()
    await expect(rows(page)).to_have_count(2)
    await expect(rows(page).first).to_have_attribute("data-run-id", waiting)
    await expect(rows(page).first.locator(".badge")).to_have_attribute("data-status", "running", timeout=WAIT_MS)
    await expect(rows(page).first.locator('.chip[data-status="waiting"]')).to_have_text("1", timeout=WAIT_MS)
    await expect(rows(page).first.locator('.chip[data-status="pending"]')).to_have_text("1")
    link = rows(page).first.get_by_role("link", name=waiting)
    await expect(link).to_have_attribute("href", f"/ui/runs/{waiting}")

    done = row(page, ended)
    await expect(done.locator(".badge")).to_have_attribute("data-status", "succeeded")
    await expect(done.locator('.chip[data-status="succeeded"]')).to_have_text("1")
    await expect(done.locator("td").nth(1)).to_have_text("quick")
    await expect(page.get_by_text("No runs yet")).to_be_hidden()


async def test_filters_by_status_and_id_prefix_land_in_the_url_and_survive_a_reload(dashboard: Dashboard) -> None:
    page = dashboard.page
    ended, waiting = await ended_and_waiting_runs(dashboard)
    await page.reload()
    await expect(rows(page)).to_have_count(2)

    await page.get_by_label("Status").select_option("succeeded")
    await at_url(page, "/ui/runs?status=succeeded")
    await expect(rows(page)).to_have_count(1)
    await expect(rows(page).first).to_have_attribute("data-run-id", ended)

    await page.get_by_label("Status").select_option("")
    prefix = waiting[:-3]  # the ids share their date and time, not their random part
    await page.get_by_label("Run id").fill(prefix)
    await at_url(page, f"/ui/runs?id={prefix}")
    await expect(rows(page)).to_have_count(1)
    await expect(rows(page).first).to_have_attribute("data-run-id", waiting)

    await page.reload()
    await expect(page.get_by_label("Run id")).to_have_value(prefix)
    await expect(rows(page)).to_have_count(1)
    await expect(rows(page).first).to_have_attribute("data-run-id", waiting)

    await page.get_by_label("Flow").fill("no such flow")
    await at_url(page, f"/ui/runs?flow=no+such+flow&id={prefix}")
    await expect(page.get_by_text("No runs match these filters")).to_be_visible()


async def record_ended_run(dashboard: Dashboard, run_id: str, created_at: float, **fields: Any) -> None:
    """A run of QUICK recorded as succeeded (so no orchestrator drives it), with `fields` of its record."""
    record = new_run_record(run_id, parse_flow(QUICK), {})
    ended = dataclasses.replace(
        record, status=RunStatus.SUCCEEDED, created_at=created_at, started_at=created_at,
        finished_at=created_at + 0.5, **fields,
    )  # fmt: skip
    await dashboard.store.create_run(ended, ["add"])


async def test_reruns_and_child_runs_name_the_run_they_come_from(dashboard: Dashboard) -> None:
    origin, rerun, child = new_run_id(), new_run_id(), f"{new_run_id()}.etl"
    await record_ended_run(dashboard, origin, time.time() - 3)
    await record_ended_run(dashboard, rerun, time.time() - 2, rerun_of=origin)
    await record_ended_run(dashboard, child, time.time() - 1, parent=f"{origin}/etl")
    page = dashboard.page
    await page.reload()
    await expect(rows(page)).to_have_count(3)

    rerun_mark = row(page, rerun).locator(".run-mark")
    await expect(rerun_mark).to_have_text(f"rerun of {origin}")
    await expect(rerun_mark.get_by_role("link")).to_have_attribute("href", f"/ui/runs/{origin}")
    child_mark = row(page, child).locator(".run-mark")
    await expect(child_mark).to_have_text(f"child run of {origin}/etl")
    await expect(child_mark.get_by_role("link")).to_have_attribute("href", f"/ui/runs/{origin}")
    await expect(row(page, origin).locator(".run-mark")).to_have_count(0)


async def test_paging_shows_the_next_page_of_many_runs(dashboard: Dashboard) -> None:
    created = time.time() - 1000
    run_ids = [new_run_id() for _ in range(120)]
    for index, run_id in enumerate(run_ids):  # oldest first
        await record_ended_run(dashboard, run_id, created + index)
    newest_first = run_ids[::-1]
    page = dashboard.page
    await page.reload()
    await expect(rows(page)).to_have_count(50)
    await expect(rows(page).first).to_have_attribute("data-run-id", newest_first[0])
    await expect(page.get_by_role("button", name="Previous")).to_be_disabled()

    await page.get_by_role("button", name="Next").click()
    await at_url(page, "/ui/runs?page=2")
    await expect(rows(page).first).to_have_attribute("data-run-id", newest_first[50])
    await expect(rows(page).last).to_have_attribute("data-run-id", newest_first[99])
    await expect(page.get_by_text("runs 51\N{EN DASH}100")).to_be_visible()

    await page.get_by_role("button", name="Next").click()
    await at_url(page, "/ui/runs?page=3")
    await expect(rows(page)).to_have_count(20)
    await expect(rows(page).last).to_have_attribute("data-run-id", newest_first[119])
    await expect(page.get_by_role("button", name="Next")).to_be_disabled()

    await page.get_by_role("button", name="Previous").click()
    await at_url(page, "/ui/runs?page=2")
    await expect(rows(page).first).to_have_attribute("data-run-id", newest_first[50])


async def test_a_status_change_shows_on_the_list_without_rebuilding_the_other_rows(dashboard: Dashboard) -> None:
    page = dashboard.page
    ended, waiting = await ended_and_waiting_runs(dashboard)
    await page.reload()
    badge = row(page, waiting).locator(".badge")
    await expect(badge).to_have_attribute("data-status", "running", timeout=WAIT_MS)
    duration = row(page, waiting).locator("td.duration")
    counted = await duration.text_content()
    await expect(duration).not_to_have_text(counted or "", timeout=WAIT_MS)  # it counts while the run runs
    await row(page, ended).evaluate("tr => { tr.keptSinceMarked = true; }")

    await dashboard.control.signal(waiting, "approve", {"ok": True})
    await expect(badge).to_have_attribute("data-status", "succeeded", timeout=WAIT_MS)
    await expect(row(page, waiting).locator('.chip[data-status="succeeded"]')).to_have_text("2")
    assert await row(page, ended).evaluate("tr => tr.keptSinceMarked === true")
