// A table body refreshed from a list the server sends again and again (runs, workers): rows are keyed
// (a run's id, a worker's id), a row whose data did not change is kept as it is and only moved into place,
// so a page re-read every few seconds does not flicker, and only a changed item's row is built anew.

import { el } from "./common.js";

export class KeyedRows {
  constructor(buildRow, keyOf) {
    this.buildRow = buildRow;
    this.keyOf = keyOf;
    this.body = el("tbody");
    this.shown = new Map(); // key -> {row, data: the JSON text it was built from}
  }

  update(items) {
    const shown = new Map();
    items.forEach((item, index) => {
      const key = this.keyOf(item);
      const data = JSON.stringify(item);
      const kept = this.shown.get(key);
      const row = kept?.data === data ? kept.row : this.buildRow(item);
      shown.set(key, { row, data });
      // The rows before `index` are in place already: this one goes next (moved, if it was shown lower).
      const present = this.body.children[index];
      if (present !== row) this.body.insertBefore(row, present ?? null);
    });
    while (this.body.children.length > items.length) this.body.lastElementChild.remove();
    this.shown = shown;
  }
}
