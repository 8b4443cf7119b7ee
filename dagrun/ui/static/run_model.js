// The run as the page knows it: the snapshot read on load (GET /v1/runs/ID), kept current by the run's
// events. Applying an event is O(1) (a status, two counters, a mapped step's progress), so a busy run of
// 5,000 steps costs the page per event, never per step. Statuses live here; what only a fresh read knows
// (outputs, errors, timings) comes from `records`, read again for a step once an event made it stale.

import { api } from "./common.js";

export const TERMINAL_RUN = new Set(["succeeded", "failed", "cancelled"]);
const TERMINAL_STEP = new Set(["succeeded", "reused", "failed", "skipped", "cancelled"]);
const INSTANCE_ID = /^(.*)\[\d+\]$/;
// How a mapped step's event says how many items it maps over ("mapped over 3 items", "3 items: 3 succeeded").
const MAP_TOTAL = /^(?:mapped over )?(\d+) items\b/;

export function isTerminalStep(status) {
  return TERMINAL_STEP.has(status);
}

// "ID[3]" -> "ID"; null for a step id that names no instance.
export function mappedStepOf(stepId) {
  return INSTANCE_ID.exec(stepId)?.[1] ?? null;
}

export class RunModel {
  constructor(run, graph) {
    const { steps, ...fields } = run;
    this.runId = run.run_id;
    this.run = fields; // the run's own fields; its steps are in `records`
    this.nodes = new Map(graph.nodes.map((node) => [node.id, node]));
    this.edges = graph.edges;
    this.lastSeq = run.last_event_seq;
    this.statuses = new Map(); // step id (instances included) -> its state word
    this.counts = new Map(); // state word -> how many steps are in it
    this.maps = new Map(); // mapped step id -> {instances: Set of ids, done, total (null until known)}
    this.records = new Map(Object.entries(steps));
    this.staleSince = new Map(); // step id -> seq of the event that made its record older than the step
    for (const node of graph.nodes) {
      if (node.kind === "map") this.maps.set(node.id, { instances: new Set(), done: 0, total: null });
      this.#setStatus(node.id, this.records.get(node.id)?.status ?? "pending");
    }
    for (const [stepId, record] of this.records) {
      if (!this.nodes.has(stepId)) this.#setStatus(stepId, record.status);
    }
  }

  get isTerminal() {
    return TERMINAL_RUN.has(this.run.status);
  }

  status(stepId) {
    return this.statuses.get(stepId) ?? "pending";
  }

  // Apply events in seq order (a repeated one is ignored); the ids of the steps whose state changed, and
  // whether the run's did.
  apply(events) {
    const changed = new Set();
    let runChanged = false;
    for (const event of events) {
      if (event.seq <= this.lastSeq) continue;
      this.lastSeq = event.seq;
      if (event.kind === "run") {
        runChanged = this.#applyRunEvent(event) || runChanged;
      } else if (event.step_id !== null) {
        this.learnMapTotal(event);
        this.staleSince.set(event.step_id, event.seq);
        if (this.#setStatus(event.step_id, event.status)) {
          changed.add(event.step_id);
          const mapped = mappedStepOf(event.step_id);
          if (mapped !== null) changed.add(mapped);
        }
      }
    }
    return { changed, runChanged };
  }

  // A mapped step's item count, from the message of its event; true when it told one.
  learnMapTotal(event) {
    const map = this.maps.get(event.step_id);
    const total = map && MAP_TOTAL.exec(event.message ?? "");
    if (!total) return false;
    map.total = Number(total[1]);
    return true;
  }

  // Whether a mapped step has started without the page having seen how many items it maps over.
  get needsMapTotals() {
    return [...this.maps].some(([stepId, map]) => map.total === null && this.status(stepId) !== "pending");
  }

  // A step's stored record (outputs, error, timings, worker, logs), read again if an event changed the step
  // (a step with no record and no event has done nothing yet: null).
  async record(stepId) {
    if (this.staleSince.has(stepId)) {
      this.takeSnapshot(await api(`/v1/runs/${encodeURIComponent(this.runId)}`));
    }
    return this.records.get(stepId) ?? null;
  }

  // A fresh read of the run: its records and its own fields but its status, which comes from events only
  // (so that the page shows one consistent order of states).
  takeSnapshot(run) {
    const { status, steps, ...fields } = run;
    Object.assign(this.run, fields);
    this.records = new Map(Object.entries(steps));
    for (const [stepId, seq] of this.staleSince) {
      if (seq <= run.last_event_seq) this.staleSince.delete(stepId);
    }
  }

  #applyRunEvent(event) {
    if (this.run.status === event.status) return false;
    this.run.status = event.status;
    if (event.status === "running") this.run.started_at ??= event.at;
    if (TERMINAL_RUN.has(event.status)) this.run.finished_at = event.at;
    return true;
  }

  // Record `status` for `stepId`, keeping the counters and its mapped step's progress; false if unchanged.
  #setStatus(stepId, status) {
    const before = this.statuses.get(stepId);
    if (before === status) return false;
    this.statuses.set(stepId, status);
    if (before !== undefined) this.counts.set(before, this.counts.get(before) - 1);
    this.counts.set(status, (this.counts.get(status) ?? 0) + 1);
    const map = this.maps.get(mappedStepOf(stepId));
    if (map) {
      map.instances.add(stepId);
      map.done += Number(isTerminalStep(status)) - Number(before !== undefined && isTerminalStep(before));
    }
    return true;
  }
}
