"""The Flow of a stored run: what an orchestrator that drives it, or a rerun of it, works from."""

from __future__ import annotations

import functools

import orjson

from dagrun.errors import FlowError
from dagrun.flow.limits import NO_LIMITS
from dagrun.flow.model import Flow
from dagrun.flow.parser import parse_flow
from dagrun.sandbox.policy import check_script
from dagrun.store.base import RunRecord


def flow_of(run: RunRecord) -> Flow:
    """FlowError naming the run when its stored flow does not parse (stored by an older dagrun, or
    written by hand)."""
    try:
        return _stored_flow(orjson.dumps(run.flow, option=orjson.OPT_SORT_KEYS))
    except FlowError as exc:
        raise FlowError(exc.problems, source=f"run {run.run_id}") from exc


@functools.lru_cache(maxsize=64)
def _stored_flow(document: bytes) -> Flow:
    """An orchestrator that adopts many runs of one flow parses it once (parsing compiles every script).
    Flows are immutable, so runs may share one. Without limits: they applied when the run was submitted,
    and a run once accepted stays runnable by any orchestrator."""
    return parse_flow(orjson.loads(document), source="stored run", check_script=check_script, limits=NO_LIMITS)
