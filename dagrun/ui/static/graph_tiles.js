// A big graph drawn in tiles (a few neighbouring nodes of one layer, and the edges that end at them), of
// which only those in sight are displayed. Chromium repaints every displayed element of an <svg>, on
// screen or not, each time one of them changes; hiding the tiles out of sight is what keeps a 5,000-node
// graph's repaint (once a frame while the run sends events) down to the nodes one can see. Checking which
// are in sight costs a few hundred box comparisons per move, not a pass over the nodes.

import { svg } from "./common.js";

const TILE_NODES = 16; // nodes of one layer in a tile
const MARGIN = 200; // drawing units beyond the view still displayed, so that a drag shows no gap

export class GraphTiles {
  constructor() {
    this.tiles = new Map(); // "layer:block" -> {nodes: <g>, edges: path data, left, top, right, bottom, shown}
  }

  // The group to append a node's elements to, given the box the node takes in the drawing.
  groupFor(node, { x, y, width, height }) {
    const tile = this.#tile(node);
    widen(tile, x, y);
    widen(tile, x + width, y + height);
    return tile.nodes;
  }

  // An edge (its path data) is drawn with the tile of the node it ends at; where it starts widens the tile.
  addEdge(node, pathData, start) {
    const tile = this.#tile(node);
    tile.edges.push(pathData);
    widen(tile, start.x, start.y);
  }

  // The elements to draw: every tile's edges, then every tile's nodes (so that no edge covers a node).
  elements() {
    const tiles = [...this.tiles.values()];
    for (const tile of tiles) tile.edges = svg("path", { class: "edges", d: tile.edges.join("") });
    return [...tiles.map((tile) => tile.edges), ...tiles.map((tile) => tile.nodes)];
  }

  // Display the tiles that meet `area` (in drawing units), hide the others; writes only what changes.
  show(area) {
    for (const tile of this.tiles.values()) {
      const inSight =
        tile.right >= area.left - MARGIN &&
        tile.left <= area.right + MARGIN &&
        tile.bottom >= area.top - MARGIN &&
        tile.top <= area.bottom + MARGIN;
      if (inSight !== tile.shown) {
        tile.shown = inSight;
        tile.nodes.classList.toggle("out-of-sight", !inSight);
        tile.edges.classList.toggle("out-of-sight", !inSight);
      }
    }
  }

  #tile(node) {
    const key = `${node.layer}:${Math.floor(node.order / TILE_NODES)}`;
    let tile = this.tiles.get(key);
    if (!tile) {
      const nodes = svg("g", { class: "tile" });
      tile = { nodes, edges: [], left: Infinity, top: Infinity, right: -Infinity, bottom: -Infinity, shown: true };
      this.tiles.set(key, tile);
    }
    return tile;
  }
}

function widen(tile, x, y) {
  tile.left = Math.min(tile.left, x);
  tile.top = Math.min(tile.top, y);
  tile.right = Math.max(tile.right, x);
  tile.bottom = Math.max(tile.bottom, y);
}
