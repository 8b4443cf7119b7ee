"""/openapi.json: an OpenAPI 3.1 document of every route, its schemas from the models and the flow's."""

from __future__ import annotations

from typing import Any

import openapi_spec_validator
import pytest

from dagrun.flow.schema import flow_json_schema
from tests.api.conftest import Api, route_table


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
