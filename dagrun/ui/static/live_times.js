// Times that grow while a page is open (a running run's duration, a worker's heartbeat age and uptime):
// each is an element holding the moment it counts from, rewritten every second by one timer that finds
// them anew each tick, so rows rebuilt at any time need not tell it.

import { el, formatDuration } from "./common.js";

const FORMATS = {
  duration: formatDuration,
  seconds: (seconds) => `${Math.floor(seconds)} s`,
};
let timer = null;

// An element showing the time since `at` (seconds since the epoch), kept current.
export function timeSince(at, format = "duration") {
  const node = el("span", { class: "since", dataset: { since: at, format } });
  show(node, Date.now() / 1000);
  timer ??= setInterval(showAll, 1000);
  return node;
}

function showAll() {
  const now = Date.now() / 1000;
  for (const node of document.querySelectorAll("[data-since]")) show(node, now);
}

function show(node, now) {
  // The browser's clock may be a little behind the server's: a time since never shows below zero.
  node.textContent = FORMATS[node.dataset.format](Math.max(0, now - Number(node.dataset.since)));
}
