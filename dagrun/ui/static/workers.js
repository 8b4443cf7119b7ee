// The workers page: the live workers of each executor this server drives runs with. The API has no
// stream of worker changes, so the page re-reads them every 2 s while the tab is visible; heartbeat ages
// and uptimes count every second in between.

import { api, describeError, el } from "./common.js";
import { KeyedRows } from "./keyed_rows.js";
import { pollWhileVisible } from "./visible_poll.js";
import { workerRow } from "./worker_row.js";

const REFRESH_MS = 2000;
const COLUMNS = ["Worker", "Host", "Contexts", "Running now", "Steps done", "Errors", "Heartbeat age", "Uptime"];
const ADD_EXECUTOR = "dagrun serve api --orchestrate --executor NAME=URL";
const START_WORKER = "dagrun worker redis URL --token-file FILE --context C";

const problem = el("p", { class: "problem", role: "alert" });
const notice = el("div", { class: "panel notice", role: "status", hidden: true });
const executorList = el("div", { class: "executors" });
let executors = new Map(); // executor name -> its section and rows, kept while the same executors are listed

document.getElementById("workers-page").append(el("h1", {}, "Workers"), problem, notice, executorList);
pollWhileVisible(refresh, REFRESH_MS);

async function refresh() {
  let body;
  try {
    body = await api("/v1/workers");
  } catch (error) {
    problem.textContent = describeError(error);
    return;
  }
  problem.textContent = "";
  showNotice(body);
  showExecutors(body.executors);
}

function showNotice({ orchestrating, executors: found }) {
  notice.hidden = orchestrating && Object.keys(found).length > 0;
  if (!orchestrating) {
    notice.replaceChildren(
      "This server drives no runs, so it knows no executors and no workers. Start it with ",
      el("code", {}, ADD_EXECUTOR),
      " to see the workers of its executors here.",
    );
  } else {
    notice.replaceChildren(
      "This server runs steps only in its own processes (the local executor): it has no executor with workers. ",
      "Add one with ",
      el("code", {}, ADD_EXECUTOR),
      ".",
    );
  }
}

function showExecutors(found) {
  const names = Object.keys(found).sort();
  if (names.join("\n") !== [...executors.keys()].join("\n")) {
    executors = new Map(names.map((name) => [name, executorSection(name)]));
    executorList.replaceChildren(...[...executors.values()].map((section) => section.node));
  }
  for (const [name, section] of executors) {
    const workers = found[name];
    section.count.textContent = `${workers.length} live worker${workers.length === 1 ? "" : "s"}`;
    section.table.hidden = workers.length === 0;
    section.none.hidden = workers.length > 0;
    section.rows.update(workers);
  }
}

function executorSection(name) {
  const rows = new KeyedRows(workerRow, (worker) => worker.worker_id);
  const count = el("span", { class: "muted" });
  const table = el(
    "table",
    { class: "list workers" },
    el("thead", {}, el("tr", {}, COLUMNS.map((column) => el("th", {}, column)))),
    rows.body,
  );
  const none = el("p", { class: "muted" }, "No live workers. Start one, e.g. ", el("code", {}, START_WORKER), ".");
  const heading = el("h2", {}, name, " ", count);
  const node = el("section", { class: "executor", dataset: { executor: name } }, heading, none, table);
  return { node, count, table, none, rows };
}
