// What every dashboard page shares: the API client (the session cookie goes by itself; a request that
// changes state adds the page's CSRF token), DOM building without innerHTML (run data never becomes
// markup), time formats, and the header's sign-out button.

export const csrfToken = document.querySelector('meta[name="csrf-token"]')?.content ?? "";

export class ApiError extends Error {
  constructor(status, body) {
    super(body?.error ?? `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

export async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-CSRF-Token"] = csrfToken;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  if (response.status === 401) {
    location.assign(`/ui/login?next=${encodeURIComponent(location.pathname)}`);
    throw new ApiError(401, { error: "signed out" });
  }
  if (response.status === 204) return null;
  const data = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

// el("a", {href: "/x", class: "c", dataset: {stepId: "s"}}, "text", child) -> an element
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  setAttributes(node, attributes);
  node.append(...children.flat().filter((child) => child !== null && child !== undefined && child !== false));
  return node;
}

const SVG = "http://www.w3.org/2000/svg";

export function svg(tag, attributes = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  setAttributes(node, attributes);
  node.append(...children.flat().filter((child) => child !== null && child !== undefined && child !== false));
  return node;
}

function setAttributes(node, attributes) {
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "dataset") Object.assign(node.dataset, value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
}

export function formatTime(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const date = new Date(seconds * 1000);
  return date.toLocaleString(undefined, { hour12: false });
}

export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 2 : 1)} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

export function runDuration(run, now = Date.now() / 1000) {
  if (!run.started_at) return null;
  return (run.finished_at ?? now) - run.started_at;
}

// What a person typed in a value field: JSON when it parses (`3`, `true`, `["a"]`), else the text itself,
// as `dagrun run -i K=V` reads a value.
export function valueOf(text) {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

export function statusBadge(status) {
  return el("span", { class: "badge", "data-status": status }, status);
}

// A line of text for an error a request failed with, shown where the action was.
export function describeError(error) {
  if (error instanceof ApiError) return error.message;
  return `the server did not answer: ${error.message}`;
}

function setUpHeader() {
  const page = document.querySelector("script[type=module]")?.getAttribute("src")?.match(/([a-z_]+)\.js$/)?.[1];
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (link.dataset.nav === page || (page === "run" && link.dataset.nav === "runs")) link.setAttribute("aria-current", "page");
  }
  document.getElementById("sign-out")?.addEventListener("click", async () => {
    try {
      await api("/ui/logout", { method: "POST" });
    } finally {
      location.assign("/ui/login");
    }
  });
}

setUpHeader();

// `action` called once `delayMs` have passed without another call (typing pauses): the last call's
// arguments win.
export function debounce(action, delayMs) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => action(...args), delayMs);
  };
}
