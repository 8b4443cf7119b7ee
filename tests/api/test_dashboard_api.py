"""What the API added for the dashboard: runs paged, found by id prefix, with step counts; a run's laid-out
graph; a run's view with the event seq to stream after; flow validation from a file's text; live workers."""

from __future__ import annotations

from dagrun.api import models
from tests.api.conftest import FAILING, GATED, HELLO, Api, MakeApi

BRANCHY = {
    "name": "branchy",
    "steps": [
        {"id": "list", "script": "outputs['items'] = [1, 2]\noutputs['ok'] = True", "outputs": ["items", "ok"]},
        {"id": "each", "depends_on": ["list"], "map": {"over": "${steps.list.items}", "as": "n"},
         "script": "outputs['sq'] = inputs['n'] ** inputs['power']", "outputs": ["sq"], "inputs": {"power": 2}},
        {"id": "check", "depends_on": ["list"], "when": "${steps.list.ok} == true", "script": "pass"},
        {"id": "approve", "depends_on": ["each", "check"], "wait_for": {"fields": ["ok", "note"]},
         "run_if": "all_done"},
    ],
}  # fmt: skip


async def test_runs_page_by_offset_with_step_counts(api: Api) -> None:
    run_ids = [await api.submit(HELLO) for _ in range(5)]
    for run_id in run_ids:
        await api.until_ended(run_id)

    status, body = await api.call("GET", "/v1/runs", params={"limit": "2", "offset": "1", "counts": "true"})
    listed = models.RunList.model_validate(body).runs
    assert status == 200 and [run.run_id for run in listed] == [run_ids[3], run_ids[2]]
    assert all(run.step_counts == {"succeeded": 2} for run in listed)
    status, body = await api.call("GET", "/v1/runs", params={"offset": "4"})
    assert [run["run_id"] for run in body["runs"]] == [run_ids[0]] and "step_counts" not in body["runs"][0]


async def test_runs_are_found_by_id_prefix_newest_first_and_filtered(api: Api) -> None:
    hello, failing = await api.submit(HELLO), await api.submit(FAILING)
    await api.until_ended(hello)
    await api.until_ended(failing)

    status, body = await api.call("GET", "/v1/runs", params={"id_prefix": failing[:-3]})
    assert status == 200 and failing in [run["run_id"] for run in body["runs"]]
    status, body = await api.call("GET", "/v1/runs", params={"id_prefix": failing})
    assert [run["run_id"] for run in body["runs"]] == [failing]
    status, body = await api.call("GET", "/v1/runs", params={"id_prefix": failing, "status": "succeeded"})
    assert body["runs"] == []
    status, body = await api.call("GET", "/v1/runs", params={"id_prefix": "no-such-run"})
    assert status == 200 and body["runs"] == []
    status, body = await api.call("GET", "/v1/runs", params={"id_prefix": ""})
    assert status == 400


async def test_a_runs_graph_is_laid_out_in_layers_with_its_marks(api: Api) -> None:
    run_id = await api.submit(BRANCHY)
    status, body = await api.call("GET", f"/v1/runs/{run_id}/graph")
    graph = models.GraphBody.model_validate(body)
    nodes = {node.id: node for node in graph.nodes}

    assert status == 200 and [node.id for node in graph.nodes] == ["list", "each", "check", "approve"]
    assert [(nodes[n].layer, nodes[n].kind) for n in nodes] == [(0, "script"), (1, "map"), (1, "script"), (2, "wait")]
    assert sorted(nodes[n].order for n in ("each", "check")) == [0, 1]
    assert nodes["each"].map_over == "${steps.list.items}" and nodes["check"].when == "${steps.list.ok} == true"
    assert nodes["approve"].wait_for == ["ok", "note"] and nodes["approve"].run_if == "all_done"
    assert nodes["check"].inputs is None and nodes["each"].inputs == {"power": 2}
    edges = [("check", "approve"), ("each", "approve"), ("list", "check"), ("list", "each")]
    assert sorted(map(tuple, graph.edges)) == edges
    status, body = await api.call("GET", "/v1/runs/no-such-run/graph")
    assert status == 404


async def test_a_runs_view_says_which_event_to_stream_after(api: Api) -> None:
    run_id = await api.submit(GATED)
    await api.until_step(run_id, "approve", "waiting")
    status, body = await api.call("GET", f"/v1/runs/{run_id}")
    detail = models.RunDetail.model_validate(body)
    _, events = await api.call("GET", f"/v1/runs/{run_id}/events")
    assert status == 200 and detail.last_event_seq == events["events"][-1]["seq"] > 0


async def test_validation_reports_problems_with_places_from_json_and_yaml_text(api: Api) -> None:
    yaml_text = 'name: y\nsteps:\n  - id: a\n    script: "outputs[1"\n  - id: b\n    depends_on: [zzz]\n'
    yaml_text += "    script: pass\n"
    status, body = await api.call("POST", "/v1/flows/validate", json={"source": yaml_text, "format": "yaml"})
    checked = models.ValidateBody.model_validate(body)
    assert status == 200 and not checked.valid and checked.flow is None
    places = [problem.path for problem in checked.problems]
    assert places[0] == "line 4, steps[0].script (step 'a')" and places[1].startswith("line 6, steps[1].depends_on[0]")

    status, body = await api.call("POST", "/v1/flows/validate", json={"source": '{"name": "x", "steps": [}'})
    assert status == 200 and not body["valid"] and body["problems"][0]["path"].startswith("line 1")

    text = '{"name": "ok", "inputs": {"who": "world"}, "steps": [{"id": "a", "script": "pass"}]}'
    status, body = await api.call("POST", "/v1/flows/validate", json={"source": text})
    assert status == 200 and body["valid"] and body["inputs"] == {"who": "world"} and body["problems"] == []
    status, _ = await api.call("POST", "/v1/runs", json={"flow": body["flow"], "inputs": {"who": "you"}})
    assert status == 201


async def test_validation_needs_exactly_one_flow_and_applies_the_servers_checks(api: Api) -> None:
    for both_or_neither in [{}, {"flow": HELLO, "source": "{}"}]:
        status, body = await api.call("POST", "/v1/flows/validate", json=both_or_neither)
        assert status == 200 and not body["valid"] and "either" in body["problems"][0]["message"]
    hostile = {"name": "h", "steps": [{"id": "a", "script": "().__class__"}]}
    status, body = await api.call("POST", "/v1/flows/validate", json={"flow": hostile})
    assert not body["valid"] and "__class__" in body["problems"][0]["message"]
    remote = {"name": "r", "steps": [{"id": "a", "script": "pass", "executor": "remote"}]}
    status, body = await api.call("POST", "/v1/flows/validate", json={"flow": remote})
    assert not body["valid"] and "remote" in body["problems"][0]["message"]


async def test_workers_are_listed_only_by_a_server_that_drives_runs(make_api: MakeApi) -> None:
    driving: Api = await make_api()
    status, body = await driving.call("GET", "/v1/workers")
    assert status == 200 and models.WorkersBody.model_validate(body).orchestrating
    assert body["executors"] == {}  # only local steps: their sandbox processes are no workers to list
    reading: Api = await make_api(orchestrate=False)
    status, body = await reading.call("GET", "/v1/workers")
    assert status == 200 and body == {"orchestrating": False, "executors": {}}


async def test_each_attempts_logs_carry_its_error_with_the_script_line(api: Api) -> None:
    flaky = {
        "name": "flaky",
        "steps": [
            {"id": "try", "retries": {"max_attempts": 2, "backoff_s": 0.01},
             "script": "log('attempt', attempt)\nx = 1\nif attempt < 3:\n    raise ValueError('not yet %d' % attempt)"},
        ],
    }  # fmt: skip
    run_id = await api.submit(flaky)
    await api.until_ended(run_id)
    status, body = await api.call("GET", f"/v1/runs/{run_id}/logs")
    logs = models.LogList.model_validate(body).logs

    assert status == 200 and [log.attempt for log in logs] == [1, 2]
    for log in logs:
        assert log.error is not None and log.error.type == "ValueError" and log.error.line == 4
        assert log.error.message == f"not yet {log.attempt}"
        assert log.source_line == "raise ValueError('not yet %d' % attempt)"
