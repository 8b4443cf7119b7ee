// The run's context (what its steps shared with context.set/incr), its flow's declared outputs and its
// inputs, as JSON. Read with the run: on load, when the section is opened, and when the run ends.

export function showContext(root, run) {
  root.querySelector("#run-context").textContent = json(run.context);
  root.querySelector("#run-outputs").textContent = json(run.outputs);
  root.querySelector("#run-inputs").textContent = json(run.inputs);
}

function json(value) {
  return JSON.stringify(value ?? {}, null, 2);
}
