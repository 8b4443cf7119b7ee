"""Flow limits: the largest timeouts, attempts and waits a flow may ask for, set by whoever runs dagrun.

Validation refuses a flow that writes a larger value, naming its place and the maximum. A limit is never
below what a flow gets without asking (a 30 s timeout, one attempt, a 60 s backoff cap), so the values a
step inherits are within the limits too. Pure: a frozen value and a check. The numbers live here, not in
the schema that uses them, so that the command line offers them without loading pydantic.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from dagrun.flow.references import Loc, format_location

if TYPE_CHECKING:
    from pydantic import BaseModel

# What a step gets without asking (the schema's defaults).
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MAX_ATTEMPTS = 1
DEFAULT_MAX_BACKOFF_S = 60.0
# The default limits: the largest numbers a flow may ask for unless whoever runs dagrun sets others.
# Generous for real work, yet one flow from any client holds a sandbox process a day per attempt at most,
# and an attempt count past a hundred is a loop, not a retry policy.
LIMIT_TIMEOUT_S = 24 * 3600.0  # the longest batch job people run as one step
LIMIT_ATTEMPTS = 100
LIMIT_BACKOFF_S = 3600.0  # a wait between attempts holds no process, but it holds the step (and its run)
LIMIT_WAIT_S = 30 * 24 * 3600.0  # a person's approval can take weeks; waiting holds no process

# The least each limit may be: what a flow that asks for nothing gets (a wait_for without timeout_s waits
# indefinitely, so any positive wait limit leaves it valid; the floor is there to refuse 0).
FLOORS = {
    "max_timeout_s": DEFAULT_TIMEOUT_S,
    "max_attempts": DEFAULT_MAX_ATTEMPTS,
    "max_backoff_s": DEFAULT_MAX_BACKOFF_S,
    "max_wait_s": 1.0,
}

# Where each limit applies, inside a step or inside `defaults` (a field, or a field of it), and what its
# values count; grouped by field, so that a step that writes none of these costs one set test.
_BOUNDED: tuple[tuple[str, tuple[tuple[str | None, str, str], ...]], ...] = (
    ("timeout_s", ((None, "max_timeout_s", "seconds"),)),
    (
        "retries",
        (
            ("max_attempts", "max_attempts", "attempts"),
            ("backoff_s", "max_backoff_s", "seconds"),
            ("max_backoff_s", "max_backoff_s", "seconds"),
        ),
    ),
    ("wait_for", (("timeout_s", "max_wait_s", "seconds"),)),
)
_BOUNDING = frozenset(field for field, _ in _BOUNDED)


@dataclass(frozen=True, slots=True)
class FlowLimits:
    """The largest value a flow may write for a step's `timeout_s`, `retries.max_attempts`, `retries.backoff_s`
    and `retries.max_backoff_s` (in a step or in `defaults`), and `wait_for.timeout_s`. ValueError below FLOORS."""

    max_timeout_s: float = LIMIT_TIMEOUT_S
    max_attempts: int = LIMIT_ATTEMPTS
    max_backoff_s: float = LIMIT_BACKOFF_S  # bounds both backoff_s and max_backoff_s
    max_wait_s: float = LIMIT_WAIT_S

    def __post_init__(self) -> None:
        for field in fields(self):
            value, floor = getattr(self, field.name), FLOORS[field.name]
            if not value >= floor:  # NaN too
                raise ValueError(f"flow limit {field.name} must be at least {floor:g}, not {value!r}")


DEFAULT_LIMITS = FlowLimits()
# For a flow validated before: a stored run was checked against the limits of the server that took it, and
# a later orchestrator with lower ones still drives it (refusing it then would strand a run it accepted).
NO_LIMITS = FlowLimits(math.inf, sys.maxsize, math.inf, math.inf)


def bounded_fields(limit: str) -> list[str]:
    """The fields of a step (or of `defaults`) that `limit` bounds: ``["retries.backoff_s", ...]``."""
    return [
        format_location(_place(field, inner))
        for field, bounded in _BOUNDED
        for inner, name, _ in bounded
        if name == limit
    ]


def option_name(limit: str) -> str:
    """The command-line option that sets a limit: ``max_timeout_s`` -> ``--max-timeout-s``."""
    return "--" + limit.replace("_", "-")


def over_limits(model: BaseModel, limits: FlowLimits) -> list[tuple[Loc, str]]:
    """The values written in a step or in `defaults` (`model`) that are over `limits`, each with its place
    inside `model`. Values not written are not checked: they are defaults, never over a limit."""
    given = model.model_fields_set
    if given.isdisjoint(_BOUNDING):
        return []
    found: list[tuple[Loc, str]] = []
    for field, bounded in _BOUNDED:
        if field not in given:
            continue
        node = getattr(model, field)
        for inner, limit, unit in bounded:
            if inner is not None and inner not in node.model_fields_set:
                continue
            value, maximum = node if inner is None else getattr(node, inner), getattr(limits, limit)
            if value is not None and value > maximum:  # None: a wait_for without a timeout
                message = f"{_number(value)} is over the maximum of {_number(maximum)} {unit} ({option_name(limit)})"
                found.append((_place(field, inner), message + "; lower it"))
    return found


def _place(field: str, inner: str | None) -> Loc:
    return (field,) if inner is None else (field, inner)


def _number(value: float) -> str:
    return f"{value:.15g}"  # 86400, 0.5, 1e+300: no float noise, no exponent for ordinary values
