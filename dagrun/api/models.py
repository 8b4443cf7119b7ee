"""The REST API's JSON shapes, as pydantic models: the only source of its request and response schemas.

Request models (bodies and query strings) parse untrusted input, with ``extra="forbid"``. Response
models describe what the handlers send, which `dagrun.engine.control`'s ``*_json`` functions build; the tests
validate live responses against them, so the OpenAPI document cannot drift from the wire.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from dagrun.contract.context import ContextOpKind
from dagrun.contract.executor import ErrorKind
from dagrun.contract.states import RunStatus, StepStatus
from dagrun.store.base import CommandKind

FLOW_SCHEMA_NAME = "Flow"  # the component holding `flow_json_schema()`
MAX_LIST_LIMIT = 1000
MAX_EVENTS_LIMIT = 10_000
MAX_OFFSET = 1_000_000
MAX_PREFIX_RUNS = 1000  # the runs an id prefix is looked up among
MAX_SEQ = 2**63 - 1  # the largest event seq every store can hold (a signed 64-bit integer): larger is refused


class ApiModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- requests -----------------------------------------------------------------------------------------


# A submitted flow is a flow whose steps inline their scripts: the server reads no files.
SUBMITTED_FLOW_SCHEMA = {
    "allOf": [
        {"$ref": f"#/components/schemas/{FLOW_SCHEMA_NAME}"},
        {"properties": {"steps": {"items": {"not": {"required": ["script_file"]}}}}},
    ],
    "description": "A flow whose steps inline their scripts (`script`, not `script_file`).",
}


# A run that waits for a person's approval, then ships: what the document shows, and what clients and fuzzers
# start from (its first step is one to signal).
SUBMIT_EXAMPLE: dict[str, Any] = {
    "flow": {
        "name": "approval",
        "steps": [
            {"id": "approve", "wait_for": {"fields": ["ok"]}},
            {"id": "ship", "depends_on": ["approve"], "script": "outputs['shipped'] = inputs['ok']",
             "inputs": {"ok": "${steps.approve.ok}"}},
        ],
    },
    "inputs": {},
}  # fmt: skip


class SubmitRequest(ApiModel):
    """POST /v1/runs. The flow inlines its scripts (`script`, not `script_file`: the server reads no files)."""

    model_config = ConfigDict(json_schema_extra={"examples": [SUBMIT_EXAMPLE]})

    flow: Annotated[dict[str, Any], WithJsonSchema(SUBMITTED_FLOW_SCHEMA)]
    inputs: dict[str, Any] = Field(default_factory=dict, description="Overrides of the flow's declared inputs.")


class RerunRequest(ApiModel):
    """POST /v1/runs/{run_id}/rerun. `{}` reruns from the failed steps."""

    model_config = ConfigDict(json_schema_extra={"examples": [{}, {"from_steps": ["ship"]}]})  # SUBMIT_EXAMPLE's

    from_steps: list[str] = Field(
        default_factory=list, description="Also run again these steps and every step downstream of them."
    )
    inputs: dict[str, Any] = Field(default_factory=dict, description="Overrides of the origin run's inputs.")


class SignalRequest(ApiModel):
    """POST /v1/runs/{run_id}/steps/{step_id}/signal: the fields the `wait_for` step waits for."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"values": {"ok": True}}]})

    values: dict[str, Any]


class ListRunsQuery(ApiModel):
    status: RunStatus | None = Field(None, description="Only runs in this status.")
    flow: str | None = Field(None, description="Only runs of the flow with this name.")
    limit: int = Field(50, ge=1, le=MAX_LIST_LIMIT, description="At most this many runs, newest first.")
    offset: int = Field(0, ge=0, le=MAX_OFFSET, description="Skip this many of the newest that match (a page).")
    id_prefix: str | None = Field(
        None, min_length=1, max_length=200, description=f"Only runs whose id starts with this (of {MAX_PREFIX_RUNS})."
    )
    counts: bool = Field(False, description="Add each run's `step_counts` (a read of its steps per run listed).")


class EventsQuery(ApiModel):
    after: int = Field(0, ge=0, le=MAX_SEQ, description="Only events with a greater seq.")
    limit: int = Field(1000, ge=1, le=MAX_EVENTS_LIMIT, description="At most this many events, oldest first.")


class LogsQuery(ApiModel):
    step: str | None = Field(None, description="Only this step's attempts (none for a step the run does not have).")
    attempt: int | None = Field(None, ge=1, le=MAX_SEQ, description="Only attempts with this number.")


class StreamQuery(ApiModel):
    after: int = Field(
        0, ge=0, le=MAX_SEQ, description="Only events with a greater seq (the Last-Event-ID header wins)."
    )


# --- responses ----------------------------------------------------------------------------------------


class ErrorBody(ApiModel):
    error: str


class ProblemBody(ApiModel):
    path: str = Field(description="Where in the flow document, e.g. steps[3].depends_on[0]; '' for the whole.")
    message: str


class InvalidFlowBody(ApiModel):
    error: str
    problems: list[ProblemBody] = Field(description="Every problem, as `dagrun validate` lists them.")


class HealthBody(ApiModel):
    status: Literal["ok"]


class RunCreated(ApiModel):
    run_id: str


class RunBody(ApiModel):
    run_id: str
    flow: str = Field(description="The flow's name.")
    status: RunStatus
    created_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None = Field(description="Why the run failed or was cancelled, when known.")
    inputs: dict[str, Any]
    rerun_of: str | None = Field(description="The run this one reruns (POST .../rerun), if any.")
    parent: str | None = Field(
        description="'RUN/STEP': the sub-flow step of the run RUN that this child run runs for, if any."
    )


class RunListItem(RunBody):
    step_counts: dict[StepStatus, int] | None = Field(
        None, description="With `counts=true`: how many of its steps are in each state (those in none left out)."
    )


class RunList(ApiModel):
    runs: list[RunListItem]


class StepErrorBody(ApiModel):
    kind: ErrorKind
    type: str
    message: str
    line: int | None


class StepBody(ApiModel):
    status: StepStatus
    attempts: int
    outputs: dict[str, Any]
    error: StepErrorBody | None
    queued_at: float | None = Field(description="When its last attempt was handed to its executor.")
    started_at: float | None = Field(description="When a worker or sandbox process started its last attempt.")
    finished_at: float | None
    elapsed_ms: float
    worker_id: str
    logs: str


class RunDetail(RunBody):
    last_event_seq: int = Field(
        description="The run's last event before this was read: its event stream `after` this seq brings it up to date."
    )
    driver: str | None = Field(description="The orchestrator holding the run's lease; null when none drives it.")
    context: dict[str, Any]
    outputs: dict[str, Any] = Field(
        description="The flow's declared outputs, from its steps' outputs (null where a step has not succeeded)."
    )
    steps: dict[str, StepBody] = Field(description="Step id -> its state, in flow order.")


class RunOutputs(ApiModel):
    run_id: str
    status: RunStatus
    outputs: dict[str, dict[str, Any]] = Field(description="Step id -> its outputs ({} until it succeeds).")


class EventBody(ApiModel):
    seq: int = Field(description="Per run, from 1, gap-free.")
    at: float
    kind: Literal["run", "step"]
    status: str = Field(description="The run or step status entered.")
    step_id: str | None
    attempt: int
    message: str


class EventList(ApiModel):
    events: list[EventBody]


class CommandBody(ApiModel):
    seq: int
    at: float
    kind: CommandKind
    step_id: str | None
    values: dict[str, Any]


class CheckpointBody(RunDetail):
    last_event_seq: int
    commands: list[CommandBody]


class StepFailureBody(ApiModel):
    step_id: str
    attempt: int
    error: StepErrorBody
    source_line: str | None = Field(description="The script's line `error.line` as the run ran it, if any.")
    logs: str = Field(description="What the failed attempt printed.")
    worker_id: str


class ContextOpBody(ApiModel):
    op: ContextOpKind
    key: str
    value: Any = Field(description="The value set, added (`incr`) or appended.")


class AttemptLogBody(ApiModel):
    step_id: str
    attempt: int
    worker_id: str
    at: float = Field(description="When the attempt ended (its logs arrive with its result).")
    text: str = Field(description="What the attempt printed with log() and print.")
    context_ops: list[ContextOpBody] = Field(
        description="What a succeeded attempt wrote to the run's context, in order: the operations applied (one"
        " that did not fit the context is left out, and named in the step's `succeeded` event)."
    )
    error: StepErrorBody | None = Field(description="Why the attempt failed; null for one that succeeded.")
    source_line: str | None = Field(description="The script's line `error.line` as the run ran it, if any.")


class LogList(ApiModel):
    logs: list[AttemptLogBody] = Field(
        description="Each attempt that printed, wrote context or failed, in the order the attempts ended."
    )


class ErrorList(ApiModel):
    errors: list[StepFailureBody]


class PendingStepBody(ApiModel):
    step_id: str
    status: StepStatus
    attempt: int
    since: float | None
    waiting_for: list[str] = Field(description="The fields a `wait_for` step needs; [] for a script step.")


class PendingList(ApiModel):
    pending: list[PendingStepBody]


class StepMetricsBody(ApiModel):
    step_id: str
    status: StepStatus
    attempts: int
    retries: int
    duration_s: float | None
    run_s: float | None
    queue_wait_s: float | None


class MetricsBody(ApiModel):
    run_id: str
    status: RunStatus
    wall_s: float | None
    steps_by_status: dict[str, int]
    attempts: int
    retries: int
    step_s: float
    run_s: float
    queue_wait_s: float
    steps: list[StepMetricsBody]


class GraphNodeBody(ApiModel):
    id: str
    layer: int = Field(description="From 0 at the top: every step is below the steps it depends on.")
    order: int = Field(description="Its place in its layer, from 0 at the left, ordered to cross few edges.")
    kind: Literal["script", "wait", "map", "flow"]
    map_over: str | None = Field(None, description="A mapped step's list.")
    when: str | None = Field(None, description="A conditional step's condition.")
    flow: str | None = Field(None, description="A sub-flow step's flow file, or its inline flow's name.")
    wait_for: list[str] | None = Field(None, description="The fields a wait_for step needs.")
    run_if: str | None = Field(None, description="When the step runs, if not after all its dependencies succeeded.")
    inputs: dict[str, Any] | None = Field(None, description="Its declared inputs, references unresolved.")


class GraphBody(ApiModel):
    run_id: str
    nodes: list[GraphNodeBody] = Field(description="In flow order.")
    edges: list[tuple[str, str]] = Field(description="(dependency, dependent) pairs.")


class WorkerBody(ApiModel):
    worker_id: str
    host: str
    pid: int
    contexts: list[str]
    current: list[str] = Field(description="'run_id/step_id#attempt' of the steps it runs now.")
    steps_done: int
    errors: int
    started_at: float
    heartbeat_at: float


class WorkersBody(ApiModel):
    orchestrating: bool = Field(description="Whether this server drives runs; only then does it know executors.")
    executors: dict[str, list[WorkerBody]] = Field(description="Executor name -> its live workers.")


class ValidateRequest(ApiModel):
    """A flow as a JSON object (`flow`) or as the text of a flow file (`source`, JSON or YAML)."""

    flow: dict[str, Any] | None = None
    source: str | None = Field(None, description="The text of a flow file.")
    format: Literal["json", "yaml"] = Field("json", description="How `source` is written.")


class ValidateBody(ApiModel):
    valid: bool
    problems: list[ProblemBody] = Field(description="Every problem, as `dagrun validate` lists them (YAML: lines).")
    flow: dict[str, Any] | None = Field(
        description="The flow as a JSON object to submit (POST /v1/runs), when `valid`."
    )
    inputs: dict[str, Any] = Field(description="The flow's declared inputs and their defaults, when `valid`.")
