// The run page's header: what the run is (flow, times, who drives it, where it came from), its status
// badge, and how many of its steps are in each state. Small and of fixed size, so it is redrawn whole.

import { el, formatDuration, formatTime, runDuration } from "./common.js";

const STATE_ORDER = [
  "running", "queued", "waiting", "ready", "pending", "succeeded", "reused", "failed", "skipped", "cancelled",
];

export class RunHeader {
  constructor(root, model) {
    this.model = model;
    this.badge = root.querySelector("#run-status-badge");
    this.facts = root.querySelector("#run-facts");
    this.counts = root.querySelector("#step-counts");
  }

  showRun() {
    const run = this.model.run;
    this.badge.dataset.status = run.status;
    this.badge.textContent = run.status;
    this.facts.replaceChildren(
      ...fact("Flow", run.flow),
      ...fact("Created", formatTime(run.created_at)),
      ...fact("Started", formatTime(run.started_at)),
      ...fact("Finished", formatTime(run.finished_at)),
      ...fact("Duration", formatDuration(runDuration(run))),
      ...fact("Driver", run.driver),
      ...fact("Rerun of", run.rerun_of && runLink(run.rerun_of)),
      ...fact("Parent", run.parent && parentLink(run.run_id, run.parent)),
      ...fact("Error", run.error && el("span", { class: "problem" }, run.error)),
    );
  }

  showCounts() {
    const counts = [...this.model.counts].filter(([, count]) => count > 0);
    counts.sort(([a], [b]) => STATE_ORDER.indexOf(a) - STATE_ORDER.indexOf(b));
    this.counts.replaceChildren(
      ...counts.map(([status, count]) => el("span", { class: "badge", "data-status": status }, `${count} ${status}`)),
    );
  }
}

function fact(name, value) {
  if (value === null || value === undefined || value === "") return [];
  return [el("dt", {}, name), el("dd", {}, value)];
}

export function runLink(runId, text = runId) {
  return el("a", { href: `/ui/runs/${encodeURIComponent(runId)}`, class: "mono" }, text);
}

// A child run's `parent` is "RUN/STEP" and its id "RUN.STEP": they differ only where the parent's id ends.
function parentLink(runId, parent) {
  let end = 0;
  while (end < parent.length && parent[end] === runId[end]) end += 1;
  return el("span", {}, runLink(parent.slice(0, end)), ` step ${parent.slice(end + 1)}`);
}
