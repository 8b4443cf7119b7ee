"""How the instances of a mapped step are named: `ID[0]`, `ID[1]`, ... (`engine.mapping` runs them).

A light module of its own: the views that show a run read instance ids without loading the flow model.
"""

from __future__ import annotations


def instance_id(step_id: str, index: int) -> str:
    return f"{step_id}[{index}]"


def map_of(step_id: str) -> str:
    """The mapped step an instance id belongs to (an id that names no instance is its own)."""
    head, bracket, tail = step_id.rpartition("[")
    return head if bracket and tail.endswith("]") and tail[:-1].isdigit() else step_id
