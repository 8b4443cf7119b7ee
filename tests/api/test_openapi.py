"""/openapi.json: an OpenAPI 3.1 document of every route, its schemas from the models and the flow's, the
responses each route can give (and no other), and links that chain calls from a created run."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openapi_spec_validator
import pytest

from dagrun.api import models
from dagrun.flow.schema import JSON_SCHEMA_DIALECT, flow_json_schema
from tests.api.conftest import HELLO, Api, route_table
from tests.api.test_stream import stream_of

STREAM = "/v1/runs/{run_id}/events/stream"


def served_routes() -> set[tuple[str, str]]:
    routes = route_table()
    return {(route.method.lower(), route.path) for route in routes}


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [ref for value in node.values() for ref in refs(value)]
    if isinstance(node, list):
        return [ref for item in node for ref in refs(item)]
    return []


@pytest.fixture
async def document(api: Api) -> dict[str, Any]:
    status, body = await api.call("GET", "/openapi.json")
    assert status == 200
    return dict(body)


async def test_every_route_is_described_with_its_responses(document: dict[str, Any]) -> None:
    assert document["openapi"] == "3.1.0"
    described = {(method, path) for path, item in document["paths"].items() for method in item}
    assert described == served_routes()
    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert operation["operationId"] and operation["summary"], (method, path)
            assert any(status.startswith("2") for status in operation["responses"]), (method, path)
            if path != "/health":
                assert "401" in operation["responses"], (method, path)
            if "{run_id}" in path:
                assert "404" in operation["responses"], (method, path)
    assert document["paths"]["/health"]["get"]["security"] == []
    assert document["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}


async def test_every_ref_resolves_and_the_flow_schema_is_the_flow_model(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    for ref in refs(document):
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas, ref
    flow = flow_json_schema()
    assert schemas["Flow"]["properties"].keys() == flow["properties"].keys()
    assert set(flow["$defs"]) <= set(schemas)
    submit = schemas["SubmitRequest"]
    assert submit["additionalProperties"] is False and submit["required"] == ["flow"]
    assert refs(submit["properties"]["flow"]) == ["#/components/schemas/Flow"]


async def test_the_document_passes_the_openapi_validator(document: dict[str, Any]) -> None:
    openapi_spec_validator.validate(document)


def conforms(document: dict[str, Any], schema: dict[str, Any], instance: Any) -> bool:
    """Whether `instance` is valid against `schema`, whose refs point into the document's components."""
    root = {"$schema": JSON_SCHEMA_DIALECT, "components": document["components"], **schema}
    return jsonschema.Draft202012Validator(root).is_valid(instance)


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method, path, operation) for path, item in document["paths"].items() for method, operation in item.items()]


async def test_each_error_status_is_documented_where_it_can_happen(document: dict[str, Any]) -> None:
    for method, path, operation in operations(document):
        responses = operation["responses"]
        takes_input = "requestBody" in operation or any(p["in"] != "path" for p in operation.get("parameters", []))
        assert ("400" in responses) == takes_input, (method, path)
        assert "413" in responses, (method, path)  # a declared body over the limit, whatever the route
        # the routes that make a run: a flow or inputs can be invalid
        assert ("422" in responses) == (
            (method, path) in {("post", "/v1/runs"), ("post", "/v1/runs/{run_id}/rerun")}
        ), (
            method,
            path,
        )
        # A store behind every route but these two; a 500 is a bug, not part of the contract
        assert ("503" in responses) == (path not in {"/health", "/openapi.json"}), (method, path)
        assert [status for status in responses if status.startswith("5")] in ([], ["503"]), (method, path)
    refusals = document["paths"]["/v1/runs"]["post"]["responses"]["422"]["content"]["application/json"]
    assert refusals["schema"] == {"$ref": "#/components/schemas/InvalidFlowBody"}


async def test_a_created_run_links_to_every_route_that_takes_its_id(document: dict[str, Any]) -> None:
    links = document["paths"]["/v1/runs"]["post"]["responses"]["201"]["links"]
    taking_a_run = {operation["operationId"] for _, path, operation in operations(document) if "{run_id}" in path}
    assert set(links) == {link["operationId"] for link in links.values()} == taking_a_run
    assert all(link["parameters"]["run_id"] == "$response.body#/run_id" for link in links.values())
    assert links["signal_step"]["parameters"]["step_id"] == "$request.body#/flow/steps/0/id"


async def test_the_event_stream_documents_each_frame_and_real_frames_conform(
    api: Api, document: dict[str, Any]
) -> None:
    frame = document["paths"][STREAM]["get"]["responses"]["200"]["content"]["text/event-stream"]["schema"]
    assert frame["properties"]["data"]["contentSchema"] == {"$ref": "#/components/schemas/EventBody"}
    run_id = await api.submit(HELLO)
    stream = await stream_of(api, run_id)
    assert stream.ended and stream.frames
    for received in stream.frames:  # stream_of parses `data`: as sent, it is a string of JSON
        assert conforms(document, frame, {**received, "data": json.dumps(received["data"])}), received
        assert conforms(document, frame["properties"]["data"]["contentSchema"], received["data"]), received
    assert not conforms(document, frame, {"id": "1", "event": "run"})  # no data


async def test_the_submitted_flow_schema_refuses_script_files(document: dict[str, Any]) -> None:
    submit = {"$ref": "#/components/schemas/SubmitRequest"}
    assert conforms(document, submit, {"flow": HELLO})
    from_file = {"name": "f", "steps": [{"id": "a", "script_file": "a.py"}]}
    assert not conforms(document, submit, {"flow": from_file})


async def test_the_documented_examples_are_accepted_and_run(api: Api, document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    [submit], [signal] = schemas["SubmitRequest"]["examples"], schemas["SignalRequest"]["examples"]
    assert submit == models.SUBMIT_EXAMPLE
    status, created = await api.call("POST", "/v1/runs", json=submit)
    assert status == 201, created
    run_id = created["run_id"]
    step_id = submit["flow"]["steps"][0]["id"]  # what the link to signal_step fills in
    await api.until_step(run_id, step_id, "waiting")
    status, command = await api.call("POST", f"/v1/runs/{run_id}/steps/{step_id}/signal", json=signal)
    assert status == 202, command
    ended = await api.until_ended(run_id)
    assert ended["status"] == "succeeded" and ended["steps"]["ship"]["outputs"] == {"shipped": True}
