// One live worker as a row of its executor's table: who and where it is, the contexts it serves, the steps
// it runs now (links to their runs), what it has done, and how long ago it last said it was alive.

import { el } from "./common.js";
import { timeSince } from "./live_times.js";

export function workerRow(worker) {
  return el(
    "tr",
    { dataset: { workerId: worker.worker_id } },
    el("td", { class: "mono" }, worker.worker_id),
    el("td", {}, `${worker.host} (pid ${worker.pid})`),
    el("td", {}, worker.contexts.join(", ")),
    el("td", {}, currentSteps(worker.current)),
    el("td", { class: "number" }, String(worker.steps_done)),
    el("td", { class: "number" }, String(worker.errors)),
    el("td", { class: "number heartbeat" }, timeSince(worker.heartbeat_at, "seconds")),
    el("td", { class: "nowrap" }, timeSince(worker.started_at)),
  );
}

// "RUN/STEP#ATTEMPT" each, linked to the run.
function currentSteps(current) {
  if (!current.length) return el("span", { class: "muted" }, "idle");
  return current.map((step) =>
    el("div", {}, el("a", { class: "mono", href: `/ui/runs/${encodeURIComponent(step.split("/")[0])}` }, step)),
  );
}
