// The run page (/ui/runs/ID): reads the run and its graph once, draws them, then follows the run's event
// stream, applying what came in each animation frame in one pass over the parts that show it. Nothing is
// laid out again while the run runs; the run is read again only when it ends (for its final fields).

import { api, describeError } from "./common.js";
import { loadEvents } from "./event_log.js";
import { RunGraph } from "./graph.js";
import { followEvents } from "./live_events.js";
import { RunActions } from "./run_actions.js";
import { showContext } from "./run_context.js";
import { RunHeader } from "./run_header.js";
import { RunModel } from "./run_model.js";
import { SignalForms } from "./signal_forms.js";
import { StepPanel } from "./step_panel.js";
import { Timeline } from "./timeline.js";

const CLOCK_MS = 1000; // how often a live run's duration is redrawn

class RunPage {
  constructor(root, model) {
    this.root = root;
    this.model = model;
    this.runPath = `/v1/runs/${encodeURIComponent(model.runId)}`;
    this.problem = root.querySelector("#action-problem");
    this.header = new RunHeader(root, model);
    this.actions = new RunActions(root, model);
    this.signals = new SignalForms(root.querySelector("#signals"), model);
    this.panel = new StepPanel(root, model);
    const select = (stepId) => this.panel.open(stepId);
    this.graph = new RunGraph(root.querySelector("#graph"), model, { onSelect: select });
    this.timeline = new Timeline(root.querySelector("#timeline"), model, { onSelect: select });
  }

  show() {
    this.#showRun();
    this.header.showCounts();
    this.signals.update();
    showContext(this.root, this.model.run);
    this.graph.panZoom.showInitial();
    this.#setUpControls();
    if (this.model.isTerminal) return;
    const clock = setInterval(() => (this.model.isTerminal ? clearInterval(clock) : this.header.showRun()), CLOCK_MS);
    followEvents(this.model.runId, this.model.lastSeq, {
      onBatch: (events) => this.#apply(events),
      onLost: () => (this.problem.textContent = "Live updates stopped: reload the page to catch up."),
    });
  }

  // A mapped step that started before the page opened told its item count in an event: find it in the log.
  async learnMapTotals() {
    if (!this.model.needsMapTotals) return;
    try {
      for (const event of await loadEvents(this.model.runId)) {
        if (this.model.learnMapTotal(event)) this.graph.refresh([event.step_id]);
      }
    } catch (error) {
      this.#complain(error);
    }
  }

  #apply(events) {
    const { changed, runChanged } = this.model.apply(events);
    this.graph.refresh(changed);
    this.panel.refresh(changed);
    this.signals.update(changed);
    this.timeline.apply(events);
    if (changed.size > 0) this.header.showCounts();
    if (runChanged) this.#showRun();
    if (runChanged && this.model.isTerminal) this.#readRun();
  }

  #showRun() {
    this.root.dataset.runStatus = this.model.run.status;
    this.header.showRun();
    this.actions.update();
  }

  // Read the run again: its context and, once it has ended, its final fields (finished_at, error).
  async #readRun() {
    try {
      this.model.takeSnapshot(await api(this.runPath));
      showContext(this.root, this.model.run);
      this.header.showRun();
    } catch (error) {
      this.#complain(error);
    }
  }

  #setUpControls() {
    const panZoom = this.graph.panZoom;
    this.root.querySelector("#graph-fit").addEventListener("click", () => panZoom.fit());
    this.root.querySelector("#graph-zoom-in").addEventListener("click", () => panZoom.zoomBy(1.25));
    this.root.querySelector("#graph-zoom-out").addEventListener("click", () => panZoom.zoomBy(0.8));
    const tabs = [...this.root.querySelectorAll('[role="tab"]')];
    for (const tab of tabs) {
      tab.addEventListener("click", () => {
        for (const other of tabs) {
          other.setAttribute("aria-selected", String(other === tab));
          document.getElementById(other.getAttribute("aria-controls")).hidden = other !== tab;
        }
        if (tab.id === "tab-timeline") this.timeline.show().catch((error) => this.#complain(error));
        if (tab.id === "tab-context" && !this.model.isTerminal) this.#readRun();
      });
    }
  }

  #complain(error) {
    this.problem.textContent = describeError(error);
  }
}

async function start() {
  const root = document.getElementById("run-page");
  const runPath = `/v1/runs/${encodeURIComponent(root.dataset.runId)}`;
  let page;
  try {
    const [run, graph] = await Promise.all([api(runPath), api(`${runPath}/graph`)]);
    page = new RunPage(root, new RunModel(run, graph));
  } catch (error) {
    root.querySelector("#action-problem").textContent = describeError(error);
    return;
  }
  page.show();
  await page.learnMapTotals();
}

start();
