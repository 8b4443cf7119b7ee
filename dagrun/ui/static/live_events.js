// A live run's events from its Server-Sent Events stream, handed on in batches, one per animation frame:
// however fast a busy run sends them, the page updates at most once a frame. The stream is closed as soon
// as the event that ends the run arrives (the server would answer a reconnect with 204 anyway).

import { TERMINAL_RUN } from "./run_model.js";

// Follow the events of `runId` after seq `afterSeq`: `onBatch(events)` once a frame while some came,
// `onLost()` if the stream fails for good. Returns the EventSource (to close it).
export function followEvents(runId, afterSeq, { onBatch, onLost }) {
  const source = new EventSource(`/v1/runs/${encodeURIComponent(runId)}/events/stream?after=${afterSeq}`);
  let batch = [];
  const flush = () => {
    const events = batch;
    batch = [];
    onBatch(events);
  };
  const receive = (message) => {
    const event = JSON.parse(message.data);
    if (batch.length === 0) requestAnimationFrame(flush);
    batch.push(event);
    if (event.kind === "run" && TERMINAL_RUN.has(event.status)) source.close();
  };
  source.addEventListener("run", receive);
  source.addEventListener("step", receive);
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) onLost(); // it reconnects by itself from anything else
  });
  return source;
}
