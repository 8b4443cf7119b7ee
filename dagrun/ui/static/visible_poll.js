// Re-reading what the API has no stream for (the list of runs, the workers): `refresh` is called now and
// then `intervalMs` after each call ends, but only while the tab is visible (document.visibilityState), so
// a tab in the background asks the server nothing and catches up the moment it is shown again. Calls never
// overlap: one asked for while another is under way follows it at once.

export function pollWhileVisible(refresh, intervalMs) {
  let timer = null;
  let inFlight = false;
  let askedAgain = false;

  async function poll() {
    clearTimeout(timer);
    timer = null;
    if (inFlight) {
      askedAgain = true;
      return;
    }
    if (document.visibilityState !== "visible") return;
    inFlight = true;
    try {
      await refresh();
    } finally {
      inFlight = false;
    }
    if (askedAgain) {
      askedAgain = false;
      poll();
    } else if (document.visibilityState === "visible") {
      timer = setTimeout(poll, intervalMs);
    }
  }

  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState !== "visible") {
      clearTimeout(timer);
      timer = null;
    } else if (timer === null && !inFlight) {
      poll();
    }
  });
  poll();
  return poll; // call it to refresh now (after a filter changed)
}
