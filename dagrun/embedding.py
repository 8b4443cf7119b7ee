"""The shortest way to run a flow from a program: `run_flow` (blocking) and `arun_flow` (async).

Both open a store and an orchestrator for the one run and close them after; a long-lived program that
runs many flows should keep one `Orchestrator` instead. `parse_flow` and `load_flow` are the flow model's,
checking scripts with the sandbox policy that will run them.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from typing import Any

from dagrun.contract.executor import Executor, HostFunction
from dagrun.engine.orchestrator import DEFAULT_MAX_PARALLEL, Orchestrator, RunResult, StepListener
from dagrun.flow import loader, parser
from dagrun.flow.limits import DEFAULT_LIMITS, FlowLimits
from dagrun.flow.model import Flow
from dagrun.flow.scripts import ScriptChecker, ScriptReader
from dagrun.sandbox.policy import check_script as sandbox_check
from dagrun.store import DEFAULT_STORE, open_store
from dagrun.store.base import Store


def parse_flow(
    document: str | bytes | Mapping[str, Any],
    *,
    source: str = "<flow>",
    read_script: ScriptReader | None = None,
    check_script: ScriptChecker = sandbox_check,
    limits: FlowLimits = DEFAULT_LIMITS,
) -> Flow:
    """`dagrun.flow.parser.parse_flow`, checking each script with the sandbox policy unless told otherwise:
    a script the sandbox would refuse is a FlowError problem now, not a failed step later."""
    return parser.parse_flow(document, source=source, read_script=read_script, check_script=check_script, limits=limits)


def load_flow(
    path: str | os.PathLike[str],
    *,
    check_script: ScriptChecker = sandbox_check,
    limits: FlowLimits = DEFAULT_LIMITS,
    allow_outside_scripts: bool = False,
) -> Flow:
    """`dagrun.flow.loader.load_flow`, checking each script with the sandbox policy unless told otherwise."""
    return loader.load_flow(path, check_script=check_script, limits=limits, allow_outside_scripts=allow_outside_scripts)


def as_flow(flow: Flow | str | os.PathLike[str] | Mapping[str, Any]) -> Flow:
    """A Flow from a Flow, a path to a flow file, or a flow document; FlowError when invalid."""
    if isinstance(flow, Flow):
        return flow
    if isinstance(flow, Mapping):
        return parse_flow(flow)
    return load_flow(flow)


async def arun_flow(
    flow: Flow | str | os.PathLike[str] | Mapping[str, Any],
    *,
    inputs: Mapping[str, Any] | None = None,
    functions: Mapping[str, HostFunction] | None = None,
    store: Store | str = DEFAULT_STORE,
    executors: Mapping[str, Executor | str] | None = None,
    max_parallel: int = DEFAULT_MAX_PARALLEL,
    fail_fast: bool = False,
    processes: int | None = None,
    listener: StepListener | None = None,
) -> RunResult:
    """Run a flow to its end. `functions` are host functions scripts can call by name; `store` is a
    Store (left open) or a URL/directory (opened and closed here; default ``.dagrun``)."""
    the_flow = as_flow(flow)
    opened: Store | None = None
    if isinstance(store, str):
        store = opened = open_store(store)
    try:
        async with Orchestrator(store, executors=executors, functions=functions, processes=processes) as orchestrator:
            return await orchestrator.run(
                the_flow, inputs=inputs, max_parallel=max_parallel, fail_fast=fail_fast, listener=listener
            )
    finally:
        if opened is not None:
            await opened.aclose()


def run_flow(
    flow: Flow | str | os.PathLike[str] | Mapping[str, Any],
    **options: Any,
) -> RunResult:
    """Blocking `arun_flow`, for programs without an event loop (same keyword arguments)."""
    return asyncio.run(arun_flow(flow, **options))
