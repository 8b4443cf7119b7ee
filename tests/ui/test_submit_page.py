"""The submit page in a real browser: a flow checked as it is typed, its inputs, and the run it starts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from playwright.async_api import Locator, Page, expect

from dagrun.contract.states import RunStatus
from tests.ui.conftest import Dashboard

pytestmark = pytest.mark.browser

FLOWS = Path(__file__).resolve().parents[2] / "flows"
GREETING = {
    "name": "greeting",
    "inputs": {"who": "you", "times": 1},
    "steps": [{"id": "greet", "script": "outputs['text'] = ('hello ' + inputs['who']) * inputs['times']",
               "inputs": {"who": "${flow.who}", "times": "${flow.times}"}}],
}  # fmt: skip
BROKEN = {
    "name": "greeting",
    "steps": [{"id": "greet", "depends_on": ["nobody"], "script": "outputs['text'] = ("}],
}
BROKEN_YAML = "name: greeting\nsteps:\n  - id: greet\n    depends_on: [nobody]\n    script: outputs['text'] = 1\n"


def problems(page: Page) -> Locator:
    return page.get_by_role("list", name="problems").get_by_role("listitem")


async def open_with(page: Page, flow_text: str) -> None:
    await page.goto("/ui/submit")
    await page.get_by_label("Flow (JSON or YAML)").fill(flow_text)


async def test_problems_show_with_their_places_and_a_fixed_flow_starts_its_run(dashboard: Dashboard) -> None:
    page = dashboard.page
    await open_with(page, json.dumps(BROKEN))
    await expect(problems(page)).to_have_text(
        [
            "steps[0].depends_on[0]: step 'greet' depends on unknown step 'nobody'",
            re.compile(r"^steps\[0\]\.script \(step 'greet'\): line 1: SyntaxError: "),
        ]
    )
    await expect(page.get_by_label("Format")).to_have_value("json")
    await expect(page.get_by_role("button", name="Start run")).to_be_disabled()
    await expect(page.get_by_role("group", name="Inputs")).to_be_hidden()

    await page.get_by_label("Flow (JSON or YAML)").fill(json.dumps(GREETING, indent=2))
    await expect(page.get_by_role("status")).to_have_text("valid flow 'greeting' with 1 steps")
    await expect(problems(page)).to_have_count(0)
    await expect(page.get_by_label("who")).to_have_value('"you"')
    await expect(page.get_by_label("times")).to_have_value("1")
    await page.get_by_label("who").fill("world")  # not JSON: sent as the text it is
    await page.get_by_label("times").fill("2")
    await page.get_by_role("button", name="Start run").click()

    await page.wait_for_url(re.compile(r"/ui/runs/[^/?]+$"))
    run_id = page.url.rsplit("/", 1)[1]
    await dashboard.until_ended(run_id)
    view = await dashboard.control.status(run_id)
    assert view.run.status == RunStatus.SUCCEEDED
    assert view.run.inputs == {"who": "world", "times": 2}
    assert view.steps[0].outputs == {"text": "hello worldhello world"}


async def test_yaml_problems_name_their_lines(dashboard: Dashboard) -> None:
    page = dashboard.page
    await open_with(page, BROKEN_YAML)
    await expect(page.get_by_label("Format")).to_have_value("yaml")
    await expect(problems(page)).to_have_text(
        ["line 4, steps[0].depends_on[0]: step 'greet' depends on unknown step 'nobody'"]
    )


async def test_an_uploaded_yaml_file_is_checked_and_its_inputs_offered(dashboard: Dashboard) -> None:
    page = dashboard.page
    await open_with(page, json.dumps(BROKEN))
    await expect(problems(page)).to_have_count(2)

    await page.get_by_label("or upload a file").set_input_files(FLOWS / "etl.yaml")
    await expect(page.get_by_label("Format")).to_have_value("yaml")
    await expect(page.get_by_label("Flow (JSON or YAML)")).to_have_value((FLOWS / "etl.yaml").read_text())
    await expect(page.get_by_role("status")).to_have_text("valid flow 'etl' with 5 steps")
    await expect(page.get_by_label("region")).to_have_value('"eu"')
    await expect(page.get_by_label("rows")).to_have_value("30")
    await expect(page.get_by_role("button", name="Start run")).to_be_enabled()


async def test_a_run_the_server_refuses_shows_its_problems(dashboard: Dashboard) -> None:
    page = dashboard.page
    await open_with(page, json.dumps(GREETING))
    await page.get_by_label("who").fill("[" * 80 + "]" * 80)  # nested deeper than an input may be
    await page.get_by_role("button", name="Start run").click()

    await expect(page.get_by_role("alert").filter(has_text="The server refused the run")).to_be_visible()
    refused = page.get_by_role("list", name="why the run was refused").get_by_role("listitem")
    await expect(refused).to_have_count(1)
    await expect(refused).to_have_text(re.compile(r"^inputs\.who.*: .*deep"))
    assert page.url.endswith("/ui/submit")
    # The browser itself reports the refused request on the console: that line, and no other, is expected.
    dashboard.console_errors[:] = [line for line in dashboard.console_errors if "status of 422" not in line]
