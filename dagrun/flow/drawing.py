"""A flow's DAG drawn for people: Graphviz DOT and Mermaid. A step that waits for a signal (a person) is a
diamond, a mapped step one node marked with its list, a sub-flow step a node naming its child flow, and an
edge into a step with a condition is dashed and labelled with it. Pure: no I/O."""

from __future__ import annotations

from dagrun.flow.model import Flow, Step


def _dot_quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


def _dot_node(step: Step) -> str:
    if step.wait_for is not None:
        return " [shape=diamond]"
    if step.map is not None:  # one node for all its instances, marked with its list
        return f" [shape=box3d, label={_dot_quote(_label(step))}]"
    if step.flow is not None:  # linked to the child flow's file, when it came from one
        file = step.flow_file
        link = "" if file is None else f", URL={_dot_quote(file)}, tooltip={_dot_quote(file)}"
        return f" [shape=component, label={_dot_quote(_label(step))}{link}]"
    return ""


def _label(step: Step) -> str:
    """A step's id, marked with its list (a mapped step) or its child flow (a sub-flow step)."""
    if step.map is not None:
        return f"{step.id} [map over {step.map.over}]"
    return step.id if step.flow is None else f"{step.id} [flow {step.flow.name}]"


def to_dot(flow: Flow) -> str:
    """Graphviz DOT: one node per step labelled by its id, a box, a diamond for a step that waits for a
    signal, a 3-D box labelled with its list for a mapped step, a component labelled with its child flow (and
    linked to its file) for a sub-flow step; an edge dependency -> dependent, dashed and
    labelled with the condition into a step with one."""
    lines = [f"digraph {_dot_quote(flow.name)} {{", "  node [shape=box];"]
    lines.extend(f"  {_dot_quote(step.id)}{_dot_node(step)};" for step in flow.steps)
    for step in flow.steps:
        style = "" if step.when is None else f" [style=dashed, label={_dot_quote(step.when)}]"
        lines.extend(f"  {_dot_quote(dep)} -> {_dot_quote(step.id)}{style};" for dep in dict.fromkeys(step.depends_on))
    lines.append("}")
    return "\n".join(lines) + "\n"


def _mermaid_label(text: str) -> str:
    # Mermaid has no backslash escapes: anything that could end the label or be read as markup becomes
    # an entity code (#quot; style, numeric).
    return "".join(char if char.isalnum() or char in " _-.:/" else f"#{ord(char)};" for char in text)


_MERMAID_SHAPES = {"wait_for": ("{", "}"), "map": ("[[", "]]"), "flow": ("[/", "/]"), "": ("[", "]")}


def to_mermaid(flow: Flow) -> str:
    """A Mermaid flowchart: nodes are s0, s1, ... (ids never clash with Mermaid keywords), labelled by step id;
    a rectangle, a rhombus for a step that waits for a signal, a subroutine box labelled with its list for a
    mapped step, a parallelogram labelled with its child flow for a sub-flow step. An edge into a step with a
    condition is dotted and labelled with it."""
    node = {step.id: f"s{position}" for position, step in reversed(list(enumerate(flow.steps)))}
    lines = ["flowchart TD"]
    for position, step in enumerate(flow.steps):
        shape = "wait_for" if step.wait_for else "map" if step.map else "flow" if step.flow else ""
        opening, closing = _MERMAID_SHAPES[shape]
        lines.append(f'  s{position}{opening}"{_mermaid_label(_label(step))}"{closing}')
    for step in flow.steps:
        arrow = "-->" if step.when is None else f'-.->|"{_mermaid_label(step.when)}"|'
        lines.extend(f"  {node[dep]} {arrow} {node[step.id]}" for dep in dict.fromkeys(step.depends_on) if dep in node)
    return "\n".join(lines) + "\n"
