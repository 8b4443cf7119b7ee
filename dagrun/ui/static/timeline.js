// The timeline (Gantt): one bar per attempt, its queue wait (queued -> running) apart from its running time
// (running -> its end, coloured by how it ended), built from the run's event log when first shown and kept
// live from the stream. An event updates one attempt's times (O(1)); each frame draws only the rows in
// sight, from a small pool of row elements, so a run of 5,000 steps scrolls and updates like one of 5.
// Times are seconds from the run's start in CSS variables; the stylesheet scales them by --extent.

import { el, formatDuration } from "./common.js";
import { loadEvents } from "./event_log.js";
import { isTerminalStep } from "./run_model.js";

const ROW_PX = 20; // .bar-row's height in run.css
const OVERSCAN_ROWS = 10; // drawn beyond each edge of the view, so that a scroll shows no gap
const TICK_MS = 1000; // how often bars still open grow while the run goes on

export class Timeline {
  constructor(container, model, { onSelect }) {
    this.model = model;
    this.attempts = []; // {index, stepId, attempt, phase: queued|running|ended, queued, started, ended, status}
    this.byKey = new Map(); // "step#attempt" -> its attempt
    this.loaded = null; // the promise of the first load
    this.pending = []; // live events that came while the log loaded
    this.origin = model.run.started_at; // seconds; bars start from here
    this.latest = 0; // the last event's time: "now" is never before it, whatever the browser's clock says
    this.frame = 0; // the animation frame a redraw is waiting for
    this.space = el("div", { class: "timeline-space" });
    this.rows = el("div", { class: "timeline-rows" }, this.space);
    this.axisEnd = el("span", {});
    container.append(el("div", { class: "timeline-axis muted" }, el("span", {}, "0 s"), this.axisEnd), this.rows);
    this.rows.addEventListener("scroll", () => this.#redrawSoon(), { passive: true });
    this.rows.addEventListener("click", (event) => {
      const row = event.target.closest(".bar-row");
      if (row) onSelect(row.dataset.stepId);
    });
  }

  // Load the event log the first time the timeline is shown (and again next time if that failed).
  show() {
    this.loaded ??= this.#load().catch((error) => {
      this.loaded = null;
      this.pending = [];
      throw error;
    });
    return this.loaded;
  }

  // Live events; before the log has loaded they wait, so that none is counted twice or out of order.
  apply(events) {
    if (this.loaded === null) return;
    if (this.pending !== null) {
      this.pending.push(...events);
      return;
    }
    this.#record(events);
  }

  async #load() {
    this.rows.setAttribute("aria-busy", "true");
    const events = await loadEvents(this.model.runId);
    const last = events.at(-1)?.seq ?? 0;
    this.#record(events.concat(this.pending.filter((event) => event.seq > last)));
    this.pending = null;
    this.rows.removeAttribute("aria-busy");
    if (!this.model.isTerminal) {
      const timer = setInterval(() => {
        this.#redrawSoon();
        if (this.model.isTerminal) clearInterval(timer);
      }, TICK_MS);
    }
  }

  #record(events) {
    for (const event of events) {
      this.latest = Math.max(this.latest, event.at);
      if (event.kind === "run") {
        if (event.status === "running") this.origin ??= event.at;
      } else if (event.attempt >= 1) {
        // attempt 0: a step that never ran (skipped, cancelled) or a mapped step's own span
        this.origin ??= event.at;
        this.#advance(this.#attempt(event), event);
      }
    }
    this.space.style.height = `${this.attempts.length * ROW_PX}px`;
    this.#redrawSoon();
  }

  #attempt(event) {
    const key = `${event.step_id}#${event.attempt}`;
    let attempt = this.byKey.get(key);
    if (!attempt) {
      attempt = { stepId: event.step_id, attempt: event.attempt, phase: "queued", queued: event.at, status: "queued" };
      attempt.index = this.attempts.push(attempt) - 1;
      this.byKey.set(key, attempt);
    }
    return attempt;
  }

  // One event of an attempt: it started (running, or waiting for a signal), or it ended ("ready": it failed
  // and the step will be tried again).
  #advance(attempt, event) {
    if (event.status === "running" || event.status === "waiting") {
      attempt.phase = "running";
      attempt.started = event.at;
    } else if (isTerminalStep(event.status) || event.status === "ready") {
      attempt.started ??= event.at;
      attempt.ended = event.at;
      attempt.phase = "ended";
    }
    attempt.status = event.status === "ready" ? "failed" : event.status;
  }

  #redrawSoon() {
    this.frame ||= requestAnimationFrame(() => {
      this.frame = 0;
      this.#redraw();
    });
  }

  // Draw the rows in sight (reading the view's size before writing anything, so the browser lays out once).
  #redraw() {
    const first = Math.max(0, Math.floor(this.rows.scrollTop / ROW_PX) - OVERSCAN_ROWS);
    const shown = Math.ceil(this.rows.clientHeight / ROW_PX) + 2 * OVERSCAN_ROWS;
    const last = Math.min(this.attempts.length, first + shown);
    const now = this.model.isTerminal ? this.model.run.finished_at : Math.max(Date.now() / 1000, this.latest);
    const extent = Math.max(now - (this.origin ?? now), 0.001);
    this.rows.style.setProperty("--extent", String(extent));
    this.axisEnd.textContent = formatDuration(extent);
    const rows = [...this.space.children];
    for (let index = first; index < last; index += 1) {
      const row = rows[index - first] ?? this.space.appendChild(newRow());
      this.#fill(row, this.attempts[index], now);
    }
    for (const unused of rows.slice(Math.max(last - first, 0))) unused.remove();
  }

  #fill(row, attempt, now) {
    const since = (seconds) => String(seconds - this.origin);
    row.style.top = `${attempt.index * ROW_PX}px`;
    row.dataset.stepId = attempt.stepId;
    row.dataset.attempt = attempt.attempt;
    row.dataset.phase = attempt.phase;
    row.title = `${attempt.stepId}, attempt ${attempt.attempt}: ${attempt.status}`;
    row.querySelector(".bar-label").textContent = `${attempt.stepId} #${attempt.attempt}`;
    row.querySelector(".bar-run").dataset.status = attempt.status;
    row.style.setProperty("--queued", since(attempt.queued));
    row.style.setProperty("--started", since(attempt.started ?? now));
    row.style.setProperty("--ended", since(attempt.ended ?? now));
  }
}

function newRow() {
  return el(
    "button",
    { type: "button", class: "bar-row" },
    el("span", { class: "bar-label mono" }),
    el("span", { class: "bar-track" }, el("span", { class: "bar-wait" }), el("span", { class: "bar-run" })),
  );
}
