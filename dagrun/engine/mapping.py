"""A mapped step (`map`): one instance per item of a list known only at run time, `ID[0]`, `ID[1]`, ...

Each instance is a step of its own in the store (its attempts, timeout, logs, outputs; `dagrun logs RUN
'ID[3]'`), run by the same `StepRunner` as any script step with its item as one more input. The mapped
step itself is recorded `running` with the number of items (`mapped over N items`) once the list is
known, and ends with outputs that are lists: for each output key, the instances' values in item order
(null for an instance that failed under `on_item_failure: continue`). An empty list ends it succeeded at
once, with an empty list per declared output.

At most `max_parallel` instances are queued or running at once (default: the run's), and nothing is held
for an instance before it starts: a map over 100,000 items keeps the list (already in the run's outputs)
and the results of those that ended. With `on_item_failure: fail`, the first failed instance stops new
ones from starting; the step fails once those running have ended. A driver taking the run over finds the
list again in the stored outputs it came from, keeps every instance that ended and runs the others.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NamedTuple

from dagrun.contract.executor import ErrorKind, StepError
from dagrun.contract.states import StepStatus
from dagrun.engine.step_state import StepState
from dagrun.errors import UnresolvedInput
from dagrun.flow.instances import instance_id
from dagrun.flow.model import MapSpec, Step
from dagrun.flow.references import Outputs, Reference, lookup
from dagrun.store.base import StepRecord

StepRecorder = Callable[[StepRecord, str], Awaitable[None]]


class MapHost(NamedTuple):
    """What a mapped step needs of the driver that runs it."""

    run_id: str
    flow_inputs: Mapping[str, Any]
    outputs_of: Outputs
    run_instance: Callable[[StepState], Awaitable[StepStatus]]  # `StepRunner.until_done`
    wait_open: Callable[[], Awaitable[None]]  # the pause gate
    record: StepRecorder
    in_flight: dict[str, StepState]  # the driver's: a pause withdraws them, a cancel records them
    stored: Mapping[str, StepRecord]  # instance records read back when the run was taken over
    max_parallel: int  # the run's
    max_items: int


async def run_map(state: StepState, host: MapHost) -> StepStatus:
    """Run the instances of the mapped step of `state` and record how it ended: SUCCEEDED (`state.outputs`
    holds the lists) or FAILED (`state.error` says why)."""
    step = state.step
    assert step.map is not None
    try:
        items = _items(step, step.map, host)
    except UnresolvedInput as exc:
        return await _fail(state, host, StepError(ErrorKind.INPUT, "UnresolvedInput", str(exc)))
    started = state.started_at = time.time()
    await host.record(
        StepRecord(host.run_id, step.id, StepStatus.RUNNING, 0, started), f"mapped over {len(items)} items"
    )
    results = _Results(step, len(items))
    await _run_instances(step, items, results, host)
    if results.failed and step.map.on_item_failure == "fail":
        return await _fail(state, host, results.error())
    state.outputs = results.outputs()
    record = StepRecord(host.run_id, step.id, StepStatus.SUCCEEDED, 0, started, time.time(), state.outputs)
    await host.record(record, results.summary())
    return StepStatus.SUCCEEDED


def _items(step: Step, spec: MapSpec, host: MapHost) -> list[Any]:
    reference = spec.reference
    assert isinstance(reference, Reference), "validation refuses a malformed map.over"
    value = lookup(reference, f"step {step.id!r} map.over")(host.flow_inputs, host.outputs_of)
    if not isinstance(value, list):
        kind = "null" if value is None else type(value).__name__
        raise UnresolvedInput(f"step {step.id!r} maps over {spec.over}, which is a {kind}, not a list")
    if len(value) > host.max_items:
        raise UnresolvedInput(
            f"step {step.id!r} maps over {spec.over}, a list of {len(value)} items, over the limit of "
            f"{host.max_items} (--max-map-items)"
        )
    return value


async def _run_instances(step: Step, items: list[Any], results: _Results, host: MapHost) -> None:
    """Start the instances in item order, at most `max_parallel` at once, skipping those that ended before a
    takeover; stop starting new ones after a failure when the map fails on one."""
    assert step.map is not None
    limit = step.map.max_parallel or host.max_parallel
    stops_on_failure = step.map.on_item_failure == "fail"
    running: set[asyncio.Task[None]] = set()
    async with asyncio.TaskGroup() as instances:
        for index, item in enumerate(items):
            if results.take_stored(index, host.stored.get(instance_id(step.id, index))):
                continue
            while len(running) >= limit:
                await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            await host.wait_open()
            if stops_on_failure and results.failed:
                break
            task = instances.create_task(_instance(step, index, item, results, host))
            running.add(task)
            task.add_done_callback(running.discard)


async def _instance(step: Step, index: int, item: Any, results: _Results, host: MapHost) -> None:
    assert step.map is not None
    state = StepState(dataclasses.replace(step, id=instance_id(step.id, index), map=None, when=None))
    stored = host.stored.get(state.step.id)
    if stored is not None:  # it was under way when the run was taken over: its next attempt
        state.restore(stored)
    state.item = {step.map.as_: item}
    host.in_flight[state.step.id] = state
    status = await host.run_instance(state)  # a cancel leaves it in flight, for the driver to record
    del host.in_flight[state.step.id]
    results.ended(index, status, state)


async def _fail(state: StepState, host: MapHost, error: StepError) -> StepStatus:
    state.error = error
    record = StepRecord(host.run_id, state.step.id, StepStatus.FAILED, 0, state.started_at, time.time(), error=error)
    await host.record(record, str(error))
    return StepStatus.FAILED


class _Results:
    """The instances' ends, by item index: outputs kept for the lists, failures counted."""

    def __init__(self, step: Step, count: int) -> None:
        self._step = step
        self._outputs: list[Mapping[str, Any] | None] = [None] * count
        self.failed: list[tuple[int, StepError | None]] = []
        self._done = 0

    def take_stored(self, index: int, record: StepRecord | None) -> bool:
        """Whether the instance ended before a takeover (its end is taken from `record`)."""
        if record is None or not record.status.is_terminal:
            return False
        if record.status.has_outputs:
            self._outputs[index] = record.outputs
            self._done += 1
        else:
            self.failed.append((index, record.error))
        return True

    def ended(self, index: int, status: StepStatus, state: StepState) -> None:
        if status == StepStatus.SUCCEEDED:
            self._outputs[index] = state.outputs
            self._done += 1
        else:
            self.failed.append((index, state.error))

    def outputs(self) -> dict[str, list[Any]]:
        keys = self._step.outputs
        if keys is None:  # undeclared: every key an instance set, in the order they first appear
            keys = tuple(dict.fromkeys(key for outputs in self._outputs if outputs for key in outputs))
        return {key: [None if outputs is None else outputs.get(key) for outputs in self._outputs] for key in keys}

    def error(self) -> StepError:
        index, first = min(self.failed, key=lambda failure: failure[0])
        not_run = len(self._outputs) - self._done - len(self.failed)
        what = f"{len(self.failed)} of {len(self._outputs)} items failed ({not_run} not run)"
        if first is None:
            return StepError(ErrorKind.SCRIPT, "ItemFailed", f"{what}; the first: {instance_id(self._step.id, index)}")
        message = f"{what}; the first, {instance_id(self._step.id, index)}: {first.type}: {first.message}"
        return StepError(first.kind, first.type, message, first.line)

    def summary(self) -> str:
        failed = f", {len(self.failed)} failed (their outputs null)" if self.failed else ""
        return f"{len(self._outputs)} items: {self._done} succeeded{failed}"
