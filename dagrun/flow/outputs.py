"""A flow's declared outputs (`"outputs": {"total": "${steps.load.grand_total}"}`): what its run gives back.

Each is exactly one reference to a step's output, checked like an input's (the step exists, and declares
the key when it declares its outputs); a run's outputs are resolved from its steps' outputs when it ends,
so nothing new is stored. A flow run as a sub-flow gives them to the step that runs it. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from dagrun.errors import UnresolvedInput
from dagrun.flow.references import Loc, MalformedReference, Outputs, lookup, parse_reference

if TYPE_CHECKING:
    from dagrun.flow.model import Step

Finding = tuple[Loc, str]


def check_flow_outputs(outputs: Mapping[str, str], steps: Sequence[Step]) -> list[Finding]:
    """The problems of a flow's declared outputs, each at `outputs.NAME`."""
    by_id = {step.id: step for step in reversed(steps)}
    findings: list[Finding] = []
    for name, text in outputs.items():
        message = _problem(name, text, by_id)
        if message:
            findings.append((("outputs", name), message))
    return findings


def _problem(name: str, text: str, by_id: Mapping[str, Step]) -> str:
    reference = parse_reference(text)
    if isinstance(reference, MalformedReference):
        return f"flow output {name!r} is not one reference to a step's output ('${{steps.ID.KEY}}'): {reference.reason}"
    if reference.step_id is None:
        return f"flow output {name!r} refers to a flow input; it names a step's output ('${{steps.ID.KEY}}')"
    step = by_id.get(reference.step_id)
    if step is None:
        return f"flow output {name!r} refers to unknown step {reference.step_id!r} in {text!r}"
    if step.outputs is not None and reference.key not in step.outputs:
        listed = ", ".join(step.outputs) or "none"
        return (
            f"flow output {name!r} refers to {text!r}, but step {step.id!r} declares no output "
            f"{reference.key!r} (it declares: {listed})"
        )
    return ""


def resolve_flow_outputs(outputs: Mapping[str, str], outputs_of: Outputs) -> dict[str, Any]:
    """The run's outputs from its steps' outputs: null for a step that did not succeed, or that succeeded
    without the key (a step that declares its outputs cannot)."""
    resolved: dict[str, Any] = {}
    for name, text in outputs.items():
        reference = parse_reference(text)
        if isinstance(reference, MalformedReference):  # validation refuses it; a stored run was validated
            resolved[name] = None
            continue
        try:
            resolved[name] = lookup(reference, f"flow output {name!r}")({}, outputs_of)
        except UnresolvedInput:
            resolved[name] = None
    return resolved
