"""A layered drawing of a flow's DAG, for the dashboard: each step's layer (dependencies above it) and its
place in the layer (ordered to cross few edges).

Layers by longest path from a root, so every edge points down at least one layer; then a few sweeps of the
barycenter heuristic (Sugiyama's), down and up, each moving a step toward the mean place of its
neighbours in the layer before. Linear in the edges per sweep: a 5,000-step flow lays out in tens of
milliseconds. Read from a flow document as stored (already valid), so that drawing a run parses no script.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

SWEEPS = 4  # down, up, down, up: more moves little on real flows


class Node(NamedTuple):
    step_id: str
    layer: int
    order: int  # the place in its layer, from 0


def layered_layout(step_ids: Sequence[str], depends_on: Mapping[str, Sequence[str]]) -> list[Node]:
    """The nodes of a DAG given in topological-compatible or any order (`depends_on` of each id, ids not in
    `step_ids` ignored), in `step_ids` order."""
    known = set(step_ids)
    parents = {step_id: [p for p in depends_on.get(step_id, ()) if p in known] for step_id in step_ids}
    layer = _longest_path_layers(step_ids, parents)
    layers: list[list[str]] = [[] for _ in range(max(layer.values(), default=-1) + 1)]
    for step_id in step_ids:
        layers[layer[step_id]].append(step_id)
    children: dict[str, list[str]] = {step_id: [] for step_id in step_ids}
    for step_id, ups in parents.items():
        for parent in ups:
            children[parent].append(step_id)
    for sweep in range(SWEEPS):
        downward = sweep % 2 == 0
        neighbours = parents if downward else children
        indices = range(1, len(layers)) if downward else range(len(layers) - 2, -1, -1)
        for index in indices:
            layers[index] = _by_barycenter(layers[index], neighbours, layers[index - 1 if downward else index + 1])
    order = {step_id: place for members in layers for place, step_id in enumerate(members)}
    return [Node(step_id, layer[step_id], order[step_id]) for step_id in step_ids]


def _longest_path_layers(step_ids: Sequence[str], parents: Mapping[str, list[str]]) -> dict[str, int]:
    """Each step one layer below its lowest parent; iterative (a 5,000-step chain must not recurse)."""
    layer: dict[str, int] = {}
    for start in step_ids:
        stack = [start]
        while stack:
            step_id = stack[-1]
            if step_id in layer:
                stack.pop()
                continue
            pending = [parent for parent in parents[step_id] if parent not in layer]
            if pending:
                stack.extend(pending)
                continue
            layer[step_id] = 1 + max((layer[parent] for parent in parents[step_id]), default=-1)
            stack.pop()
    return layer


def _by_barycenter(members: list[str], neighbours: Mapping[str, list[str]], fixed: list[str]) -> list[str]:
    """`members` ordered by the mean place of their neighbours in the fixed layer; a step with none there
    keeps its place (stable sort on its current index)."""
    place = {step_id: index for index, step_id in enumerate(fixed)}
    keys = {}
    for index, step_id in enumerate(members):
        around = [place[other] for other in neighbours[step_id] if other in place]
        keys[step_id] = sum(around) / len(around) if around else float(index)
    return sorted(members, key=keys.__getitem__)


def flow_graph(document: Mapping[str, Any]) -> dict[str, Any]:
    """The dashboard's drawing of a stored flow document: its nodes (id, layer, order, kind, its declared
    inputs, and what marks a mapped, conditional, waiting or sub-flow step) and its edges (dependency,
    dependent)."""
    steps = [step for step in document.get("steps", []) if isinstance(step, dict) and isinstance(step.get("id"), str)]
    ids = [step["id"] for step in steps]
    depends_on = {step["id"]: [d for d in step.get("depends_on", []) if isinstance(d, str)] for step in steps}
    by_id = {step["id"]: step for step in steps}
    nodes = []
    for node in layered_layout(ids, depends_on):
        step = by_id[node.step_id]
        nodes.append({"id": node.step_id, "layer": node.layer, "order": node.order, **_marks(step)})
    edges = [[parent, step_id] for step_id in ids for parent in depends_on[step_id] if parent in by_id]
    return {"nodes": nodes, "edges": edges}


def _marks(step: Mapping[str, Any]) -> dict[str, Any]:
    marks: dict[str, Any] = {"kind": _kind(step)}
    if isinstance(step.get("map"), dict):
        marks["map_over"] = step["map"].get("over")
    if isinstance(step.get("when"), str):
        marks["when"] = step["when"]
    flow = step.get("flow")
    if flow is not None:
        marks["flow"] = flow if isinstance(flow, str) else (flow.get("name") if isinstance(flow, dict) else None)
    if isinstance(step.get("wait_for"), dict):
        marks["wait_for"] = [field for field in step["wait_for"].get("fields", []) if isinstance(field, str)]
    if isinstance(step.get("run_if"), str):
        marks["run_if"] = step["run_if"]
    if isinstance(step.get("inputs"), dict) and step["inputs"]:
        marks["inputs"] = step["inputs"]
    return marks


def _kind(step: Mapping[str, Any]) -> str:
    if step.get("flow") is not None:
        return "flow"
    if step.get("wait_for") is not None:
        return "wait"
    if step.get("map") is not None:
        return "map"
    return "script"
