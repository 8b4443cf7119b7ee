"""dagrun: run DAGs of sandboxed Python scripts, locally or on remote workers, with every state persisted.

The embedding API: load or parse a flow, then `run_flow` (blocking) or `arun_flow`, or keep an
`Orchestrator` over a `Store` for many runs.

Names load on first use (`lazy_exports`): importing a part of dagrun loads only that part.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dagrun.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from dagrun.contract.context import ContextOp as ContextOp
    from dagrun.contract.context import ContextOpKind as ContextOpKind
    from dagrun.contract.executor import ErrorKind as ErrorKind
    from dagrun.contract.executor import Executor as Executor
    from dagrun.contract.executor import ExecutorOptions as ExecutorOptions
    from dagrun.contract.executor import StepError as StepError
    from dagrun.contract.executor import StepRequest as StepRequest
    from dagrun.contract.executor import StepResult as StepResult
    from dagrun.contract.states import RunIf as RunIf
    from dagrun.contract.states import RunStatus as RunStatus
    from dagrun.contract.states import StepStatus as StepStatus
    from dagrun.contract.transport import open_executor as open_executor
    from dagrun.embedding import arun_flow as arun_flow
    from dagrun.embedding import load_flow as load_flow
    from dagrun.embedding import parse_flow as parse_flow
    from dagrun.embedding import run_flow as run_flow
    from dagrun.engine.control import RunControl as RunControl
    from dagrun.engine.orchestrator import Orchestrator as Orchestrator
    from dagrun.engine.orchestrator import RunResult as RunResult
    from dagrun.engine.orchestrator import StepOutcome as StepOutcome
    from dagrun.errors import ControlError as ControlError
    from dagrun.errors import CycleError as CycleError
    from dagrun.errors import DagrunError as DagrunError
    from dagrun.errors import ExecutorError as ExecutorError
    from dagrun.errors import FlowError as FlowError
    from dagrun.errors import Problem as Problem
    from dagrun.errors import RunHandedBack as RunHandedBack
    from dagrun.errors import RunLost as RunLost
    from dagrun.errors import RunNotFound as RunNotFound
    from dagrun.errors import ScriptError as ScriptError
    from dagrun.errors import StoreError as StoreError
    from dagrun.errors import StoreNotFound as StoreNotFound
    from dagrun.errors import UnresolvedInput as UnresolvedInput
    from dagrun.errors import WorkerUnavailable as WorkerUnavailable
    from dagrun.flow.limits import FlowLimits as FlowLimits
    from dagrun.flow.model import Flow as Flow
    from dagrun.flow.model import RetryPolicy as RetryPolicy
    from dagrun.flow.model import Step as Step
    from dagrun.store import MemoryStore as MemoryStore
    from dagrun.store import SqliteStore as SqliteStore
    from dagrun.store import open_store as open_store
    from dagrun.store.base import Event as Event
    from dagrun.store.base import RunRecord as RunRecord
    from dagrun.store.base import StepRecord as StepRecord
    from dagrun.store.base import Store as Store

_HOMES = {
    "ContextOp": "dagrun.contract.context",
    "ContextOpKind": "dagrun.contract.context",
    "ControlError": "dagrun.errors",
    "CycleError": "dagrun.errors",
    "DagrunError": "dagrun.errors",
    "ErrorKind": "dagrun.contract.executor",
    "Event": "dagrun.store.base",
    "Executor": "dagrun.contract.executor",
    "ExecutorError": "dagrun.errors",
    "ExecutorOptions": "dagrun.contract.executor",
    "Flow": "dagrun.flow.model",
    "FlowError": "dagrun.errors",
    "FlowLimits": "dagrun.flow.limits",
    "MemoryStore": "dagrun.store",
    "Orchestrator": "dagrun.engine.orchestrator",
    "Problem": "dagrun.errors",
    "RetryPolicy": "dagrun.flow.model",
    "RunControl": "dagrun.engine.control",
    "RunHandedBack": "dagrun.errors",
    "RunIf": "dagrun.contract.states",
    "RunLost": "dagrun.errors",
    "RunNotFound": "dagrun.errors",
    "RunRecord": "dagrun.store.base",
    "RunResult": "dagrun.engine.orchestrator",
    "RunStatus": "dagrun.contract.states",
    "ScriptError": "dagrun.errors",
    "SqliteStore": "dagrun.store",
    "Step": "dagrun.flow.model",
    "StepError": "dagrun.contract.executor",
    "StepOutcome": "dagrun.engine.orchestrator",
    "StepRecord": "dagrun.store.base",
    "StepRequest": "dagrun.contract.executor",
    "StepResult": "dagrun.contract.executor",
    "StepStatus": "dagrun.contract.states",
    "Store": "dagrun.store.base",
    "StoreError": "dagrun.errors",
    "StoreNotFound": "dagrun.errors",
    "UnresolvedInput": "dagrun.errors",
    "WorkerUnavailable": "dagrun.errors",
    "arun_flow": "dagrun.embedding",
    "load_flow": "dagrun.embedding",
    "open_executor": "dagrun.contract.transport",
    "open_store": "dagrun.store",
    "parse_flow": "dagrun.embedding",
    "run_flow": "dagrun.embedding",
}

__all__ = sorted(_HOMES)
__getattr__, __dir__ = lazy_exports(__name__, _HOMES)
