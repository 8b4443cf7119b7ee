// A run's event log, read a page at a time (GET /v1/runs/ID/events, at most 10,000 events a request).

import { api } from "./common.js";

const PAGE_EVENTS = 10000;

// Every event of the run so far, in seq order.
export async function loadEvents(runId) {
  const events = [];
  for (;;) {
    const after = events.at(-1)?.seq ?? 0;
    const page = await api(`/v1/runs/${encodeURIComponent(runId)}/events?after=${after}&limit=${PAGE_EVENTS}`);
    events.push(...page.events);
    if (page.events.length < PAGE_EVENTS) return events;
  }
}
