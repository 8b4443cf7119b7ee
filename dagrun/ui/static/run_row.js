// One run as a row of the runs list: its id (a link to its page, with what it reruns or is a child run
// of), flow, status, when it was created, how long it ran (counting while it runs) and its steps per state.

import { el, formatDuration, formatTime, runDuration, statusBadge } from "./common.js";
import { timeSince } from "./live_times.js";

// The order of a run's step counts: done, under way, not started, then those that did not succeed.
const STEP_STATES = [
  "succeeded", "reused", "running", "queued", "waiting", "pending", "failed", "cancelled", "skipped",
];

export function runRow(run) {
  return el(
    "tr",
    { dataset: { runId: run.run_id } },
    el("td", {}, runLink(run.run_id, run.run_id), runMarks(run)),
    el("td", {}, run.flow),
    el("td", {}, statusBadge(run.status)),
    el("td", { class: "nowrap" }, formatTime(run.created_at)),
    el("td", { class: "nowrap duration" }, duration(run)),
    el("td", {}, stepChips(run.step_counts ?? {})),
  );
}

function runLink(runId, text) {
  return el("a", { class: "mono", href: `/ui/runs/${encodeURIComponent(runId)}` }, text);
}

function runMarks(run) {
  const marks = [];
  if (run.rerun_of) marks.push(el("div", { class: "run-mark" }, "rerun of ", runLink(run.rerun_of, run.rerun_of)));
  if (run.parent) {
    // "RUN/STEP": the sub-flow step of run RUN that this child run runs for.
    marks.push(el("div", { class: "run-mark" }, "child run of ", runLink(run.parent.split("/")[0], run.parent)));
  }
  return marks;
}

function duration(run) {
  if (run.started_at && !run.finished_at) return timeSince(run.started_at);
  return formatDuration(runDuration(run));
}

function stepChips(counts) {
  const rank = (state) => (STEP_STATES.includes(state) ? STEP_STATES.indexOf(state) : STEP_STATES.length);
  const states = Object.keys(counts).sort((a, b) => rank(a) - rank(b));
  return el(
    "span",
    { class: "step-counts" },
    states.map((state) => {
      const label = `${counts[state]} ${state}`;
      const attributes = { class: "chip", "data-status": state, title: label, "aria-label": label };
      return el("span", attributes, String(counts[state]));
    }),
  );
}
