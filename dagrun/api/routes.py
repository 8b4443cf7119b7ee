"""The API's routes as data: each `Route` is registered on the app and described in the OpenAPI document
from the same entry, so no route can be served undocumented. The handlers only translate HTTP to
`RunControl` calls (a run driven by an Orchestrator in this process on the same store applies a command
at once) and never catch dagrun errors: the guard maps those to statuses.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from dagrun.api import models
from dagrun.api.guard import Handler, json_response, read_model, read_query
from dagrun.api.stream import EventStreams, last_event_id
from dagrun.engine.control import RunControl
from dagrun.engine.orchestrator import Orchestrator
from dagrun.engine.rerun import submit_rerun
from dagrun.engine.views import attempt_log_json, command_json, event_json, run_json
from dagrun.errors import FlowError, Problem
from dagrun.flow.layout import flow_graph
from dagrun.flow.limits import DEFAULT_LIMITS, FlowLimits
from dagrun.flow.model import Flow
from dagrun.flow.parser import parse_flow
from dagrun.flow.problems import nesting_place
from dagrun.flow.references import TOO_DEEP, Loc, format_location
from dagrun.sandbox.policy import check_script
from dagrun.store.base import Command

PREFIX = "/v1"
SUBMITTED_SOURCE = "request body"  # how FlowError messages name a submitted flow


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    ok: Mapping[int, type[BaseModel] | None]  # success status -> its JSON body's model (None: no JSON body)
    body: type[BaseModel] | None = None
    body_required: bool = True  # False: no body reads as `{}` (every field of `body` has a default)
    query: type[BaseModel] | None = None
    refusals: Mapping[int, str] = field(default_factory=dict)  # statuses only this route answers -> when
    public: bool = False  # served without the token
    media: str = "application/json"  # of the success body
    description: str = ""


class RunHandlers:
    """The handlers, bound to the control object (and orchestrator) the app serves."""

    def __init__(
        self,
        control: RunControl,
        orchestrator: Orchestrator | None,
        streams: EventStreams,
        *,
        flow_limits: FlowLimits = DEFAULT_LIMITS,
    ) -> None:
        self._control = control
        self._flow_limits = flow_limits
        self._orchestrator = orchestrator
        self._streams = streams
        self.openapi_body = b"{}"  # set by create_app once every route is known

    def routes(self) -> list[Route]:
        run = f"{PREFIX}/runs/{{run_id}}"
        conflict: dict[int, str] = {HTTPStatus.CONFLICT: "the command does not fit the run's state"}
        invalid: dict[int, str] = {
            HTTPStatus.UNPROCESSABLE_ENTITY: "an invalid flow (a timeout, attempts or a wait over the server's limits "
            "included), or inputs it does not declare"
        }
        busy: dict[int, str] = {
            HTTPStatus.SERVICE_UNAVAILABLE: "the server follows as many streams as it may; "
            "retry after Retry-After seconds"
        }
        wrong_signal: dict[int, str] = {
            HTTPStatus.CONFLICT: "the step does not wait for a signal, has ended, already has a signal with other "
            "values (the error names it: its command seq, when it was sent, its values), or the values are not "
            "its fields"
        }
        return [
            Route("GET", "/health", self.health, "Liveness; needs no token", {200: models.HealthBody}, public=True),
            Route("GET", "/openapi.json", self.openapi, "This document", {200: None}),
            Route("POST", f"{PREFIX}/flows/validate", self.validate_flow, "Check a flow without running it",
                  {200: models.ValidateBody}, body=models.ValidateRequest,
                  description="The problems `dagrun validate` finds, for a flow object or a flow file's text (JSON "
                  "or YAML, with lines); a valid one comes back as the JSON object to submit, with its inputs."),
            Route("GET", f"{PREFIX}/workers", self.list_workers, "Live workers of this server's executors",
                  {200: models.WorkersBody},
                  description="Only a server that drives runs (`--orchestrate`) knows executors; others list none."),
            Route("POST", f"{PREFIX}/runs", self.submit_run, "Submit a run of a flow", {201: models.RunCreated},
                  body=models.SubmitRequest, refusals=invalid,
                  description="Recorded for an orchestrator serving the store to drive. Scripts are inline."),
            Route("GET", f"{PREFIX}/runs", self.list_runs, "List runs, newest first", {200: models.RunList},
                  query=models.ListRunsQuery),
            Route("GET", run, self.get_run, "A run with its steps and context", {200: models.RunDetail}),
            Route("GET", f"{run}/graph", self.get_graph, "The run's DAG, laid out in layers", {200: models.GraphBody},
                  description="What the dashboard draws: each step's layer (below its dependencies) and place in "
                  "its layer, with what marks a mapped, conditional, waiting or sub-flow step."),
            Route("GET", f"{run}/outputs", self.get_outputs, "The outputs of a run's steps", {200: models.RunOutputs}),
            Route("GET", f"{run}/events", self.get_events, "A run's event log", {200: models.EventList},
                  query=models.EventsQuery),
            Route("GET", f"{run}/events/stream", self.stream_events, "A run's events as Server-Sent Events",
                  {200: None, 204: None}, query=models.StreamQuery, media="text/event-stream", refusals=busy,
                  description="Frames `id: <seq>`, `event: run|step`, `data: <Event JSON>`; comment lines keep "
                  "a quiet stream alive. Resumes after the Last-Event-ID header (or `after`). Ends after the "
                  "event that ends the run; 204 when the run has ended with no event after that id."),
            Route("GET", f"{run}/logs", self.get_logs, "What each attempt printed, wrote and failed with",
                  {200: models.LogList}, query=models.LogsQuery,
                  description="Every attempt's logs, context writes and error (with its source line), a retried "
                  "step's earlier attempts included. An attempt's logs arrive with its result: they appear when "
                  "it ends, not while it runs."),
            Route("GET", f"{run}/errors", self.get_errors, "Steps whose last attempt failed", {200: models.ErrorList}),
            Route("GET", f"{run}/metrics", self.get_metrics, "Timings, attempts and retries",
                  {200: models.MetricsBody}),
            Route("GET", f"{run}/pending", self.get_pending, "Steps that have not ended", {200: models.PendingList}),
            Route("GET", f"{run}/checkpoint", self.get_checkpoint, "What the run would resume from",
                  {200: models.CheckpointBody}),
            Route("POST", f"{run}/cancel", self.cancel_run, "Cancel a run", {202: models.CommandBody},
                  refusals=conflict),
            Route("POST", f"{run}/pause", self.pause_run, "Start no new step until resumed",
                  {202: models.CommandBody}, refusals=conflict),
            Route("POST", f"{run}/resume", self.resume_run, "Undo pause", {202: models.CommandBody},
                  refusals=conflict),
            Route("POST", f"{run}/rerun", self.rerun, "Rerun an ended run from its failures",
                  {201: models.RunCreated}, body=models.RerunRequest, body_required=False,
                  refusals={**invalid, HTTPStatus.CONFLICT: "the run has not ended, has no such step, or "
                            "succeeded with nothing named to run again"},
                  description="A new run of the same flow that reuses the outputs of the steps that succeeded "
                  "(recorded `reused`) and runs the failed, skipped and cancelled ones, the `from_steps`, the "
                  "steps reading a changed input, and everything downstream of them. Its `rerun_of` names the "
                  "origin. Recorded for an orchestrator serving the store to drive."),
            Route("POST", f"{run}/steps/{{step_id}}/signal", self.signal_step,
                  "Complete a wait_for step with its fields", {202: models.CommandBody}, body=models.SignalRequest,
                  refusals=wrong_signal,
                  description="The first signal to a step is the one that counts. Sending it again with the same "
                  "values is harmless: 202 with that first command, and nothing new is sent."),
        ]  # fmt: skip

    async def health(self, request: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=self.openapi_body, content_type="application/json")

    async def submit_run(self, request: web.Request) -> web.Response:
        body = await read_model(request, models.SubmitRequest, too_deep=_submitted_too_deep)
        # In a thread: compiling the scripts of a large flow would stall every other request (and the
        # lease renewals of an orchestrator sharing the loop).
        flow = await asyncio.to_thread(parse_submitted, body.flow, limits=self._flow_limits)
        if self._orchestrator is not None:
            self._orchestrator.executors.check(flow)  # refuse now what it could not drive
        return _created(await self._control.submit(flow, inputs=body.inputs))

    async def list_runs(self, request: web.Request) -> web.Response:
        query = read_query(request, models.ListRunsQuery)
        found = await self._control.list_runs(
            status=query.status,
            flow_name=query.flow,
            limit=query.limit,
            offset=query.offset,
            id_prefix=query.id_prefix,
            among=models.MAX_PREFIX_RUNS,
        )
        listed = [run_json(run) for run in found]
        if query.counts:
            counts = await asyncio.gather(*(self._control.step_counts(run.run_id) for run in found))
            listed = [run | {"step_counts": count} for run, count in zip(listed, counts, strict=True)]
        return json_response({"runs": listed})

    async def get_run(self, request: web.Request) -> web.Response:
        return json_response((await self._control.status(_run_id(request))).to_json())

    async def get_graph(self, request: web.Request) -> web.Response:
        run = await self._control.store.get_run(_run_id(request))
        return json_response({"run_id": run.run_id} | flow_graph(run.flow))

    async def validate_flow(self, request: web.Request) -> web.Response:
        body = await read_model(request, models.ValidateRequest)
        return json_response(await asyncio.to_thread(self._validated, body))

    def _validated(self, body: models.ValidateRequest) -> dict[str, Any]:
        """`body`'s flow checked as a submitted one would be; its problems, or the JSON object to submit."""
        try:
            flow = parse_submitted(body.flow, body.source, body.format, limits=self._flow_limits)
            if self._orchestrator is not None:
                self._orchestrator.executors.check(flow)
        except FlowError as exc:
            problems = [{"path": problem.path, "message": problem.message} for problem in exc.problems]
            return {"valid": False, "problems": problems, "flow": None, "inputs": {}}
        return {"valid": True, "problems": [], "flow": flow.to_json(), "inputs": flow.inputs}

    async def list_workers(self, request: web.Request) -> web.Response:
        if self._orchestrator is None:
            return json_response({"orchestrating": False, "executors": {}})
        found = await self._orchestrator.executors.workers()
        executors = {name: [dataclasses.asdict(worker) for worker in workers] for name, workers in found.items()}
        return json_response({"orchestrating": True, "executors": executors})

    async def get_outputs(self, request: web.Request) -> web.Response:
        view = await self._control.status(_run_id(request))
        outputs = {step.step_id: step.outputs for step in view.steps}
        return json_response({"run_id": view.run.run_id, "status": view.run.status.value, "outputs": outputs})

    async def get_events(self, request: web.Request) -> web.Response:
        query = read_query(request, models.EventsQuery)
        events = await self._control.store.get_events(_run_id(request), after_seq=query.after, limit=query.limit)
        return json_response({"events": [event_json(event) for event in events]})

    async def stream_events(self, request: web.Request) -> web.StreamResponse:
        after = last_event_id(request, read_query(request, models.StreamQuery).after)
        return await self._streams.respond(request, self._control, _run_id(request), after)

    async def get_logs(self, request: web.Request) -> web.Response:
        query = read_query(request, models.LogsQuery)
        run = await self._control.store.get_run(_run_id(request))
        logs = await self._control.store.get_logs(run.run_id, step_id=query.step, attempt=query.attempt)
        return json_response({"logs": [attempt_log_json(log, run.flow) for log in logs]})

    async def get_errors(self, request: web.Request) -> web.Response:
        failures = await self._control.errors(_run_id(request))
        return json_response({"errors": [failure.to_json() for failure in failures]})

    async def get_metrics(self, request: web.Request) -> web.Response:
        return json_response((await self._control.metrics(_run_id(request))).to_json())

    async def get_pending(self, request: web.Request) -> web.Response:
        pending = await self._control.pending_work(_run_id(request))
        return json_response({"pending": [step.to_json() for step in pending]})

    async def get_checkpoint(self, request: web.Request) -> web.Response:
        return json_response((await self._control.checkpoint(_run_id(request))).to_json())

    async def cancel_run(self, request: web.Request) -> web.Response:
        return _accepted(await self._control.cancel(_run_id(request)))

    async def pause_run(self, request: web.Request) -> web.Response:
        return _accepted(await self._control.pause(_run_id(request)))

    async def resume_run(self, request: web.Request) -> web.Response:
        return _accepted(await self._control.resume(_run_id(request)))

    async def rerun(self, request: web.Request) -> web.Response:
        body = await read_model(request, models.RerunRequest, required=False)
        check_flow = None if self._orchestrator is None else self._orchestrator.executors.check
        run_id = await submit_rerun(
            self._control.store, _run_id(request), from_steps=body.from_steps, inputs=body.inputs, check_flow=check_flow
        )
        return _created(run_id)

    async def signal_step(self, request: web.Request) -> web.Response:
        body = await read_model(request, models.SignalRequest)
        command = await self._control.signal(_run_id(request), request.match_info["step_id"], body.values)
        return _accepted(command)


def parse_submitted(
    flow: Mapping[str, Any] | None, text: str | None = None, text_format: str = "json", *, limits: FlowLimits
) -> Flow:
    """A flow sent to the server, as an object or as a flow file's text (JSON, or YAML with its lines), checked
    with the sandbox's policy and the server's limits; FlowError naming every problem."""
    if (flow is None) == (text is None):
        message = "give the flow either as 'flow' (a JSON object) or as 'source' (a flow file's text)"
        raise FlowError([Problem("", message)], source=SUBMITTED_SOURCE)
    lines = None
    document: Mapping[str, Any] | str | None = flow
    if text is not None and text_format == "yaml":
        from dagrun.flow.yaml_document import load_yaml  # PyYAML only for YAML

        document, lines = load_yaml(text, source=SUBMITTED_SOURCE)
    elif text is not None:
        document = text
    assert document is not None  # one of the two was given
    return parse_flow(document, source=SUBMITTED_SOURCE, check_script=check_script, limits=limits, lines=lines)


def _submitted_too_deep(loc: Loc) -> FlowError:
    """A submitted flow (or run input) nested too deep to parse, as the problem `dagrun validate` reports."""
    place = nesting_place(loc[1:] if loc[:1] == ("flow",) else loc)  # "inputs" are the run's, at the same place
    return FlowError([Problem(format_location(place), TOO_DEEP)], source=SUBMITTED_SOURCE)


def _run_id(request: web.Request) -> str:
    return request.match_info["run_id"]


def _created(run_id: str) -> web.Response:
    return json_response({"run_id": run_id}, HTTPStatus.CREATED, headers={"Location": f"{PREFIX}/runs/{run_id}"})


def _accepted(command: Command) -> web.Response:
    """202: the command is in the run's log; its driver applies it (watch the run's events)."""
    return json_response(command_json(command), HTTPStatus.ACCEPTED)
