#!/usr/bin/env python3
"""The dashboard's run page on a 5,000-step run, in headless Chromium: how soon the graph shows, and how soon
the page shows 1,000 status changes after the store recorded them.

A real server (`ApiServer` with an in-process `Orchestrator`, two sandbox processes) over a SQLite store in a
temporary directory, and the distribution's chromium (DAGRUN_CHROMIUM overrides). The flow: a `wait_for` gate
over 50 layers of 100 script steps (each below one step of the layer above), 5,000 steps in all.

Each of `--repeat` runs: a new run is opened in a new page while it waits at its gate, and then let go.
- **first paint**: the ms from navigation start to the first frame after the graph's nodes are in the page.
- **1,000 changes**: for the run's 1,000th step success, the ms from the store recording it (the event's
  time) to the page's event stream bringing it, and from then to the page showing it (a MutationObserver on
  the nodes' data-status). Both clocks are this machine's; the server, the orchestrator running the steps,
  its two sandbox processes and the browser share its two cores.

    python benchmarks/bench_ui.py
    python benchmarks/bench_ui.py --repeat 10 --screenshot docs/run-page.png
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from playwright.async_api import Page, async_playwright  # noqa: E402

from dagrun.api import ApiServer, ApiSettings  # noqa: E402
from dagrun.engine.orchestrator import Orchestrator  # noqa: E402
from dagrun.flow.parser import parse_flow  # noqa: E402
from dagrun.sandbox.policy import check_script  # noqa: E402
from dagrun.store import open_store  # noqa: E402

LAYERS, WIDTH = 50, 100
CHANGES = 1000
WAIT_S = 120.0

# The frame after the graph's nodes are first in the document, in ms from navigation start.
DRAWN_AT = """
document.addEventListener("DOMContentLoaded", () => {
  const graph = document.getElementById("graph");
  new MutationObserver((_, observer) => {
    observer.disconnect();
    requestAnimationFrame(() => (window.graphDrawnAt = performance.now()));
  }).observe(graph, { childList: true });
});
"""

# Wall-clock time (ms) when the page's event stream brought its CHANGES-th step success.
COUNT_RECEIVED = """
window.successesReceived = 0;
const Original = window.EventSource;
window.EventSource = class extends Original {
  constructor(...args) {
    super(...args);
    this.addEventListener("step", (message) => {
      if (JSON.parse(message.data).status !== "succeeded") return;
      window.successesReceived += 1;
      if (window.successesReceived === %d) window.successReceivedAt = Date.now();
    });
  }
};
"""

# Wall-clock time (ms) when the page showed its CHANGES-th succeeded node.
COUNT_SUCCESSES = """
(changes) => {
  let shown = 0;
  new MutationObserver((mutations) => {
    for (const mutation of mutations) {
      if (mutation.target.dataset.status !== "succeeded" || mutation.oldValue === "succeeded") continue;
      shown += 1;
      if (shown === changes) window.successShownAt = Date.now();
    }
  }).observe(document.getElementById("graph"), {
    subtree: true, attributes: true, attributeFilter: ["data-status"], attributeOldValue: true,
  });
}
"""


def big_flow() -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"id": "gate", "wait_for": {"fields": ["go"]}}]
    for index in range(1, LAYERS * WIDTH):
        above = "gate" if index <= WIDTH else f"s{index - WIDTH}"
        steps.append({"id": f"s{index}", "depends_on": [above], "script": "outputs['x'] = 1"})
    return {"name": "big", "steps": steps}


def chromium() -> str:
    found = os.environ.get("DAGRUN_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        sys.exit("no chromium: apt-get install chromium, or set DAGRUN_CHROMIUM")
    return found


async def sign_in(page: Page, token: str) -> None:
    await page.goto("/ui/login")
    await page.get_by_label("API token").fill(token)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url("**/ui/runs")


async def bench(repeat: int, screenshot: Path | None) -> None:
    token = secrets.token_hex(16)
    with tempfile.TemporaryDirectory() as tmp:
        async with open_store(str(Path(tmp) / "dagrun.db")) as store, Orchestrator(store, processes=2) as orch:
            halt = asyncio.Event()
            serving = asyncio.create_task(orch.serve(halt))
            settings = ApiSettings(port=0)
            async with (
                ApiServer(orch.control, token=token, orchestrator=orch, settings=settings) as server,
                async_playwright() as playwright,
            ):
                browser = await playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
                context = await browser.new_context(base_url=server.url, viewport={"width": 1400, "height": 900})
                await sign_in(await context.new_page(), token)
                found = [await measure_once(context, orch) for _ in range(repeat)]
                if screenshot is not None:
                    await shoot(context, orch, screenshot)
                await browser.close()
            halt.set()
            await serving
    paints, streamed, drawn = (sorted(column) for column in zip(*found, strict=True))
    print(f"run page of a {LAYERS * WIDTH}-step run, headless Chromium: median (min-max) of {repeat} runs")
    print(f"  graph first paint: {spread(paints)} ms from navigation start")
    print(f"  {CHANGES} status changes, the {CHANGES}th: reached the page {spread(streamed)} ms after the store")
    print(f"    recorded it, and was shown {spread(drawn)} ms after that")


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})"


async def measure_once(context: Any, orch: Orchestrator) -> tuple[float, float, float]:
    """A new 5,000-step run opened while it waits at its gate, then let go: the ms from navigation start to
    the graph's first paint; for its CHANGES-th step success, the ms from the store recording it to the page's
    event stream bringing it, and from then to the page showing it."""
    run_id = await orch.control.submit(parse_flow(big_flow(), check_script=check_script))
    async with asyncio.timeout(WAIT_S):
        async for event in orch.control.follow_events(run_id):
            if event.step_id == "gate" and event.status == "waiting":
                break
    page = await context.new_page()
    await page.add_init_script(DRAWN_AT)
    await page.add_init_script(COUNT_RECEIVED % CHANGES)
    await page.goto(f"/ui/runs/{run_id}")
    await page.wait_for_function("() => window.graphDrawnAt !== undefined", timeout=WAIT_S * 1000)
    await page.wait_for_selector('#graph .node[data-step-id="gate"][data-status="waiting"]', timeout=WAIT_S * 1000)
    await page.evaluate(COUNT_SUCCESSES, CHANGES)
    await orch.control.signal(run_id, "gate", {"go": True})
    await page.wait_for_function("() => window.successShownAt !== undefined", timeout=WAIT_S * 1000)
    paint, received, shown = await page.evaluate(
        "[window.graphDrawnAt, window.successReceivedAt, window.successShownAt]"
    )
    async with asyncio.timeout(WAIT_S):
        await orch.control.wait_for_completion(run_id)
    events = await orch.store.get_events(run_id)
    recorded = [event.at for event in events if event.kind == "step" and event.status == "succeeded"][CHANGES - 1]
    await page.close()
    return paint, received - recorded * 1000, shown - received


async def shoot(context: Any, orch: Orchestrator, path: Path) -> None:
    """The README's picture: the run page of a real run of flows/etl.json, its first step's panel open."""
    from dagrun.flow.loader import load_flow

    run_id = await orch.control.submit(load_flow(ROOT / "flows" / "etl.json", check_script=check_script))
    async with asyncio.timeout(WAIT_S):
        await orch.control.wait_for_completion(run_id)
    page = await context.new_page()
    await page.goto(f"/ui/runs/{run_id}")
    await page.locator('#graph .node[data-step-id="extract"]').click()
    await page.get_by_role("dialog").locator("pre.log").first.wait_for()
    await page.get_by_role("button", name="Fit").click()  # the graph beside the panel, whole
    path.parent.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(path))
    await page.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="page loads to time (default 5)")
    parser.add_argument("--screenshot", type=Path, help="also write the README's run page picture here")
    args = parser.parse_args()
    started = time.perf_counter()
    asyncio.run(bench(args.repeat, args.screenshot))
    print(f"  (benchmark took {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
