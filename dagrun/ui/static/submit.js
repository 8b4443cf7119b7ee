// The submit page: a flow pasted or uploaded (JSON or YAML) is checked by the server as it is typed
// (POST /v1/flows/validate, after a pause), its problems shown where they are, as `dagrun validate` prints
// them; a valid one gets a form for its inputs and can be started (POST /v1/runs), then its run is shown.

import { ApiError, api, debounce, describeError, el } from "./common.js";
import { FlowInputs } from "./flow_inputs.js";
import { formatOfFile, formatOfText } from "./flow_text.js";

const TYPING_PAUSE_MS = 300;

const source = el("textarea", {
  id: "flow-source",
  rows: 22,
  spellcheck: "false",
  placeholder: '{"name": "hello", "steps": [{"id": "greet", "script": "outputs[\'text\'] = \'hi\'"}]}',
});
const format = el(
  "select",
  { id: "flow-format" },
  el("option", { value: "json" }, "JSON"),
  el("option", { value: "yaml" }, "YAML"),
);
const upload = el("input", { id: "flow-file", type: "file", accept: ".json,.yaml,.yml" });
const verdict = el("p", { class: "verdict", role: "status" });
const problems = el("ul", { class: "problems", "aria-label": "problems" });
const inputs = new FlowInputs();
const start = el("button", { type: "button", class: "primary", disabled: true }, "Start run");
const startProblem = el("p", { class: "problem", role: "alert" });
const startProblems = el("ul", { class: "problems", "aria-label": "why the run was refused" });

let formatChosen = false; // once the user picks a format (or uploads a file), typing no longer guesses it
let asked = 0; // the latest validation asked for: an answer to an earlier one is stale
let validFlow = null; // the flow object to submit, while the text is valid

document.getElementById("submit-page").append(
  el("h1", {}, "Submit a flow"),
  el(
    "div",
    { class: "toolbar" },
    el("label", { for: "flow-format" }, "Format"),
    format,
    el("label", { for: "flow-file" }, "or upload a file"),
    upload,
  ),
  el("label", { for: "flow-source", class: "stacked" }, "Flow (JSON or YAML)"),
  source,
  verdict,
  problems,
  inputs.node,
  el("div", { class: "toolbar" }, start),
  startProblem,
  startProblems,
);

const validateSoon = debounce(validate, TYPING_PAUSE_MS);

source.addEventListener("input", () => {
  if (!formatChosen) format.value = formatOfText(source.value);
  forgetVerdict();
  validateSoon();
});
format.addEventListener("change", () => {
  formatChosen = true;
  forgetVerdict();
  validate();
});
upload.addEventListener("change", async () => {
  const file = upload.files[0];
  if (!file) return;
  source.value = await file.text();
  format.value = formatOfFile(file, source.value);
  formatChosen = true;
  forgetVerdict();
  validate();
});
start.addEventListener("click", startRun);

function forgetVerdict() {
  validFlow = null;
  start.disabled = true;
  startProblem.textContent = "";
  startProblems.replaceChildren();
}

async function validate() {
  const ticket = ++asked;
  if (!source.value.trim()) {
    problems.replaceChildren();
    verdict.textContent = "";
    inputs.hide();
    return;
  }
  verdict.textContent = "Checking…";
  let result;
  try {
    result = await api("/v1/flows/validate", { method: "POST", body: { source: source.value, format: format.value } });
  } catch (error) {
    if (ticket === asked) verdict.textContent = describeError(error);
    return;
  }
  if (ticket !== asked) return;
  problems.replaceChildren(...problemItems(result.problems));
  if (result.valid) {
    validFlow = result.flow;
    verdict.textContent = `valid flow '${result.flow.name}' with ${result.flow.steps.length} steps`;
    inputs.show(result.inputs);
    start.disabled = false;
  } else {
    const count = result.problems.length;
    verdict.textContent = `${count} problem${count === 1 ? "" : "s"}:`;
    inputs.hide();
  }
}

// Each problem as `dagrun validate` prints it, without the file name: where (a path, and a line for
// YAML), then what.
function problemItems(list) {
  return list.map((problem) =>
    el("li", { class: "problem" }, problem.path ? [el("code", {}, problem.path), ": "] : null, problem.message),
  );
}

async function startRun() {
  start.disabled = true;
  startProblem.textContent = "";
  startProblems.replaceChildren();
  try {
    const { run_id } = await api("/v1/runs", { method: "POST", body: { flow: validFlow, inputs: inputs.values() } });
    location.assign(`/ui/runs/${encodeURIComponent(run_id)}`);
  } catch (error) {
    if (error instanceof ApiError && error.status === 422 && error.body?.problems) {
      startProblem.textContent = "The server refused the run:";
      startProblems.replaceChildren(...problemItems(error.body.problems));
    } else {
      startProblem.textContent = describeError(error);
    }
    start.disabled = validFlow === null;
  }
}
