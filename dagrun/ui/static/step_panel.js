// The step panel: everything about one step (or one instance of a mapped step), opened from the graph or
// the timeline. Its state follows the run's events; its details (error with the script line, outputs,
// every attempt's logs and context writes, worker, timings) are read when it opens and again when the step ends.

import { api, describeError, el, formatDuration, formatTime, statusBadge } from "./common.js";
import { runLink } from "./run_header.js";
import { isTerminalStep, mappedStepOf } from "./run_model.js";

export class StepPanel {
  constructor(root, model) {
    this.model = model;
    this.panel = root.querySelector("#step-panel");
    this.title = root.querySelector("#step-panel-title");
    this.body = root.querySelector("#step-panel-body");
    this.stepId = null;
    this.shownStatus = null; // the state the details were read in
    this.instanceList = null; // a mapped step's list of instances, once shown
    this.instanceBadges = new Map(); // instance id -> its badge in that list
    root.querySelector("#step-panel-close").addEventListener("click", () => this.close());
    document.addEventListener("keydown", (event) => event.key === "Escape" && this.close());
  }

  async open(stepId) {
    this.stepId = stepId;
    this.shownStatus = this.model.status(stepId);
    this.instanceList = null;
    this.title.textContent = stepId;
    this.panel.hidden = false;
    this.body.replaceChildren(el("p", { class: "muted" }, "Loading…"));
    try {
      const details = await this.#details(stepId);
      if (this.stepId === stepId) this.body.replaceChildren(el("div", {}, this.#sections(stepId, details)));
    } catch (error) {
      if (this.stepId === stepId) this.body.replaceChildren(el("p", { class: "problem" }, describeError(error)));
    }
  }

  close() {
    this.stepId = null;
    this.panel.hidden = true;
  }

  // Follow the run's events: the shown step's state, its instances' states; its details again once it ends.
  refresh(changed) {
    if (this.stepId === null) return;
    for (const stepId of changed) {
      if (mappedStepOf(stepId) === this.stepId) this.#showInstance(stepId);
    }
    const status = this.model.status(this.stepId);
    if (!changed.has(this.stepId) || status === this.shownStatus) return;
    if (isTerminalStep(status)) {
      this.open(this.stepId);
      return;
    }
    this.shownStatus = status;
    const badge = this.body.querySelector(".step-status .badge");
    if (badge) badge.replaceWith(statusBadge(status));
  }

  async #details(stepId) {
    const run = `/v1/runs/${encodeURIComponent(this.model.runId)}`;
    const [record, logs] = await Promise.all([
      this.model.record(stepId),
      api(`${run}/logs?step=${encodeURIComponent(stepId)}`),
    ]);
    return { record, logs: logs.logs };
  }

  #sections(stepId, { record, logs }) {
    const mapped = mappedStepOf(stepId);
    const node = this.model.nodes.get(stepId) ?? this.model.nodes.get(mapped);
    const isMap = this.model.maps.has(stepId); // the mapped step itself runs nothing: its instances do
    const status = this.model.status(stepId);
    return [
      el("p", { class: "step-status" }, statusBadge(status), " ", node ? `${node.kind} step` : ""),
      mapped && el("p", {}, "Instance of ", this.#stepButton(mapped)),
      el("dl", { class: "step-facts" }, facts(this.model.runId, stepId, node, record)),
      record?.error && errorSection(record.error, lastSourceLine(logs, record)),
      node?.inputs && el("h3", {}, "Inputs (declared)"),
      node?.inputs && el("pre", { class: "json" }, JSON.stringify(node.inputs, null, 2)),
      el("h3", {}, "Outputs"),
      el("pre", { class: "json" }, JSON.stringify(record?.outputs ?? {}, null, 2)),
      ...(isMap ? this.#instancesSection(stepId) : logSections(logs, record, isTerminalStep(status))),
    ];
  }

  #instancesSection(stepId) {
    const list = el("ol", { class: "instances", start: 0 });
    this.instanceList = list;
    this.instanceBadges.clear();
    for (const instanceId of this.model.maps.get(stepId).instances) this.#showInstance(instanceId);
    return [el("h3", {}, "Instances"), list];
  }

  #showInstance(instanceId) {
    if (this.instanceList === null) return;
    const badge = statusBadge(this.model.status(instanceId));
    const shown = this.instanceBadges.get(instanceId);
    if (shown) shown.replaceWith(badge);
    else this.instanceList.append(el("li", {}, this.#stepButton(instanceId), " ", badge));
    this.instanceBadges.set(instanceId, badge);
  }

  #stepButton(stepId) {
    return el("button", { type: "button", class: "link mono", onclick: () => this.open(stepId) }, stepId);
  }
}

function facts(runId, stepId, node, record) {
  const queueWait = record?.queued_at && record?.started_at ? record.started_at - record.queued_at : null;
  const ranFor = record?.elapsed_ms ? record.elapsed_ms / 1000 : null;
  const isMapStep = node?.kind === "map" && !mappedStepOf(stepId); // not one of its instances
  const rows = [
    ["Attempts", isMapStep ? null : record?.attempts],
    ["Worker", record?.worker_id],
    ["Queued", formatTime(record?.queued_at)],
    ["Started", formatTime(record?.started_at)],
    ["Finished", formatTime(record?.finished_at)],
    ["Queue wait", formatDuration(queueWait)],
    ["Run time", formatDuration(ranFor)],
    ["Map over", isMapStep ? node.map_over : null],
    ["When", node?.when],
    ["Waits for", node?.wait_for?.join(", ")],
    ["Sub-flow", node?.kind === "flow" ? node.flow : null],
    ["Child run", node?.kind === "flow" && record?.started_at ? runLink(`${runId}.${stepId}`) : null],
  ];
  return rows
    .filter(([, value]) => value !== null && value !== undefined && value !== "")
    .flatMap(([name, value]) => [el("dt", {}, name), el("dd", {}, value)]);
}

// The script line the step's last attempt failed on, from that attempt's log (the API adds it).
function lastSourceLine(logs, record) {
  return logs.find((log) => log.attempt === record.attempts)?.source_line ?? null;
}

function errorSection(error, source) {
  const sourceLine = source ? el("code", { class: "source-line" }, source) : "";
  return el(
    "section",
    { class: "step-error", "aria-label": "error" },
    el("h3", {}, "Error"),
    el("p", {}, el("strong", {}, `${error.type}: `), error.message, el("span", { class: "muted" }, ` (${error.kind})`)),
    error.line !== null && el("p", {}, `script line ${error.line}: `, sourceLine),
  );
}

// Each attempt's lines, context writes and error (but the step's own error, shown above).
function logSections(logs, record, ended) {
  const shownAbove = (log) => record?.error && log.attempt === record.attempts;
  const attempts = logs.map((log) =>
    el(
      "div",
      { class: "attempt-log" },
      el("p", { class: "muted" }, `attempt ${log.attempt} · ${log.worker_id} · ${formatTime(log.at)}`),
      log.error && !shownAbove(log) && errorSection(log.error, log.source_line),
      el("pre", { class: "log" }, log.text || "(printed nothing)"),
      log.context_ops.length > 0 && contextWrites(log.context_ops),
    ),
  );
  const none = el("p", { class: "muted" }, ended ? "It printed nothing." : "None yet: they come when an attempt ends.");
  return [el("h3", {}, "Attempts and logs"), ...(attempts.length > 0 ? attempts : [none])];
}

// What a succeeded attempt wrote to the run's context, as applied (the run's context shows the sum of them all).
function contextWrites(ops) {
  const row = (cells, tag) => el("tr", {}, cells.map((cell) => el(tag, {}, cell)));
  const rows = ops.map(({ op, key, value }) => row([op, key, JSON.stringify(value)], "td"));
  return el(
    "section",
    { class: "context-writes", "aria-label": "context writes" },
    el("h4", {}, "Context writes"),
    el("table", { class: "list" }, el("thead", {}, row(["Op", "Key", "Value"], "th")), el("tbody", {}, rows)),
  );
}
