"""Every run route on real runs, on the sqlite and the redis store; responses checked against the models
the OpenAPI document is built from."""

from __future__ import annotations

import asyncio

from dagrun.api import models
from dagrun.engine.orchestrator import Orchestrator
from dagrun.store import open_store
from tests.api.conftest import FAILING, GATED, HELLO, Api, MakeApi


async def test_a_submitted_run_runs_and_every_read_route_describes_it(api: Api) -> None:
    run_id = await api.submit(HELLO, {"who": "api"})
    detail = models.RunDetail.model_validate(await api.until_ended(run_id))
    assert detail.status == "succeeded" and detail.inputs == {"who": "api"}
    assert detail.steps["shout"].outputs == {"shouted": "HELLO, API"}

    status, body = await api.call("GET", f"/v1/runs/{run_id}/outputs")
    assert status == 200
    assert models.RunOutputs.model_validate(body).outputs == {
        "greet": {"greeting": "hello, api"},
        "shout": {"shouted": "HELLO, API"},
    }
    status, body = await api.call("GET", f"/v1/runs/{run_id}/metrics")
    metrics = models.MetricsBody.model_validate(body)
    assert status == 200 and metrics.steps_by_status == {"succeeded": 2} and metrics.attempts == 2
    status, body = await api.call("GET", f"/v1/runs/{run_id}/errors")
    assert status == 200 and models.ErrorList.model_validate(body).errors == []
    status, body = await api.call("GET", f"/v1/runs/{run_id}/pending")
    assert status == 200 and models.PendingList.model_validate(body).pending == []


async def test_events_are_paged_by_after_and_limit(api: Api) -> None:
    run_id = await api.submit(HELLO)
    await api.until_ended(run_id)
    status, body = await api.call("GET", f"/v1/runs/{run_id}/events")
    events = models.EventList.model_validate(body).events
    assert status == 200
    assert [(e.kind, e.step_id, e.status) for e in events] == [
        ("run", None, "running"),
        ("step", "greet", "queued"),
        ("step", "greet", "running"),
        ("step", "greet", "succeeded"),
        ("step", "shout", "queued"),
        ("step", "shout", "running"),
        ("step", "shout", "succeeded"),
        ("run", None, "succeeded"),
    ]
    assert [e.seq for e in events] == list(range(1, 9))
    status, body = await api.call("GET", f"/v1/runs/{run_id}/events", params={"after": "2", "limit": "3"})
    assert status == 200 and [e["seq"] for e in body["events"]] == [3, 4, 5]


async def test_checkpoint_holds_the_event_log_end_and_the_commands(api: Api) -> None:
    run_id = await api.submit(GATED)
    await api.until_step(run_id, "approve", "waiting")
    assert (await api.call("POST", f"/v1/runs/{run_id}/steps/approve/signal", json={"values": {"ok": 1}}))[0] == 202
    await api.until_ended(run_id)
    status, body = await api.call("GET", f"/v1/runs/{run_id}/checkpoint")
    checkpoint = models.CheckpointBody.model_validate(body)
    _, events = await api.call("GET", f"/v1/runs/{run_id}/events")
    assert status == 200 and checkpoint.last_event_seq == events["events"][-1]["seq"]
    assert [(c.kind, c.step_id, c.values) for c in checkpoint.commands] == [("signal", "approve", {"ok": 1})]


async def test_runs_are_listed_newest_first_and_filtered(api: Api) -> None:
    first = await api.submit(HELLO)
    await api.until_ended(first)
    failed = await api.submit(FAILING)
    await api.until_ended(failed)
    status, body = await api.call("GET", "/v1/runs")
    assert status == 200 and [run.run_id for run in models.RunList.model_validate(body).runs] == [failed, first]
    _, body = await api.call("GET", "/v1/runs", params={"status": "failed"})
    assert [run["run_id"] for run in body["runs"]] == [failed]
    _, body = await api.call("GET", "/v1/runs", params={"flow": "hello"})
    assert [run["run_id"] for run in body["runs"]] == [first]
    _, body = await api.call("GET", "/v1/runs", params={"limit": "1"})
    assert [run["run_id"] for run in body["runs"]] == [failed]


async def test_errors_lists_the_failed_step_with_its_error(api: Api) -> None:
    run_id = await api.submit(FAILING)
    detail = await api.until_ended(run_id)
    assert detail["status"] == "failed"
    assert {step: s["status"] for step, s in detail["steps"].items()} == {
        "boom": "failed",
        "after": "skipped",
        "alone": "succeeded",
    }
    status, body = await api.call("GET", f"/v1/runs/{run_id}/errors")
    (failure,) = models.ErrorList.model_validate(body).errors
    assert status == 200 and failure.step_id == "boom" and failure.error.kind == "fail"
    assert "no luck" in failure.error.message


async def test_pending_shows_a_waiting_step_and_what_it_waits_for(api: Api) -> None:
    run_id = await api.submit(GATED)
    await api.until_step(run_id, "approve", "waiting")
    status, body = await api.call("GET", f"/v1/runs/{run_id}/pending")
    pending = models.PendingList.model_validate(body).pending
    assert status == 200
    assert [(p.step_id, p.status, p.waiting_for) for p in pending] == [
        ("approve", "waiting", ["ok"]),
        ("ship", "pending", []),
    ]
    await api.call("POST", f"/v1/runs/{run_id}/cancel")


async def test_a_signal_completes_a_waiting_step_and_its_values_flow_on(api: Api) -> None:
    run_id = await api.submit(GATED)
    await api.until_step(run_id, "approve", "waiting")
    status, body = await api.call("POST", f"/v1/runs/{run_id}/steps/approve/signal", json={"values": {"ok": True}})
    command = models.CommandBody.model_validate(body)
    assert status == 202 and (command.kind, command.step_id, command.values) == ("signal", "approve", {"ok": True})
    detail = await api.until_ended(run_id)
    assert detail["status"] == "succeeded"
    assert detail["steps"]["approve"]["outputs"] == {"ok": True}
    assert detail["steps"]["ship"]["outputs"] == {"n": 42}


async def test_pause_and_resume_a_running_run_then_it_completes(api: Api) -> None:
    run_id = await api.submit(GATED)
    await api.until_step(run_id, "approve", "waiting")
    status, body = await api.call("POST", f"/v1/runs/{run_id}/pause")
    assert status == 202 and models.CommandBody.model_validate(body).kind == "pause"
    await api.until(run_id, lambda e: e.kind == "run" and e.status == "paused")
    assert (await api.call("GET", f"/v1/runs/{run_id}"))[1]["status"] == "paused"

    status, body = await api.call("POST", f"/v1/runs/{run_id}/resume")
    assert status == 202 and body["kind"] == "resume"
    await api.until(run_id, lambda e: e.kind == "run" and e.status == "running" and e.seq > 1)
    await api.call("POST", f"/v1/runs/{run_id}/steps/approve/signal", json={"values": {"ok": 1}})
    assert (await api.until_ended(run_id))["status"] == "succeeded"


async def test_cancel_ends_a_running_run_and_its_unfinished_steps(api: Api) -> None:
    run_id = await api.submit(GATED)
    await api.until_step(run_id, "approve", "waiting")
    status, body = await api.call("POST", f"/v1/runs/{run_id}/cancel")
    assert status == 202 and body["kind"] == "cancel"
    detail = await api.until_ended(run_id)
    assert detail["status"] == "cancelled"
    assert {step: s["status"] for step, s in detail["steps"].items()} == {
        "build": "succeeded",
        "approve": "cancelled",
        "ship": "cancelled",
    }


async def test_a_run_submitted_without_an_orchestrator_here_is_driven_by_one_sharing_the_store(
    make_api: MakeApi, store_url: str
) -> None:
    api: Api = await make_api(orchestrate=False)
    run_id = await api.submit(HELLO)
    async with open_store(store_url) as other, Orchestrator(other, processes=1) as orchestrator:
        halt = asyncio.Event()
        serving = asyncio.create_task(orchestrator.serve(halt))
        try:
            detail = await api.until_ended(run_id)
        finally:
            halt.set()
            await serving
    assert detail["status"] == "succeeded"


async def test_a_rerun_reuses_what_succeeded_and_links_to_its_origin(api: Api) -> None:
    origin = await api.submit(FAILING)
    assert (await api.until_ended(origin))["status"] == "failed"

    status, body = await api.call("POST", f"/v1/runs/{origin}/rerun", json={})
    assert status == 201, body
    rerun = await api.until_ended(body["run_id"])

    assert rerun["rerun_of"] == origin
    assert {step: s["status"] for step, s in rerun["steps"].items()} == {
        "boom": "failed",  # it fails whatever runs it
        "after": "skipped",
        "alone": "reused",
    }
    assert rerun["steps"]["alone"]["outputs"] == {"x": 2}


async def test_a_rerun_that_does_not_fit_the_run_is_refused_and_nothing_is_recorded(api: Api) -> None:
    origin = await api.submit(FAILING)
    await api.until_ended(origin)

    refusals = [
        ({"from_steps": ["nope"]}, 409, "has no step 'nope'"),
        ({"inputs": {"colour": "red"}}, 422, "invalid flow"),
    ]
    for body, expected, message in refusals:
        status, answer = await api.call("POST", f"/v1/runs/{origin}/rerun", json=body)
        assert (status, message in answer["error"]) == (expected, True), answer
    status, answer = await api.call("POST", "/v1/runs/no-such-run/rerun", json={})
    assert status == 404, answer
    status, listed = await api.call("GET", "/v1/runs")
    assert [run["run_id"] for run in listed["runs"]] == [origin]


async def test_logs_holds_every_attempt_and_errors_the_failed_line(api: Api) -> None:
    retried = {
        "name": "retried",
        "steps": [
            {"id": "flaky", "script": "log('try', attempt)\nif attempt < 2:\n    fail('not yet')",
             "retries": {"max_attempts": 2, "backoff_s": 0.01}},
            {"id": "broken", "depends_on": ["flaky"], "script": "print('about to fail')\nx = 1 / 0"},
        ],
    }  # fmt: skip
    run_id = await api.submit(retried)
    assert (await api.until_ended(run_id))["status"] == "failed"

    status, body = await api.call("GET", f"/v1/runs/{run_id}/logs")
    logs = models.LogList.model_validate(body).logs
    assert status == 200
    assert [(log.step_id, log.attempt, log.text) for log in logs] == [
        ("flaky", 1, "try 1\n"),
        ("flaky", 2, "try 2\n"),
        ("broken", 1, "about to fail\n"),
    ]
    _, body = await api.call("GET", f"/v1/runs/{run_id}/logs", params={"step": "flaky", "attempt": "2"})
    assert [(log["step_id"], log["attempt"]) for log in body["logs"]] == [("flaky", 2)]
    _, body = await api.call("GET", f"/v1/runs/{run_id}/logs", params={"step": "nope"})
    assert body == {"logs": []}
    status, _ = await api.call("GET", f"/v1/runs/{run_id}/logs", params={"attempt": "0"})
    assert status == 400

    _, body = await api.call("GET", f"/v1/runs/{run_id}/errors")
    (failure,) = models.ErrorList.model_validate(body).errors
    assert (failure.step_id, failure.error.line, failure.source_line) == ("broken", 2, "x = 1 / 0")
    assert failure.logs == "about to fail\n"


async def test_logs_hold_each_attempt_s_context_writes(api: Api) -> None:
    quiet = {  # prints nothing, yet its attempt is listed for what it wrote
        "name": "quiet",
        "steps": [{"id": "count", "script": "context.set('region', 'eu')\ncontext.append('seen', {'rows': 3})"}],
    }
    run_id = await api.submit(quiet)
    assert (await api.until_ended(run_id))["status"] == "succeeded"

    status, body = await api.call("GET", f"/v1/runs/{run_id}/logs", params={"step": "count"})
    (log,) = models.LogList.model_validate(body).logs
    assert status == 200 and (log.attempt, log.text) == (1, "")
    assert body["logs"][0]["context_ops"] == [
        {"op": "set", "key": "region", "value": "eu"},
        {"op": "append", "key": "seen", "value": {"rows": 3}},
    ]


async def test_a_sub_flow_step_runs_a_child_run_that_links_to_its_parent(api: Api) -> None:
    parent = {
        "name": "parent",
        "outputs": {"greeting": "${steps.hello.shouted}"},
        "steps": [{"id": "hello", "flow": HELLO | {"outputs": {"shouted": "${steps.shout.shouted}"}},
                   "inputs": {"who": "child"}}],
    }  # fmt: skip
    run_id = await api.submit(parent)
    detail = models.RunDetail.model_validate(await api.until_ended(run_id))
    child = models.RunDetail.model_validate(await api.until_ended(f"{run_id}.hello"))

    assert detail.status == "succeeded" and detail.parent is None
    assert detail.outputs == {"greeting": "HELLO, CHILD"}
    assert child.parent == f"{run_id}/hello" and child.inputs == {"who": "child"}
    assert child.outputs == {"shouted": "HELLO, CHILD"}
