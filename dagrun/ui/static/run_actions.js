// The run's commands: Pause, Resume, Cancel and Rerun (from its failures), each enabled only in the states
// it fits. A command's effect shows through the run's events; a refusal shows next to the buttons.

import { api, describeError } from "./common.js";

const FITS = {
  pause: new Set(["pending", "running"]),
  resume: new Set(["paused"]),
  cancel: new Set(["pending", "running", "paused"]),
  rerun: new Set(["failed", "cancelled"]), // rerunning a run that succeeded, from its failures, runs nothing
};

export class RunActions {
  constructor(root, model) {
    this.model = model;
    this.problem = root.querySelector("#action-problem");
    this.busy = false; // one command at a time
    this.buttons = {};
    for (const command of Object.keys(FITS)) {
      const button = root.querySelector(`#action-${command}`);
      button.addEventListener("click", () => this.#send(command));
      this.buttons[command] = button;
    }
  }

  // Enable the buttons that fit the run's state now.
  update() {
    for (const [command, button] of Object.entries(this.buttons)) {
      button.disabled = this.busy || !FITS[command].has(this.model.run.status);
    }
  }

  async #send(command) {
    this.busy = true;
    this.update();
    this.problem.textContent = "";
    const path = `/v1/runs/${encodeURIComponent(this.model.runId)}/${command}`;
    try {
      const answer = await api(path, { method: "POST", body: command === "rerun" ? {} : undefined });
      if (command === "rerun") location.assign(`/ui/runs/${encodeURIComponent(answer.run_id)}`);
    } catch (error) {
      this.problem.textContent = `${command}: ${describeError(error)}`;
    } finally {
      this.busy = false;
      this.update();
    }
  }
}
