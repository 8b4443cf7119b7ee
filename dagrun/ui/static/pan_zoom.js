// Pan (drag) and zoom (wheel, buttons, fit) of a drawing in an <svg>: one transform on the group that holds
// the drawing, so moving a 5,000-node graph sets one attribute, and `onMove` learns the area now in sight.
// Far out, the svg gets the class `far`, and the stylesheet drops the labels nobody could read (what keeps
// panning a huge graph smooth). Moving reads no layout: the svg's size is kept from a ResizeObserver.

const MIN_SCALE = 0.02;
const MAX_SCALE = 3;
const FAR_SCALE = 0.4; // below this, labels are too small to read
const READABLE_SCALE = 0.8; // a graph that only fits below FAR_SCALE opens at this zoom, at its top
const MARGIN = 24; // pixels around a fitted drawing
const DRAG_PIXELS = 4; // a press that moves less than this is a click, not a drag

export class PanZoom {
  // `size` is the drawing's {width, height} in its own units, drawn from (0, 0); `onMove(area)` gets the
  // {left, top, right, bottom} of the drawing in sight after each move.
  constructor(svg, viewport, size, { onMove }) {
    this.svg = svg;
    this.viewport = viewport;
    this.size = size;
    this.onMove = onMove;
    this.scale = 1;
    this.x = 0;
    this.y = 0;
    this.view = { width: 0, height: 0 }; // the svg's size on screen
    new ResizeObserver(([entry]) => {
      this.view = { width: entry.contentRect.width, height: entry.contentRect.height };
      this.#apply();
    }).observe(svg);
    svg.addEventListener("wheel", (event) => this.#onWheel(event), { passive: false });
    svg.addEventListener("pointerdown", (event) => this.#onPointerDown(event));
  }

  // The first view: the whole drawing if it can be read that way, else a readable zoom at its top.
  showInitial() {
    this.fit();
    if (this.scale >= FAR_SCALE) return;
    this.scale = READABLE_SCALE;
    this.x = (this.view.width - this.size.width * this.scale) / 2;
    this.y = MARGIN;
    this.#apply();
  }

  fit() {
    const { width, height } = this.#measure();
    const fitting = Math.min((width - 2 * MARGIN) / this.size.width, (height - 2 * MARGIN) / this.size.height, 1);
    this.scale = clamp(fitting, MIN_SCALE, MAX_SCALE);
    this.x = (width - this.size.width * this.scale) / 2;
    this.y = (height - this.size.height * this.scale) / 2;
    this.#apply();
  }

  // Zoom by `factor` keeping the point at (`atX`, `atY`) of the svg (its centre by default) in place.
  zoomBy(factor, atX, atY) {
    const pointX = atX ?? this.view.width / 2;
    const pointY = atY ?? this.view.height / 2;
    const scale = clamp(this.scale * factor, MIN_SCALE, MAX_SCALE);
    this.x = pointX - ((pointX - this.x) * scale) / this.scale;
    this.y = pointY - ((pointY - this.y) * scale) / this.scale;
    this.scale = scale;
    this.#apply();
  }

  // The svg's size now (the first fit comes before the ResizeObserver has told it).
  #measure() {
    const { width, height } = this.svg.getBoundingClientRect();
    this.view = { width, height };
    return this.view;
  }

  #apply() {
    this.viewport.setAttribute("transform", `translate(${this.x} ${this.y}) scale(${this.scale})`);
    this.svg.classList.toggle("far", this.scale < FAR_SCALE);
    this.onMove({
      left: -this.x / this.scale,
      top: -this.y / this.scale,
      right: (this.view.width - this.x) / this.scale,
      bottom: (this.view.height - this.y) / this.scale,
    });
  }

  #onWheel(event) {
    event.preventDefault();
    const box = this.svg.getBoundingClientRect();
    this.zoomBy(Math.exp(-event.deltaY * 0.0015), event.clientX - box.left, event.clientY - box.top);
  }

  // A drag pans; the pointer is captured only once it really moves, so that a click still reaches the node
  // under it.
  #onPointerDown(event) {
    if (event.button !== 0 || event.target.closest("a")) return;
    const start = { x: event.clientX, y: event.clientY, panX: this.x, panY: this.y };
    const drag = new AbortController(); // ends every listener of this press at once
    let dragging = false;
    const move = (moved) => {
      const dx = moved.clientX - start.x;
      const dy = moved.clientY - start.y;
      if (!dragging && Math.hypot(dx, dy) < DRAG_PIXELS) return;
      if (!dragging) {
        dragging = true;
        this.svg.setPointerCapture(event.pointerId);
        this.svg.classList.add("dragging");
      }
      this.x = start.panX + dx;
      this.y = start.panY + dy;
      this.#apply();
    };
    const end = () => {
      drag.abort();
      this.svg.classList.remove("dragging");
    };
    this.svg.addEventListener("pointermove", move, { signal: drag.signal });
    this.svg.addEventListener("pointerup", end, { signal: drag.signal });
    this.svg.addEventListener("pointercancel", end, { signal: drag.signal });
  }
}

function clamp(value, low, high) {
  return Math.min(Math.max(value, low), high);
}
