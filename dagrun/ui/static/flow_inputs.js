// The form for a valid flow's declared inputs: one field per input, prefilled with its default as JSON.
// A value is read as JSON when it parses (3, true, ["a"]) and as text otherwise (eu-west), as
// `dagrun run -i NAME=VALUE` reads it.

import { el, valueOf } from "./common.js";

export class FlowInputs {
  constructor() {
    this.node = el("fieldset", { class: "flow-inputs", hidden: true });
    this.fields = new Map(); // input name -> its <input>
    this.declared = null; // the JSON text of the inputs the fields were built for
  }

  // Fields for `inputs` ({name: default}); the same inputs as before keep what was typed into them.
  show(inputs) {
    this.node.hidden = false;
    const declared = JSON.stringify(inputs);
    if (declared === this.declared) return;
    this.declared = declared;
    this.fields = new Map(
      Object.entries(inputs).map(([name, value]) => [
        name,
        el("input", { id: `input-${name}`, name, class: "mono", value: JSON.stringify(value), spellcheck: "false" }),
      ]),
    );
    const rows = [...this.fields].flatMap(([name, field]) => [el("label", { for: field.id }, name), field]);
    this.node.replaceChildren(
      el("legend", {}, "Inputs"),
      rows.length
        ? el("div", { class: "input-grid" }, rows)
        : el("p", { class: "muted" }, "The flow declares no inputs."),
    );
  }

  hide() {
    this.node.hidden = true;
  }

  values() {
    return Object.fromEntries([...this.fields].map(([name, field]) => [name, valueOf(field.value)]));
  }
}
