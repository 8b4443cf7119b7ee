// A form for each step that waits for a signal (`wait_for`): one input per declared field and a "Signal"
// button. A value that parses as JSON is sent as that JSON (true, 3, {"a": 1}), anything else as the
// string typed. A form stays while its step waits, so what is typed in it survives other steps' events.

import { api, describeError, el, valueOf } from "./common.js";

export class SignalForms {
  constructor(section, model) {
    this.section = section;
    this.model = model;
    this.forms = new Map(); // step id -> its form, while the step waits
    this.waitSteps = [...model.nodes.values()].filter((node) => node.kind === "wait");
  }

  // Add the forms of steps that began waiting and drop those of steps that stopped (only wait steps count).
  update(changed = null) {
    for (const node of this.waitSteps) {
      if (changed && !changed.has(node.id)) continue;
      const waiting = this.model.status(node.id) === "waiting";
      if (waiting && !this.forms.has(node.id)) this.#add(node);
      if (!waiting && this.forms.has(node.id)) {
        this.forms.get(node.id).remove();
        this.forms.delete(node.id);
      }
    }
    this.section.hidden = this.forms.size === 0;
  }

  #add(node) {
    const problem = el("p", { class: "problem", role: "alert" });
    const inputs = (node.wait_for ?? []).map((field) => {
      const input = el("input", { name: field, autocomplete: "off", spellcheck: "false" });
      return { field, input, label: el("label", {}, field, input) };
    });
    const form = el(
      "form",
      { class: "signal-form panel", "aria-label": `Signal ${node.id}`, dataset: { stepId: node.id } },
      el("h2", {}, "Waiting for a signal: ", el("span", { class: "mono" }, node.id)),
      el("div", { class: "signal-fields" }, inputs.map(({ label }) => label)),
      el("button", { type: "submit", class: "primary" }, "Signal"),
      problem,
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.#send(node.id, form, inputs, problem);
    });
    this.forms.set(node.id, form);
    this.section.append(form);
  }

  async #send(stepId, form, inputs, problem) {
    const button = form.querySelector("button");
    const values = Object.fromEntries(inputs.map(({ field, input }) => [field, valueOf(input.value)]));
    button.disabled = true;
    problem.textContent = "";
    try {
      const path = `/v1/runs/${encodeURIComponent(this.model.runId)}/steps/${encodeURIComponent(stepId)}/signal`;
      await api(path, { method: "POST", body: { values } });
    } catch (error) {
      problem.textContent = describeError(error);
      button.disabled = false;
    }
  }
}
