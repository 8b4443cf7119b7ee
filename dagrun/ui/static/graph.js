// The run's DAG in SVG, laid out by the server (GET /v1/runs/ID/graph: a layer from the top, a place in the
// layer). Drawn once, in one pass into a DocumentFragment, with few elements (a tile's edges are one
// <path>); afterwards an event touches only its own node (its data-status, a mapped step's progress, a
// sub-flow's link), so a 5,000-step run never lays out or rebuilds anything while it runs. States are
// coloured by the stylesheet; nodes out of sight are not displayed (`GraphTiles`).

import { svg } from "./common.js";
import { GraphTiles } from "./graph_tiles.js";
import { PanZoom } from "./pan_zoom.js";

const NODE_WIDTH = 230;
const NODE_HEIGHT = 48;
const GAP_X = 24;
const GAP_Y = 56;
// Longer texts are cut with "…" (a node's <title> and its panel have all of them).
const LABEL_CHARS = 26;
const MAPPED_LABEL_CHARS = 20; // leaves room for the progress ("12/100") on the same line
const DETAIL_CHARS = 34; // the second line is in a smaller type
const NOT_STARTED = new Set(["pending", "queued", "skipped", "cancelled"]); // a sub-flow with no child run

export class RunGraph {
  // `onSelect(stepId)` is called when a node is clicked (or Enter is pressed on it).
  constructor(svgElement, model, { onSelect }) {
    this.svg = svgElement;
    this.model = model;
    this.views = new Map(); // step id -> {group, progress, link}
    const { positions, size } = layOut(model.nodes.values());
    this.positions = positions;
    this.tiles = new GraphTiles();
    const viewport = svg("g", { class: "viewport" });
    viewport.append(this.#drawing());
    this.svg.append(viewport);
    this.panZoom = new PanZoom(this.svg, viewport, size, { onMove: (area) => this.tiles.show(area) });
    this.svg.addEventListener("click", (event) => this.#select(event, onSelect));
    this.svg.addEventListener("keydown", (event) => event.key === "Enter" && this.#select(event, onSelect));
  }

  // Show the state of the steps in `stepIds` (instances update their mapped step's progress).
  refresh(stepIds) {
    for (const stepId of stepIds) {
      const view = this.views.get(stepId);
      if (view) this.#show(stepId, view);
    }
  }

  #drawing() {
    const drawing = document.createDocumentFragment();
    for (const node of this.model.nodes.values()) {
      const view = this.#nodeView(node);
      this.views.set(node.id, view);
      this.#show(node.id, view);
      const box = { ...this.positions.get(node.id), width: NODE_WIDTH, height: NODE_HEIGHT };
      this.tiles.groupFor(node, box).append(view.group);
    }
    this.#addEdges();
    drawing.append(...this.tiles.elements());
    return drawing;
  }

  // Each edge a curve from the bottom of its dependency to the top of its dependent.
  #addEdges() {
    for (const [from, to] of this.model.edges) {
      const start = this.positions.get(from);
      const end = this.positions.get(to);
      if (!start || !end) continue;
      const x1 = start.x + NODE_WIDTH / 2;
      const y1 = start.y + NODE_HEIGHT;
      const x2 = end.x + NODE_WIDTH / 2;
      const middle = (y1 + end.y) / 2;
      const curve = `M${x1} ${y1}C${x1} ${middle} ${x2} ${middle} ${x2} ${end.y}`;
      this.tiles.addEdge(this.model.nodes.get(to), curve, { x: x1, y: y1 });
    }
  }

  // Children placed by their own x and y: a transform per node would make each one a paint chunk of its
  // own, which multiplied the time a 5,000-node graph took to repaint.
  #nodeView(node) {
    const { x, y } = this.positions.get(node.id);
    const detail = describe(node);
    const labelChars = node.kind === "map" ? MAPPED_LABEL_CHARS : LABEL_CHARS;
    const group = svg(
      "g",
      { class: "node", role: "button", tabindex: 0, "data-kind": node.kind },
      svg("title", {}, detail ? `${node.id}\n${detail}` : node.id),
      svg("rect", { x, y, width: NODE_WIDTH, height: NODE_HEIGHT, rx: 6 }),
      svg("text", { class: "node-label", x: x + 10, y: y + 20 }, shorten(node.id, labelChars)),
      detail && svg("text", { class: "node-detail", x: x + 10, y: y + 38 }, shorten(detail, DETAIL_CHARS)),
    );
    group.dataset.stepId = node.id;
    const progress =
      node.kind === "map" ? svg("text", { class: "node-progress", x: x + NODE_WIDTH - 8, y: y + 20 }) : null;
    if (progress) group.append(progress);
    return { group, progress, link: null };
  }

  #show(stepId, view) {
    const status = this.model.status(stepId);
    view.group.dataset.status = status;
    if (view.progress) view.progress.textContent = progressText(this.model.maps.get(stepId));
    const started = !NOT_STARTED.has(status) || this.model.records.get(stepId)?.started_at;
    if (view.group.dataset.kind === "flow" && !view.link && started) {
      view.link = childRunLink(this.model.runId, stepId, this.positions.get(stepId));
      view.group.append(view.link);
    }
  }

  #select(event, onSelect) {
    if (event.target.closest("a")) return; // a sub-flow's link goes to its child run
    const group = event.target.closest(".node");
    if (group) onSelect(group.dataset.stepId);
  }
}

// Where each node goes: its layer from the top, its place in the layer from the left, each layer centred.
function layOut(nodes) {
  const layers = [];
  for (const node of nodes) (layers[node.layer] ??= []).push(node);
  const widest = Math.max(1, ...layers.map((layer) => layer?.length ?? 0));
  const width = widest * (NODE_WIDTH + GAP_X) - GAP_X;
  const positions = new Map();
  for (const [index, layer] of layers.entries()) {
    const indent = (width - ((layer?.length ?? 0) * (NODE_WIDTH + GAP_X) - GAP_X)) / 2;
    for (const node of layer ?? []) {
      positions.set(node.id, { x: indent + node.order * (NODE_WIDTH + GAP_X), y: index * (NODE_HEIGHT + GAP_Y) });
    }
  }
  const height = Math.max(1, layers.length * (NODE_HEIGHT + GAP_Y) - GAP_Y);
  return { positions, size: { width, height } };
}

// The second line of a node: what makes it more than a script, and its condition.
function describe(node) {
  const marks = [];
  if (node.kind === "map") marks.push(`map over ${node.map_over}`);
  if (node.kind === "wait") marks.push(`waits for a signal: ${(node.wait_for ?? []).join(", ")}`);
  if (node.kind === "flow") marks.push(`sub-flow ${node.flow ?? ""}`);
  if (node.when) marks.push(`when ${node.when}`);
  if (node.run_if) marks.push(`runs if ${node.run_if}`);
  return marks.join(" · ");
}

// "3/10": instances ended of those the step maps over (of those known, until the run says how many).
function progressText(map) {
  const total = map.total ?? map.instances.size;
  return total === 0 && map.total === null ? "" : `${map.done}/${total}`;
}

function childRunLink(runId, stepId, { x, y }) {
  return svg(
    "a",
    { href: `/ui/runs/${encodeURIComponent(`${runId}.${stepId}`)}`, class: "node-link" },
    svg("text", { x: x + NODE_WIDTH - 8, y: y + 38 }, "child run ↗"),
  );
}

function shorten(text, chars) {
  return text.length > chars ? `${text.slice(0, chars - 1)}…` : text;
}
