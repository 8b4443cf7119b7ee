// What the runs page shows: a status, a flow name, an id prefix and a page. It lives in the URL's query
// (?status=&flow=&id=&page=) so that a reload or a shared link shows the same runs, and becomes the
// query of GET /v1/runs.

export const PAGE_SIZE = 50;
export const RUN_STATES = ["pending", "running", "paused", "succeeded", "failed", "cancelled", "interrupted"];

export function readFilter(search = location.search) {
  const query = new URLSearchParams(search);
  const status = query.get("status") ?? "";
  const page = Number.parseInt(query.get("page") ?? "1", 10);
  return {
    status: RUN_STATES.includes(status) ? status : "",
    flow: query.get("flow") ?? "",
    id: query.get("id") ?? "",
    page: Number.isSafeInteger(page) && page >= 1 ? page : 1,
  };
}

// Replaces (not pushes) the history entry: typing a filter would otherwise leave one entry per pause.
export function showInUrl(filter) {
  const query = new URLSearchParams();
  for (const name of ["status", "flow", "id"]) if (filter[name]) query.set(name, filter[name]);
  if (filter.page > 1) query.set("page", String(filter.page));
  const search = query.toString();
  history.replaceState(null, "", search ? `${location.pathname}?${search}` : location.pathname);
}

export function isFiltered(filter) {
  return Boolean(filter.status || filter.flow || filter.id);
}

// One run more than a page: whether it comes back says if there is a next page.
export function runsPath(filter) {
  const query = new URLSearchParams({
    counts: "true",
    limit: String(PAGE_SIZE + 1),
    offset: String((filter.page - 1) * PAGE_SIZE),
  });
  if (filter.status) query.set("status", filter.status);
  if (filter.flow) query.set("flow", filter.flow);
  if (filter.id) query.set("id_prefix", filter.id);
  return `/v1/runs?${query}`;
}
