"""The run page (/ui/runs/ID) in a real browser on real runs: its graph follows a run live, its buttons
command the run, its step panel shows what a step did, its timeline shows every attempt."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Locator, Page, expect

from tests.ui.conftest import WAIT_MS, Dashboard

pytestmark = pytest.mark.browser

FLOWS = Path(__file__).parents[2] / "flows"
FAILING = {
    "name": "failing",
    "steps": [
        {"id": "prepare", "script": "outputs['count'] = 0", "outputs": ["count"]},
        {
            "id": "divide",
            "depends_on": ["prepare"],
            "script": "log('dividing by', inputs['count'])\ntotal = 10\noutputs['mean'] = total / inputs['count']",
            "inputs": {"count": "${steps.prepare.count}"},
        },
        {"id": "publish", "depends_on": ["divide"], "script": "outputs['done'] = True"},
    ],
}


def example(name: str) -> dict[str, Any]:
    flow: dict[str, Any] = json.loads((FLOWS / name).read_text())
    return flow


def node(page: Page, step_id: str) -> Locator:
    return page.locator(f'#graph .node[data-step-id="{step_id}"]')


def fact(within: Locator, name: str) -> Locator:
    """The value of the fact `name` in a list of facts (the run's, or a step's)."""
    return within.locator(f"dt:text-is('{name}') + dd")


def run_page(page: Page) -> Locator:
    return page.locator("#run-page")


async def open_run(dashboard: Dashboard, run_id: str) -> Page:
    page = dashboard.page
    await page.goto(f"/ui/runs/{run_id}")
    await expect(run_page(page)).to_have_attribute("data-run-id", run_id)
    await expect(page.locator("#graph .node")).not_to_have_count(0)
    return page


async def test_nodes_follow_the_run_live_and_the_signal_form_completes_a_wait(dashboard: Dashboard) -> None:
    run_id = await dashboard.submit(example("approval.json"))
    page = await open_run(dashboard, run_id)
    await expect(node(page, "approve")).to_have_attribute("data-status", "waiting", timeout=WAIT_MS)
    await expect(node(page, "deploy")).to_have_attribute("data-status", "pending")
    await expect(node(page, "approve")).to_contain_text("waits for a signal: approved, comment")

    form = page.get_by_role("form", name="Signal approve")
    await form.get_by_label("approved").fill("true")
    await form.get_by_label("comment").fill("ship it")
    await form.get_by_role("button", name="Signal").click()

    for step_id in ("approve", "deploy", "report"):
        await expect(node(page, step_id)).to_have_attribute("data-status", "succeeded", timeout=WAIT_MS)
    await expect(run_page(page)).to_have_attribute("data-run-status", "succeeded")
    await expect(form).to_have_count(0)
    await expect(page.locator("#step-counts")).to_have_text("4 succeeded")
    view = await dashboard.control.status(run_id)
    outputs = {step.step_id: step.outputs for step in view.steps}
    assert outputs["approve"] == {"approved": True, "comment": "ship it"}  # JSON where it parses, else a string
    assert outputs["deploy"] == {"deployed": True}


async def test_a_failed_steps_panel_shows_its_error_source_line_and_logs(dashboard: Dashboard) -> None:
    run_id = await dashboard.submit(FAILING)
    await dashboard.until_ended(run_id)
    page = await open_run(dashboard, run_id)
    await expect(run_page(page)).to_have_attribute("data-run-status", "failed")
    await expect(node(page, "divide")).to_have_attribute("data-status", "failed")
    await expect(node(page, "publish")).to_have_attribute("data-status", "skipped")

    await node(page, "divide").click()
    panel = page.get_by_role("dialog", name="divide")
    await expect(panel.locator(".step-error")).to_contain_text("ZeroDivisionError: division by zero")
    await expect(panel.locator(".step-error")).to_contain_text("script line 3:")
    await expect(panel.locator("code.source-line")).to_have_text("outputs['mean'] = total / inputs['count']")
    await expect(panel.locator("pre.log")).to_have_text("dividing by 0\n")
    await expect(fact(panel, "Worker")).to_have_text(re.compile(r"\S"))
    await expect(fact(panel, "Queue wait")).to_have_text(re.compile(r"\d+ (ms|s)$"))

    await panel.get_by_role("button", name="Close").click()
    await expect(panel).to_be_hidden()


async def test_cancel_ends_a_waiting_run_cancelled(dashboard: Dashboard) -> None:
    run_id = await dashboard.submit(example("approval.json"))
    page = await open_run(dashboard, run_id)
    await expect(node(page, "approve")).to_have_attribute("data-status", "waiting", timeout=WAIT_MS)
    await expect(page.get_by_role("button", name="Rerun")).to_be_disabled()

    await page.get_by_role("button", name="Cancel").click()

    await expect(run_page(page)).to_have_attribute("data-run-status", "cancelled", timeout=WAIT_MS)
    await expect(node(page, "approve")).to_have_attribute("data-status", "cancelled")
    await expect(page.get_by_role("button", name="Cancel")).to_be_disabled()
    await expect(page.get_by_role("button", name="Pause")).to_be_disabled()
    await expect(page.get_by_role("button", name="Rerun")).to_be_enabled()
    await expect(fact(page.locator("#run-facts"), "Finished")).to_have_text(re.compile(r"\d"))


async def test_pause_and_resume(dashboard: Dashboard) -> None:
    run_id = await dashboard.submit(example("approval.json"))
    page = await open_run(dashboard, run_id)
    await expect(node(page, "approve")).to_have_attribute("data-status", "waiting", timeout=WAIT_MS)

    await page.get_by_role("button", name="Pause").click()
    await expect(run_page(page)).to_have_attribute("data-run-status", "paused", timeout=WAIT_MS)
    await expect(page.locator("#run-status-badge")).to_have_text("paused")
    await expect(page.get_by_role("button", name="Pause")).to_be_disabled()

    await page.get_by_role("button", name="Resume").click()
    await expect(run_page(page)).to_have_attribute("data-run-status", "running", timeout=WAIT_MS)
    await expect(page.get_by_role("button", name="Resume")).to_be_disabled()
    await expect(page.get_by_role("button", name="Pause")).to_be_enabled()
    await dashboard.control.cancel(run_id)  # ends it, so that nothing waits an hour for a signal


async def test_rerun_of_a_failed_run_opens_the_new_run(dashboard: Dashboard) -> None:
    run_id = await dashboard.submit(FAILING)
    await dashboard.until_ended(run_id)
    page = await open_run(dashboard, run_id)
    await expect(page.get_by_role("button", name="Cancel")).to_be_disabled()

    await page.get_by_role("button", name="Rerun").click()

    await expect(run_page(page)).not_to_have_attribute("data-run-id", run_id)
    new_run_id = await run_page(page).get_attribute("data-run-id")
    assert new_run_id is not None and page.url.endswith(f"/ui/runs/{new_run_id}")
    await expect(fact(page.locator("#run-facts"), "Rerun of").get_by_role("link")).to_have_text(run_id)
    await expect(node(page, "prepare")).to_have_attribute("data-status", "reused", timeout=WAIT_MS)
    await expect(run_page(page)).to_have_attribute("data-run-status", "failed", timeout=WAIT_MS)


async def test_a_mapped_step_shows_its_list_and_instance_progress(dashboard: Dashboard) -> None:
    flow = example("fan_out.json")
    flow["steps"].insert(0, {"id": "gate", "wait_for": {"fields": ["go"]}})
    flow["steps"][1]["depends_on"] = ["gate"]
    run_id = await dashboard.submit(flow)
    page = await open_run(dashboard, run_id)
    mapped = node(page, "count_words")
    await expect(mapped.locator(".node-detail")).to_have_text("map over ${steps.list_files.names}")
    await expect(node(page, "gate")).to_have_attribute("data-status", "waiting", timeout=WAIT_MS)
    await expect(mapped.locator(".node-progress")).to_have_text("")

    await dashboard.control.signal(run_id, "gate", {"go": True})
    await expect(mapped.locator(".node-progress")).to_have_text("3/3", timeout=WAIT_MS)  # live, from its events
    await expect(mapped).to_have_attribute("data-status", "succeeded")
    await page.reload()
    await expect(mapped.locator(".node-progress")).to_have_text("3/3")  # read back from the run

    await mapped.click()
    panel = page.get_by_role("dialog", name="count_words")
    instances = panel.locator(".instances li")
    await expect(instances).to_have_count(3)
    await expect(instances.nth(1)).to_have_text("count_words[1] succeeded")
    await instances.nth(1).get_by_role("button").click()
    instance = page.get_by_role("dialog", name="count_words[1]")
    await expect(fact(instance, "Attempts")).to_have_text("1")
    await expect(instance.locator("pre.log")).to_have_text("b.txt has 2 words\n")


async def test_a_map_stopped_by_a_failure_counts_the_items_it_never_started(dashboard: Dashboard) -> None:
    fails_first = {"over": "${flow.items}", "as": "item", "max_parallel": 1, "on_item_failure": "fail"}
    flow = {
        "name": "stops",
        "inputs": {"items": [0, 1, 2]},
        "steps": [{"id": "each", "map": fails_first, "script": "fail('no')"}],
    }
    run_id = await dashboard.submit(flow)
    await dashboard.until_ended(run_id)
    page = await open_run(dashboard, run_id)
    # one instance ran; the item count is in an event from before the page opened
    await expect(node(page, "each").locator(".node-progress")).to_have_text("1/3")
    await expect(node(page, "each")).to_have_attribute("data-status", "failed")


async def test_the_timeline_has_a_bar_per_attempt(dashboard: Dashboard) -> None:
    run_id = await dashboard.submit(example("retries.json"))
    await dashboard.until_ended(run_id)
    page = await open_run(dashboard, run_id)

    await page.get_by_role("tab", name="Timeline").click()

    bars = page.locator("#timeline .bar-row")
    await expect(bars).to_have_count(4)  # flaky: 3 attempts; after: 1
    labels = await bars.locator(".bar-label").all_text_contents()
    assert labels == ["flaky #1", "flaky #2", "flaky #3", "after #1"]
    await expect(bars.nth(0).locator(".bar-run")).to_have_attribute("data-status", "failed")
    await expect(bars.nth(2).locator(".bar-run")).to_have_attribute("data-status", "succeeded")
    await bars.nth(2).click()
    await expect(fact(page.get_by_role("dialog", name="flaky"), "Attempts")).to_have_text("3")


async def test_a_5000_step_run_opens_and_follows_a_cancel_of_every_step(dashboard: Dashboard) -> None:
    """How fast it opens is benchmarks/bench_ui.py's to measure; this checks that it opens whole and keeps up."""
    steps: list[dict[str, Any]] = [{"id": "gate", "wait_for": {"fields": ["go"]}}]
    for index in range(1, 5000):  # 50 layers of 100 under the gate, each step below one of the layer above
        above = "gate" if index <= 100 else f"s{index - 100}"
        steps.append({"id": f"s{index}", "depends_on": [above], "script": "outputs['x'] = 1"})
    run_id = await dashboard.submit({"name": "big", "steps": steps})
    page = await open_run(dashboard, run_id)
    await expect(page.locator("#graph .node")).to_have_count(5000)
    await expect(node(page, "gate")).to_have_attribute("data-status", "waiting", timeout=WAIT_MS)

    await node(page, "s150").click()
    await expect(page.get_by_role("dialog", name="s150")).to_contain_text("pending")
    await page.get_by_role("button", name="Cancel").click()
    await expect(run_page(page)).to_have_attribute("data-run-status", "cancelled", timeout=WAIT_MS)
    await expect(page.locator("#step-counts")).to_have_text("5000 cancelled")
    await expect(node(page, "s4999")).to_have_attribute("data-status", "cancelled")
    await expect(page.get_by_role("dialog", name="s150").locator(".step-status")).to_contain_text("cancelled")


async def test_a_sub_flow_node_links_to_its_child_run_and_a_conditional_one_shows_its_condition(
    dashboard: Dashboard,
) -> None:
    inner = {"name": "inner", "steps": [{"id": "only", "script": "outputs['x'] = 1", "outputs": ["x"]}]}
    run_id = await dashboard.submit(
        {
            "name": "outer",
            "steps": [
                {"id": "first", "script": "outputs['n'] = 2", "outputs": ["n"]},
                {"id": "child", "depends_on": ["first"], "flow": inner},
                {"id": "maybe", "depends_on": ["first"], "when": "${steps.first.n} > 5", "script": "pass"},
            ],
        }
    )
    await dashboard.until_ended(run_id)
    page = await open_run(dashboard, run_id)
    await expect(node(page, "maybe")).to_have_attribute("data-status", "skipped")
    await expect(node(page, "maybe").locator(".node-detail")).to_have_text("when ${steps.first.n} > 5")

    await node(page, "child").get_by_role("link", name="child run").click()

    await expect(run_page(page)).to_have_attribute("data-run-id", f"{run_id}.child")
    await expect(node(page, "only")).to_have_attribute("data-status", "succeeded")
    await expect(fact(page.locator("#run-facts"), "Parent").get_by_role("link")).to_have_text(run_id)


async def test_a_steps_panel_shows_what_each_attempt_wrote_to_the_context(dashboard: Dashboard) -> None:
    run_id = await dashboard.submit(example("etl.json"))
    await dashboard.until_ended(run_id)
    page = await open_run(dashboard, run_id)

    await node(page, "extract").click()
    writes = page.get_by_role("dialog", name="extract").get_by_role("region", name="context writes")
    await expect(writes.get_by_role("row")).to_have_text(["OpKeyValue", "setextracted30"])
    await page.keyboard.press("Escape")
    await node(page, "load").click()  # it printed and wrote nothing: no section
    panel = page.get_by_role("dialog", name="load")
    await expect(panel).to_contain_text("It printed nothing.")
    await expect(panel.get_by_role("region", name="context writes")).to_have_count(0)


async def test_a_retried_steps_panel_lists_each_attempt_with_its_error(dashboard: Dashboard) -> None:
    script = "log('attempt', attempt)\nif attempt < 3:\n    raise ValueError('not yet %d' % attempt)"
    retried = {"id": "try", "retries": {"max_attempts": 3, "backoff_s": 0.01}, "script": script}
    run_id = await dashboard.submit({"name": "flaky", "steps": [retried]})
    await dashboard.until_ended(run_id)
    page = await open_run(dashboard, run_id)
    await node(page, "try").click()
    panel = page.get_by_role("dialog", name="try")
    await expect(panel.locator(".attempt-log")).to_have_count(3)
    errors = panel.locator(".attempt-log .step-error")
    await expect(errors).to_have_count(2)
    await expect(errors.nth(0)).to_contain_text("ValueError: not yet 1")
    await expect(errors.nth(1)).to_contain_text("ValueError: not yet 2")
    await expect(errors.nth(1).locator("code.source-line")).to_have_text("raise ValueError('not yet %d' % attempt)")
    await expect(panel.locator(".attempt-log pre.log").nth(2)).to_have_text("attempt 3\n")
