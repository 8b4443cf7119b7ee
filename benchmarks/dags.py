"""The DAG shapes every dagrun benchmark runs, the same as the peers' (WIDE, CHAIN, LAYERED).

Every step computes ``v = 1 + sum(v of its dependencies)``; a run is correct when the sinks' values
equal `expected`. A DAG is ``{step: [dependencies]}`` in topological order.
"""

from __future__ import annotations

import json
import time
from typing import Any

SHAPES = ("WIDE", "CHAIN", "LAYERED")
STEP_SCRIPT = "outputs['v'] = 1 + sum(inputs.values())"


def wide(n: int = 5000) -> dict[str, list[str]]:
    dag: dict[str, list[str]] = {"root": []}
    dag.update({f"w{i}": ["root"] for i in range(n)})
    dag["join"] = [f"w{i}" for i in range(n)]
    return dag


def chain(n: int = 1000) -> dict[str, list[str]]:
    return {f"c{i}": ([f"c{i - 1}"] if i else []) for i in range(n)}


def layered(layers: int = 20, width: int = 100, fanin: int = 3) -> dict[str, list[str]]:
    offsets = [k - fanin // 2 for k in range(fanin)]
    dag: dict[str, list[str]] = {f"l0_{j}": [] for j in range(width)}
    for layer in range(1, layers):
        for j in range(width):
            dag[f"l{layer}_{j}"] = [f"l{layer - 1}_{(j + o) % width}" for o in offsets]
    return dag


def build(shape: str, size: int | None = None) -> dict[str, list[str]]:
    if shape == "WIDE":
        return wide(size or 5000)
    if shape == "CHAIN":
        return chain(size or 1000)
    if shape == "LAYERED":
        return layered(layers=(size or 2000) // 100)
    raise SystemExit(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}")


def sinks(dag: dict[str, list[str]]) -> list[str]:
    used = {d for deps in dag.values() for d in deps}
    return [name for name in dag if name not in used]


def expected(dag: dict[str, list[str]]) -> dict[str, int]:
    v: dict[str, int] = {}
    for name, deps in dag.items():
        v[name] = 1 + sum(v[d] for d in deps)
    return {s: v[s] for s in sinks(dag)}


def check(dag: dict[str, list[str]], got: dict[str, Any]) -> None:
    want = expected(dag)
    bad = [k for k in want if got.get(k) != want[k]]
    if bad:
        raise SystemExit(
            f"WRONG RESULT for {len(bad)} sinks, e.g. {bad[0]}: got {got.get(bad[0])!r}, want {want[bad[0]]!r}"
        )


def flow_document(name: str, dag: dict[str, list[str]]) -> dict[str, Any]:
    """The dagrun flow for a DAG: each step reads its dependencies' `v` through references."""
    steps = [
        {
            "id": step,
            "depends_on": deps,
            "script": STEP_SCRIPT,
            "inputs": {dep: f"${{steps.{dep}.v}}" for dep in deps},
            "outputs": ["v"],
        }
        for step, deps in dag.items()
    ]
    return {"name": name, "defaults": {"timeout_s": 60}, "steps": steps}


def emit(peer: str, mode: str, shape: str, steps: int, wall_s: float, **extra: Any) -> dict[str, Any]:
    line = {
        "peer": peer,
        "mode": mode,
        "shape": shape,
        "steps": steps,
        "wall_s": round(wall_s, 4),
        "steps_per_s": round(steps / wall_s, 1),
        "us_per_step": round(wall_s / steps * 1e6, 1),
        **extra,
    }
    print(json.dumps(line), flush=True)
    return line


now = time.perf_counter
