// The runs page: every run, newest first, a page of PAGE_SIZE at a time, filtered by status, flow and id
// prefix (kept in the URL). The API has no stream of all runs' changes, so the page re-reads its page
// every 2 s while the tab is visible; rows whose run did not change are kept (no flicker).

import { api, debounce, describeError, el } from "./common.js";
import { KeyedRows } from "./keyed_rows.js";
import { runRow } from "./run_row.js";
import { PAGE_SIZE, RUN_STATES, isFiltered, readFilter, runsPath, showInUrl } from "./runs_filter.js";
import { pollWhileVisible } from "./visible_poll.js";

const REFRESH_MS = 2000;
const TYPING_PAUSE_MS = 300;
const COLUMNS = ["Run", "Flow", "Status", "Created", "Duration", "Steps"];

const filter = readFilter();
const rows = new KeyedRows(runRow, (run) => run.run_id);

const statusSelect = el(
  "select",
  { name: "status", onchange: applyFilter },
  el("option", { value: "" }, "any status"),
  RUN_STATES.map((state) => el("option", { value: state }, state)),
);
const applyWhenTypingPauses = debounce(applyFilter, TYPING_PAUSE_MS);
const flowInput = el("input", {
  name: "flow", type: "search", placeholder: "flow name", oninput: applyWhenTypingPauses,
});
const idInput = el("input", {
  name: "id", type: "search", class: "mono", placeholder: "id prefix", oninput: applyWhenTypingPauses,
});
const problem = el("p", { class: "problem", role: "alert" });
const empty = el("p", { class: "empty muted", hidden: true });
const previous = el("button", { type: "button", disabled: true, onclick: () => turnPage(-1) }, "Previous");
const next = el("button", { type: "button", disabled: true, onclick: () => turnPage(1) }, "Next");
const shownRange = el("span", { class: "muted" });

statusSelect.value = filter.status;
flowInput.value = filter.flow;
idInput.value = filter.id;

document.getElementById("runs-page").append(
  el(
    "div",
    { class: "toolbar" },
    el("h1", {}, "Runs"),
    el("span", { class: "spacer" }),
    el("a", { class: "button", href: "/ui/submit" }, "Submit a flow"),
  ),
  el(
    "form",
    { class: "toolbar runs-filter", role: "search", onsubmit: submitFilter },
    el("label", {}, "Status ", statusSelect),
    el("label", {}, "Flow ", flowInput),
    el("label", {}, "Run id ", idInput),
  ),
  problem,
  el(
    "table",
    { class: "list runs" },
    el("thead", {}, el("tr", {}, COLUMNS.map((name) => el("th", {}, name)))),
    rows.body,
  ),
  empty,
  el("nav", { class: "toolbar pager", "aria-label": "pages" }, previous, shownRange, next),
);

const refreshNow = pollWhileVisible(refresh, REFRESH_MS);

async function refresh() {
  const path = runsPath(filter);
  let runs;
  try {
    ({ runs } = await api(path));
  } catch (error) {
    problem.textContent = describeError(error);
    return;
  }
  if (path !== runsPath(filter)) return; // the filter changed meanwhile: the next call reads the new one
  problem.textContent = "";
  const page = runs.slice(0, PAGE_SIZE);
  rows.update(page);
  showPager(page.length, runs.length > PAGE_SIZE);
}

function showPager(shown, hasNext) {
  const first = (filter.page - 1) * PAGE_SIZE;
  previous.disabled = filter.page === 1;
  next.disabled = !hasNext;
  shownRange.textContent = shown ? `runs ${first + 1}–${first + shown}` : `page ${filter.page}`;
  empty.hidden = shown > 0;
  if (filter.page > 1) empty.textContent = "No runs on this page.";
  else if (isFiltered(filter)) empty.textContent = "No runs match these filters.";
  else empty.textContent = "No runs yet: submit a flow to start one.";
}

function applyFilter() {
  Object.assign(filter, {
    status: statusSelect.value, flow: flowInput.value.trim(), id: idInput.value.trim(), page: 1,
  });
  showInUrl(filter);
  refreshNow();
}

function submitFilter(event) {
  event.preventDefault(); // Enter applies the filter at once, without leaving the page
  applyFilter();
}

function turnPage(by) {
  filter.page = Math.max(1, filter.page + by);
  showInUrl(filter);
  refreshNow();
}
