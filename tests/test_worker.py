"""The worker side shared by every transport: a ScriptWorker around a warm sandbox pool."""

from __future__ import annotations

from dagrun.contract.envelope import decode_result, encode_request
from dagrun.contract.executor import ErrorKind, StepRequest, script_hash
from dagrun.worker.script_worker import ScriptWorker, WorkerSettings

SOURCE = "outputs['v'] = inputs['x'] * 2"


async def test_a_worker_closed_while_its_pool_starts_leaves_no_process_behind() -> None:
    async with ScriptWorker(WorkerSettings(concurrency=2)):
        pass  # closed at once, the pool still spawning: a ResourceWarning (an error here) if a child leaks


async def test_a_worker_runs_envelopes_and_counts_what_it_did() -> None:
    request = StepRequest("r", "s", 1, SOURCE, script_hash(SOURCE), {"x": 21}, {}, "default", 5.0)
    async with ScriptWorker(WorkerSettings(concurrency=1, contexts=("eu",), worker_id="w-1")) as worker:
        result = decode_result(await worker.answer(encode_request(request), origin="a test"))
        failed = await worker.run(request._replace(inputs={}))
        status = worker.status()
    assert result.outputs == {"v": 42}
    assert not failed.ok
    assert (status.worker_id, status.contexts, status.steps_done, status.errors) == ("w-1", ("eu",), 2, 1)


async def test_a_result_names_the_worker_and_its_sandbox_process() -> None:
    request = StepRequest("r", "s", 1, SOURCE, script_hash(SOURCE), {"x": 1}, {}, "default", 5.0)
    async with ScriptWorker(WorkerSettings(concurrency=1, worker_id="host-a:7")) as worker:
        result = await worker.run(request)
    prefix, _, child = result.worker_id.partition("/")
    assert prefix == "host-a:7" and child.startswith("local:")


async def test_a_request_the_worker_cannot_decode_is_answered_with_a_worker_failure() -> None:
    async with ScriptWorker(WorkerSettings(concurrency=1, worker_id="w-1")) as worker:
        result = decode_result(await worker.answer(b"{not json", origin="entry 1-0 of q"))
    assert not result.ok and result.error is not None
    assert result.error.kind == ErrorKind.WORKER and result.error.type == "ExecutorError"
    assert result.error.message.startswith("worker w-1 refused the request: ")
    assert result.worker_id == "w-1"


async def test_a_step_the_worker_fails_to_run_is_answered_with_a_worker_failure() -> None:
    request = StepRequest("r", "s", 1, SOURCE, script_hash(SOURCE), {"x": 1}, {}, "default", 5.0)
    worker = ScriptWorker(WorkerSettings(concurrency=1, worker_id="w-1"))
    async with worker:
        pass
    result = decode_result(await worker.answer_request(request))  # its pool is closed
    assert not result.ok and result.error is not None
    assert (result.error.kind, result.worker_id) == (ErrorKind.WORKER, "w-1")
