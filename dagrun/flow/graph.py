"""The dependency graph of a flow: edges run from a dependency to its dependent.

Checks (unknown, self and repeated dependencies, duplicate ids, cycles, references that would race) are
linear in steps + edges, but for references to steps that are not direct dependencies: each of those
explores ancestors, at most once per step. Each problem comes back as a (location, message) pair so the
caller can order problems as they appear in the file (drawing the DAG is `drawing`'s). Pure: no I/O.
"""

from __future__ import annotations

import difflib
import heapq
import logging
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import networkx as nx

from dagrun.errors import CycleError
from dagrun.flow.references import TOO_DEEP, Loc, MalformedReference, Reference

if TYPE_CHECKING:
    from dagrun.flow.model import Flow, Step

logger = logging.getLogger(__name__)

Finding = tuple[Loc, str]  # where (a JSON location) and what
_MAX_IDS_FOR_SUGGESTIONS = 2000  # difflib is linear per lookup: no hints in huge flows


def _first_index(steps: Sequence[Step]) -> dict[str, int]:
    first: dict[str, int] = {}
    for position, step in enumerate(steps):
        first.setdefault(step.id, position)
    return first


def _unknown_dependency(step: Step, dep: str, known: Mapping[str, int]) -> str:
    message = f"step {step.id!r} depends on unknown step {dep!r}"
    if len(known) <= _MAX_IDS_FOR_SUGGESTIONS:
        close = difflib.get_close_matches(dep, list(known), n=1)
        if close:
            message += f"; did you mean {close[0]!r}?"
    return message


def check_graph(
    steps: Sequence[Step], flow_inputs: Mapping[str, Any] | None, *, check_ancestry: bool = True
) -> list[Finding]:
    """The dependency problems, then the reference problems (`_check_references`), sharing one topological
    sort. Steps are read as given (they may be incomplete stand-ins for invalid ones)."""
    findings, order = _check_dependencies(steps)
    return findings + _check_references(steps, flow_inputs, check_ancestry=check_ancestry, order=order)


def _check_dependencies(steps: Sequence[Step]) -> tuple[list[Finding], list[str]]:
    """The findings, and the topological order of the steps that are on no cycle."""
    first = _first_index(steps)
    findings: list[Finding] = []
    dependents: dict[str, list[str]] = {step_id: [] for step_id in first}
    for position, step in enumerate(steps):
        step_id = step.id
        is_first = first[step_id] == position
        if not is_first:
            original = steps[first[step_id]].index
            findings.append((("steps", step.index, "id"), f"duplicate step id {step_id!r} (also steps[{original}])"))
        deps = dict.fromkeys(step.depends_on)
        if len(deps) < len(step.depends_on) or step_id in deps or not first.keys() >= deps.keys():
            findings.extend(_dependency_problems(step, first))
        if is_first:
            for dep in deps:
                if dep in first and dep != step_id:
                    dependents[dep].append(step_id)
    order = _kahn_order(dependents)
    if len(order) < len(dependents):  # what Kahn's algorithm could not take is on or behind a cycle
        by_id = _first_steps(steps)
        for cycle in find_cycles(dependents, order=first):
            start = by_id[cycle[0]]
            where = ("steps", start.index, "depends_on", start.depends_on.index(cycle[-2]))
            findings.append((where, f"step {start.id!r} is in a dependency cycle: {' -> '.join(cycle)}"))
    return findings, order


def _dependency_problems(step: Step, known: Mapping[str, int]) -> list[Finding]:
    """Self, unknown and repeated dependencies of one step (the rare case: the caller checks first)."""
    findings: list[Finding] = []
    seen: set[str] = set()
    for j, dep in enumerate(step.depends_on):
        where: Loc = ("steps", step.index, "depends_on", j)
        if dep == step.id:
            findings.append((where, f"step {step.id!r} depends on itself"))
        elif dep not in known:
            findings.append((where, _unknown_dependency(step, dep, known)))
        elif dep in seen:
            findings.append((where, f"step {step.id!r} lists dependency {dep!r} twice"))
        seen.add(dep)
    return findings


def _kahn_order(dependents: Mapping[str, Iterable[str]]) -> list[str]:
    in_degree = dict.fromkeys(dependents, 0)
    for targets in dependents.values():
        for target in targets:
            in_degree[target] += 1
    ready = deque(node for node, degree in in_degree.items() if degree == 0)
    order: list[str] = []
    while ready:
        node = ready.popleft()
        order.append(node)
        for target in dependents[node]:
            in_degree[target] -= 1
            if in_degree[target] == 0:
                ready.append(target)
    return order


def find_cycles(dependents: Mapping[str, Iterable[str]], *, order: Mapping[str, int]) -> list[tuple[str, ...]]:
    """One shortest cycle per strongly connected component, closed (a, b, a), starting at the member that
    comes first in `order`; cycles sorted the same way. Self-loops are ignored (reported elsewhere)."""
    graph: nx.DiGraph[str] = nx.DiGraph()
    graph.add_nodes_from(dependents)
    graph.add_edges_from((node, target) for node, targets in dependents.items() for target in targets if node != target)
    cycles: list[tuple[str, ...]] = []
    for component in nx.strongly_connected_components(graph):
        if len(component) > 1:
            start = min(component, key=order.__getitem__)
            cycles.append(_shortest_cycle(graph, start, component))
    return sorted(cycles, key=lambda cycle: order[cycle[0]])


def _shortest_cycle(graph: nx.DiGraph[str], start: str, component: set[str]) -> tuple[str, ...]:
    parent: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for target in graph.successors(node):
            if target == start:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return (*reversed(path), start)
            if target in component and target not in parent:
                parent[target] = node
                queue.append(target)
    raise AssertionError(f"no cycle through {start!r} in its strongly connected component")


def topological_order(flow: Flow) -> list[str]:
    """Step ids with every step after all of its dependencies, ties in file order. CycleError names a cycle."""
    dependents: dict[str, list[str]] = {step.id: [] for step in flow.steps}
    for step in flow.steps:
        for dep in dict.fromkeys(step.depends_on):
            if dep in dependents and dep != step.id:
                dependents[dep].append(step.id)
    order = _kahn_order(dependents)
    if len(order) < len(dependents):
        positions = {step.id: step.index for step in flow.steps}
        raise CycleError(find_cycles(dependents, order=positions)[0], source=flow.source)
    return order


def ancestors(flow: Flow, step_id: str) -> set[str]:
    """Every step that `step_id` depends on, directly or not. KeyError for an unknown step."""
    return _ancestors(flow.step(step_id), _first_steps(flow.steps))


def downstream(flow: Flow, step_ids: Iterable[str]) -> set[str]:
    """`step_ids` and every step that depends on one of them, directly or not."""
    dependents: dict[str, list[str]] = {}
    for step in flow.steps:
        for dep in step.depends_on:
            dependents.setdefault(dep, []).append(step.id)
    found: set[str] = set()
    stack = list(step_ids)
    while stack:
        step_id = stack.pop()
        if step_id not in found:
            found.add(step_id)
            stack.extend(dependents.get(step_id, ()))
    return found


def _first_steps(steps: Sequence[Step]) -> dict[str, Step]:
    return {step.id: step for step in reversed(steps)}


def _ancestors(step: Step, by_id: Mapping[str, Step]) -> set[str]:
    found: set[str] = set()
    stack = [dep for dep in step.depends_on if dep in by_id]
    while stack:
        dep = stack.pop()
        if dep not in found:
            found.add(dep)
            stack.extend(parent for parent in by_id[dep].depends_on if parent in by_id and parent not in found)
    return found


def _check_references(
    steps: Sequence[Step], flow_inputs: Mapping[str, Any] | None, *, check_ancestry: bool, order: list[str]
) -> list[Finding]:
    """Inputs nested too deep, malformed references and conditions, references (in inputs and in `when`) to
    unknown steps, to steps that are not ancestors (a race; not checked without `check_ancestry`), to
    undeclared outputs, and to undeclared flow inputs (not checked when `flow_inputs` is None: unknown).
    `order` is the topological order of the steps on no cycle. A reference to a direct dependency costs
    O(1); only references to other steps explore ancestors, once per step and no further than the
    referenced step's topological rank."""
    by_id = _first_steps(steps)
    ranks: dict[str, int] | None = None
    findings: list[Finding] = []
    for step in steps:
        findings.extend(_malformed(step))
        upstream: _Upstream | None = None
        # a join step may reference thousands of direct dependencies: test membership in a set
        direct = step.depends_on if len(step.depends_on) < 8 else frozenset(step.depends_on)
        for loc, reference in placed_references(step):
            target = reference.step_id
            if target is None:
                message = _check_flow_reference(step, reference, flow_inputs) or _check_mapped_input(
                    step, loc, reference, flow_inputs
                )
            elif not check_ancestry or target in direct or target not in by_id or target == step.id:
                message = _check_step_reference(step, reference, by_id, is_ancestor=True)
            else:
                if upstream is None:
                    if ranks is None:  # steps on a cycle get no rank (the flow is refused for the cycle anyway)
                        ranks = dict(zip(order, range(len(order)), strict=True))
                    upstream = _Upstream(step, by_id, ranks)
                message = _check_step_reference(step, reference, by_id, is_ancestor=target in upstream)
            if message:
                findings.append((loc, message))
    return findings


def _malformed(step: Step) -> list[Finding]:
    """A step's malformed references, inputs nested too deep, and a malformed condition."""
    compiled = step.compiled_inputs  # compiled once: the run resolves the same object
    where: Loc = ("steps", step.index, "inputs")
    findings: list[Finding] = [
        ((*where, *bad.loc), f"step {step.id!r} has a malformed reference {bad.text!r}: {bad.reason}")
        for bad in compiled.malformed
    ]
    findings.extend(((*where, *loc), TOO_DEEP) for loc in compiled.too_deep)
    condition = step.condition
    if condition is not None and condition.malformed is not None:
        findings.append(
            (("steps", step.index, "when"), f"step {step.id!r} has a malformed condition: {condition.malformed}")
        )
    over = step.map.reference if step.map is not None else None
    if isinstance(over, MalformedReference):
        message = f"step {step.id!r} maps over {over.text!r}, which is not one reference: {over.reason}"
        findings.append((("steps", step.index, "map", "over"), message))
    return findings


def placed_references(step: Step) -> Iterator[tuple[Loc, Reference]]:
    """Each reference of a step (its inputs', its condition's, the list it maps over) with its place."""
    where: Loc = ("steps", step.index, "inputs")
    for reference in step.compiled_inputs.references:
        yield (*where, *reference.loc), reference
    condition = step.condition
    if condition is not None and condition.reference is not None:
        yield ("steps", step.index, "when"), condition.reference
    over = step.map.reference if step.map is not None else None
    if isinstance(over, Reference):
        yield ("steps", step.index, "map", "over"), over


class _Upstream:
    """The ancestors of one step, explored lazily in decreasing topological rank: every path from a
    step X down to this one runs through higher ranks than X's, so asking about X stops once the
    ancestors ranked above X have been expanded. Later questions resume where earlier ones stopped."""

    def __init__(self, step: Step, by_id: Mapping[str, Step], ranks: Mapping[str, int]) -> None:
        self._by_id = by_id
        self._ranks = ranks
        self._found: set[str] = set()
        self._heap: list[tuple[int, str]] = []  # (-rank, id): highest rank first
        self._add(step.depends_on)

    def _add(self, ids: Iterable[str]) -> None:
        for step_id in ids:
            if step_id in self._by_id and step_id not in self._found:
                self._found.add(step_id)
                heapq.heappush(self._heap, (-self._ranks.get(step_id, len(self._ranks)), step_id))

    def __contains__(self, step_id: str) -> bool:
        floor = self._ranks.get(step_id, -1)  # no rank (a cycle): explore everything
        while self._heap and -self._heap[0][0] > floor:
            _, expanded = heapq.heappop(self._heap)
            self._add(self._by_id[expanded].depends_on)
        return step_id in self._found


def _check_flow_reference(step: Step, reference: Reference, flow_inputs: Mapping[str, Any] | None) -> str:
    if flow_inputs is None or reference.key in flow_inputs:
        return ""
    declared = ", ".join(sorted(flow_inputs)) or "none"
    return (
        f"step {step.id!r} references undeclared flow input {reference.key!r}; "
        f"the flow declares: {declared} (declare it in the flow's 'inputs')"
    )


def _check_mapped_input(step: Step, loc: Loc, reference: Reference, flow_inputs: Mapping[str, Any] | None) -> str:
    """A map over a flow input whose default is not a list (nor null: "give it") fails every run that keeps it."""
    if loc[-2:] != ("map", "over") or flow_inputs is None:
        return ""
    default = flow_inputs[reference.key]
    if default is None or isinstance(default, list):
        return ""
    return (
        f"step {step.id!r} maps over flow input {reference.key!r}, whose default is a {type(default).__name__}, "
        "not a list (make it a list, or null for one each run must give)"
    )


def _check_step_reference(step: Step, reference: Reference, by_id: Mapping[str, Step], *, is_ancestor: bool) -> str:
    target_id = reference.step_id
    assert target_id is not None
    if target_id == step.id:
        return f"step {step.id!r} references its own output {reference.text!r}"
    if target_id not in by_id:
        return f"step {step.id!r} references unknown step {target_id!r} in {reference.text!r}"
    if not is_ancestor:
        return (
            f"step {step.id!r} references {reference.text!r}, but {target_id!r} is not among its dependencies, "
            f"so it may not have run yet; add {target_id!r} to depends_on"
        )
    declared = by_id[target_id].outputs
    if declared is not None and reference.key not in declared:
        listed = ", ".join(declared) or "none"
        return (
            f"step {step.id!r} references {reference.text!r}, but step {target_id!r} declares no output "
            f"{reference.key!r} (it declares: {listed})"
        )
    return ""
