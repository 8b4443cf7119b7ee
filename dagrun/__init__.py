"""dagrun: run DAGs of sandboxed Python scripts, locally or on remote workers, with every state persisted.

The embedding API: load or parse a flow, then `run_flow` (blocking) or `arun_flow`, or keep an
`Orchestrator` over a `Store` for many runs.
"""

from dagrun.context import ContextOp, ContextOpKind
from dagrun.control import RunControl
from dagrun.embedding import arun_flow, run_flow
from dagrun.errors import (
    ControlError,
    CycleError,
    DagrunError,
    ExecutorError,
    FlowError,
    Problem,
    RunHandedBack,
    RunLost,
    RunNotFound,
    ScriptError,
    StoreError,
    StoreNotFound,
    UnresolvedInput,
    WorkerUnavailable,
)
from dagrun.executor import ErrorKind, Executor, ExecutorOptions, StepError, StepRequest, StepResult, open_executor
from dagrun.flow import Flow, RetryPolicy, Step
from dagrun.flow_limits import FlowLimits
from dagrun.flow_parser import parse_flow
from dagrun.loader import load_flow
from dagrun.orchestrator import Orchestrator, RunResult, StepOutcome
from dagrun.states import RunIf, RunStatus, StepStatus
from dagrun.store import MemoryStore, SqliteStore, open_store
from dagrun.store.base import Event, RunRecord, StepRecord, Store

__all__ = [
    "ContextOp",
    "ContextOpKind",
    "ControlError",
    "CycleError",
    "DagrunError",
    "ErrorKind",
    "Event",
    "Executor",
    "ExecutorError",
    "ExecutorOptions",
    "Flow",
    "FlowError",
    "FlowLimits",
    "MemoryStore",
    "Orchestrator",
    "Problem",
    "RetryPolicy",
    "RunControl",
    "RunHandedBack",
    "RunIf",
    "RunLost",
    "RunNotFound",
    "RunRecord",
    "RunResult",
    "RunStatus",
    "ScriptError",
    "SqliteStore",
    "Step",
    "StepError",
    "StepOutcome",
    "StepRecord",
    "StepRequest",
    "StepResult",
    "StepStatus",
    "Store",
    "StoreError",
    "StoreNotFound",
    "UnresolvedInput",
    "WorkerUnavailable",
    "arun_flow",
    "load_flow",
    "open_executor",
    "open_store",
    "parse_flow",
    "run_flow",
]
