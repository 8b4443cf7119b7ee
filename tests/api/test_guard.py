"""What the API refuses, and how: the token before anything else, bodies and queries it cannot take,
unknown runs and routes, commands that do not fit, invalid flows; every refusal is JSON, never a
traceback, and the token never reaches a log line."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from dagrun import load_flow
from dagrun.api import ApiSettings, models
from dagrun.engine.control import RunControl
from dagrun.errors import FlowError, StoreError
from dagrun.flow.limits import FlowLimits
from tests.api.conftest import GATED, HELLO, Api, MakeApi, route_table


def assert_error(status: int, body: Any, expected_status: int, *fragments: str) -> None:
    assert status == expected_status, body
    assert set(body) == {"error"}, body
    for fragment in fragments:
        assert fragment in body["error"]


async def test_health_needs_no_token(api: Api) -> None:
    async with aiohttp.ClientSession(api.url) as anonymous, anonymous.get("/health") as response:
        assert response.status == 200 and await response.json() == {"status": "ok"}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token-0123456789abcdef"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer \u00e9t\u00e9"},  # non-ASCII: refused, not a TypeError
    ],
    ids=["none", "wrong", "basic", "empty", "non-ascii"],
)
@pytest.mark.parametrize("path", ["/v1/runs", "/openapi.json", "/v1/runs/some-run/events/stream", "/no/such/route"])
async def test_every_route_but_health_refuses_a_missing_or_wrong_token(
    make_api: MakeApi, headers: dict[str, str], path: str
) -> None:
    api: Api = await make_api(orchestrate=False)
    async with aiohttp.ClientSession(api.url) as anonymous, anonymous.get(path, headers=headers) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert await response.json() == {"error": "missing or wrong token"}


async def test_the_token_is_checked_before_the_body_is_read(make_api: MakeApi) -> None:
    api: Api = await make_api(settings=ApiSettings(port=0, max_body_bytes=1000))
    body = b"x" * 5000  # over the limit, and not JSON
    async with aiohttp.ClientSession(api.url) as anonymous, anonymous.post("/v1/runs", data=body) as response:
        assert response.status == 401


async def test_the_token_never_reaches_the_log(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-" + api.token[::-1]
    headers = {"Authorization": f"Bearer {wrong}"}
    async with aiohttp.ClientSession(api.url) as anonymous, anonymous.get("/v1/runs", headers=headers) as response:
        assert response.status == 401
    run_id = await api.submit(HELLO)
    await api.until_ended(run_id)
    assert "refused GET /v1/runs" in caplog.text
    assert api.token not in caplog.text and wrong not in caplog.text


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b'{"flow": ', "malformed JSON"),
        (b"\xff\xfe", "malformed JSON"),
        (b"", "expected a JSON object"),
        (b"[1, 2]", "valid dictionary"),
        (b'{"inputs": {}}', "flow: Field required"),
        (json.dumps({"flow": HELLO, "priority": 1}).encode(), "priority: unknown field"),
        (b'{"flow": []}', "flow: Input should be a valid dictionary"),
        (json.dumps({"flow": HELLO, "inputs": [1]}).encode(), "inputs: Input should be a valid dictionary"),
    ],
    ids=["truncated", "not-utf8", "empty", "array", "no-flow", "extra-field", "flow-array", "inputs-array"],
)
async def test_a_malformed_submission_is_400_with_what_is_wrong(api: Api, body: bytes, fragment: str) -> None:
    status, answer = await api.call("POST", "/v1/runs", data=body, headers={"Content-Type": "application/json"})
    assert_error(status, answer, 400, "request body: ", fragment)


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ({"status": "sleeping"}, "status: Input should be"),
        ({"limit": "0"}, "limit: Input should be greater than or equal to 1"),
        ({"limit": "many"}, "limit: Input should be a valid integer"),
        ({"sort": "asc"}, "sort: unknown field"),
    ],
)
async def test_a_bad_query_is_400(api: Api, query: dict[str, str], fragment: str) -> None:
    status, body = await api.call("GET", "/v1/runs", params=query)
    assert_error(status, body, 400, "query: ", fragment)


@pytest.mark.parametrize("route", ["events", "events/stream"])
async def test_an_event_seq_past_what_a_store_holds_is_400_naming_it(api: Api, route: str) -> None:
    run_id = await api.submit(HELLO)
    # What the fuzzer sent: past 64 bits, it was a 500 (the store cannot hold it)
    status, body = await api.call("GET", f"/v1/runs/{run_id}/{route}", params={"after": "19046597803243059806208"})
    assert_error(status, body, 400, "query: after: ", f"less than or equal to {models.MAX_SEQ}")
    status, body = await api.call("GET", f"/v1/runs/{run_id}/events", params={"after": str(models.MAX_SEQ)})
    assert (status, body) == (200, {"events": []})


async def test_a_body_over_the_limit_is_413_declared_or_chunked(make_api: MakeApi) -> None:
    api: Api = await make_api(settings=ApiSettings(port=0, max_body_bytes=1000))
    document = json.dumps({"flow": HELLO, "inputs": {"who": "x" * 2000}}).encode()
    status, body = await api.call("POST", "/v1/runs", data=document)
    assert_error(status, body, 413, "over the 1000-byte limit")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit is met while reading
        for start in range(0, len(document), 100):
            yield document[start : start + 100]

    status, body = await api.call("POST", "/v1/runs", data=chunks())
    assert_error(status, body, 413, "over the 1000-byte limit")
    status, body = await api.call("GET", "/v1/runs", data=document)  # a route without a body: as documented
    assert_error(status, body, 413, "over the 1000-byte limit")
    assert (await api.call("GET", "/v1/runs"))[0] == 200  # the server is fine


async def test_an_invalid_flow_is_422_with_the_problems_dagrun_validate_lists(api: Api, tmp_path: Path) -> None:
    flow = {
        "name": "bad",
        "steps": [
            {"id": "extract", "script": "outputs['rows'] = 3", "outputs": ["rows"]},
            {"id": "load", "depends_on": ["extrct"], "script": "outputs['n'] = (", "inputs": {"n": "${steps.x.y}"}},
            {"id": "b", "script": "import os", "dependson": ["load"]},
        ],
    }
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(flow))
    with pytest.raises(FlowError) as validated:
        load_flow(path)
    expected = [{"path": p.path, "message": p.message} for p in validated.value.problems]
    assert len(expected) >= 4

    status, body = await api.call("POST", "/v1/runs", json={"flow": flow})
    assert status == 422
    assert models.InvalidFlowBody.model_validate(body).error == f"invalid flow: {len(expected)} problems"
    assert body["problems"] == expected
    assert (await api.call("GET", "/v1/runs"))[1] == {"runs": []}  # an invalid flow never creates a run


@pytest.mark.parametrize(
    ("flow", "inputs", "path", "fragment"),
    [
        ({"name": "f", "steps": [{"id": "a", "script_file": "a.py"}]}, {}, "steps[0].script_file", ""),
        (HELLO, {"whom": "x"}, "inputs.whom", "unknown flow input"),
        ({"name": "f", "steps": [{"id": "a", "script": "x = 1", "executor": "gpu"}]}, {}, "steps[0].executor", "gpu"),
    ],
    ids=["script-file", "unknown-input", "unknown-executor"],
)
async def test_what_the_server_cannot_run_is_422(
    api: Api, flow: dict[str, Any], inputs: dict[str, Any], path: str, fragment: str
) -> None:
    status, body = await api.call("POST", "/v1/runs", json={"flow": flow, "inputs": inputs})
    assert status == 422, body
    (problem,) = body["problems"]
    assert problem["path"].startswith(path) and fragment in problem["message"]


@pytest.mark.parametrize(
    ("flow_input", "run_input", "path"),
    [
        ("[" * 100 + "]" * 100, "null", "steps[0].inputs.x"),
        ("[" * 100_000 + "]" * 100_000, "null", "steps[0].inputs.x"),
        ("null", '{"a":' * 1000 + "1" + "}" * 1000, "inputs.y"),
        ("null", "[" * 100_000 + "]" * 100_000, "inputs.y"),
    ],
    ids=["flow-100", "flow-100000", "run-input-1000", "run-input-100000"],
)
async def test_values_nested_too_deep_are_422_at_their_place(
    api: Api, flow_input: str, run_input: str, path: str
) -> None:
    flow = (
        '{"name": "f", "inputs": {"y": 0}, "steps": [{"id": "a", "script": "", "inputs": {"x": ' + flow_input + "}}]}"
    )
    body = '{"flow": ' + flow + ', "inputs": {"y": ' + run_input + "}}"
    status, answer = await api.call("POST", "/v1/runs", data=body, headers={"Content-Type": "application/json"})
    assert status == 422, answer
    assert answer["problems"] == [
        {"path": path, "message": "nested more than 64 levels deep (arrays and objects); flatten it"}
    ]
    assert (await api.call("GET", "/v1/runs"))[1] == {"runs": []}


async def test_a_flow_over_the_servers_limits_is_422_and_the_server_sets_them(make_api: MakeApi) -> None:
    flow = {"name": "f", "steps": [{"id": "a", "script": "", "retries": {"max_attempts": 500}}]}
    strict: Api = await make_api(orchestrate=False)
    status, body = await strict.call("POST", "/v1/runs", json={"flow": flow})
    assert status == 422, body
    assert body["problems"] == [
        {
            "path": "steps[0].retries.max_attempts (step 'a')",
            "message": "500 is over the maximum of 100 attempts (--max-attempts); lower it",
        }
    ]

    settings = ApiSettings(port=0, flow_limits=FlowLimits(max_attempts=500))
    lenient: Api = await make_api(orchestrate=False, settings=settings)
    status, body = await lenient.call("POST", "/v1/runs", json={"flow": flow})
    assert status == 201, body


def _run_routes() -> list[tuple[str, str]]:
    routes = route_table()
    return [(route.method, route.path) for route in routes if "{run_id}" in route.path]


@pytest.mark.parametrize(("method", "path"), _run_routes())
async def test_every_run_route_is_404_for_an_unknown_run(api: Api, method: str, path: str) -> None:
    url = path.replace("{run_id}", "no-such-run").replace("{step_id}", "a")
    status, body = await api.call(method, url, json={"values": {}} if "signal" in path else None)
    assert_error(status, body, 404, "no run with id 'no-such-run'")


async def test_unknown_routes_and_methods_are_json(api: Api) -> None:
    status, body = await api.call("GET", "/v1/nothing")
    assert_error(status, body, 404, "no route GET /v1/nothing")
    async with api.client.delete("/v1/runs") as response:
        assert response.status == 405 and response.headers["Allow"] == "GET,POST"
        assert "method DELETE is not allowed on /v1/runs" in (await response.json())["error"]


async def test_commands_that_do_not_fit_the_run_are_409(api: Api) -> None:
    run_id = await api.submit(GATED)
    await api.until_step(run_id, "approve", "waiting")
    signal = f"/v1/runs/{run_id}/steps/{{}}/signal"
    status, body = await api.call("POST", signal.format("build"), json={"values": {"ok": 1}})
    assert_error(status, body, 409, "step 'build' runs a script")
    status, body = await api.call("POST", signal.format("nope"), json={"values": {"ok": 1}})
    assert_error(status, body, 409, "has no step 'nope'")
    status, body = await api.call("POST", signal.format("approve"), json={"values": {"okay": 1}})
    assert_error(status, body, 409, "missing ok", "unknown okay")
    status, body = await api.call("POST", signal.format("approve"), json={"value": {"ok": 1}})
    assert_error(status, body, 400, "value: unknown field")

    await api.call("POST", f"/v1/runs/{run_id}/cancel")
    await api.until_ended(run_id)
    for command in ("cancel", "pause", "resume"):
        status, body = await api.call("POST", f"/v1/runs/{run_id}/{command}")
        assert_error(status, body, 409, "already ended cancelled")
    status, body = await api.call("POST", signal.format("approve"), json={"values": {"ok": 1}})
    assert_error(status, body, 409, "already ended cancelled")


async def test_a_second_signal_with_other_values_is_409_naming_the_first_and_a_repeat_is_202(
    make_api: MakeApi,
) -> None:
    api = await make_api(orchestrate=False)  # nobody drives the run: the step never ends under the test
    run_id = await api.submit(GATED)
    signal = f"/v1/runs/{run_id}/steps/approve/signal"
    status, first = await api.call("POST", signal, json={"values": {"ok": 1}})
    assert status == 202
    status, body = await api.call("POST", signal, json={"values": {"ok": 2}})
    assert_error(status, body, 409, "already has a signal", f"command {first['seq']}, sent", 'with {"ok":1}')
    status, again = await api.call("POST", signal, json={"values": {"ok": 1}})
    assert (status, again) == (202, first)


async def test_a_failing_store_is_503_and_a_bug_is_500_without_a_traceback(
    api: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def store_down(*args: Any, **kwargs: Any) -> Any:
        raise StoreError("redis at 'redis://***@db:6379/0' does not answer")

    async def bug(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("oops")

    monkeypatch.setattr(RunControl, "list_runs", store_down)
    status, body = await api.call("GET", "/v1/runs")
    assert_error(status, body, 503, "does not answer")
    monkeypatch.setattr(RunControl, "status", bug)
    status, body = await api.call("GET", "/v1/runs/some-run")
    assert_error(status, body, 500, "internal error")
    assert "Traceback" not in body["error"] and "KeyError" in caplog.text


async def raw_request(api: Api, request: bytes) -> bytes:
    """What the server answers to `request`, sent as these bytes, until it closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", api.server.port)
    writer.write(request)
    try:
        async with asyncio.timeout(10):
            return await reader.read()
    finally:
        writer.close()


async def test_a_token_that_is_not_utf8_is_refused_with_401(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    # What the fuzzer sent with the lowest aiohttp: the header's bytes came decoded with surrogate escapes, and
    # encoding them to compare with the token was a 500 with a traceback
    answer = await raw_request(api, b"GET /v1/runs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xc3(\xff\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401 ") and json.loads(body) == {"error": "missing or wrong token"}
    assert "Traceback" not in caplog.text


async def test_a_request_too_malformed_to_parse_is_400_and_one_log_line_without_the_token(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # A NUL byte in a header (here the token's): aiohttp's parser refuses the request before the app sees it
    request = b"GET /v1/runs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\x00\r\n\r\n" % api.token.encode()
    answer = await raw_request(api, request)
    assert answer.partition(b"\r\n")[0].endswith(b" 400 Bad Request") and b"Invalid header value char" in answer
    logged = [record for record in caplog.records if "malformed request" in record.getMessage()]
    assert len(logged) == 1 and logged[0].levelno == logging.WARNING and logged[0].exc_info is None
    assert "(400 Invalid header value char)" in logged[0].getMessage()
    assert "Traceback" not in caplog.text and api.token not in caplog.text
