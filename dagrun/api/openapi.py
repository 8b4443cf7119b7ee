"""The OpenAPI 3.1 document of the API, built from the route table and the pydantic models.

Schemas come from the models (`dagrun.api.models`) and the flow's own model (`flow_json_schema()`),
all hoisted into ``components/schemas`` so that every ``$ref`` resolves against the document. Errors
every route may answer (401, 400, 404, 413, 5XX) are derived from what the route takes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from dagrun.api import models
from dagrun.api.routes import Route
from dagrun.flow.schema import JSON_SCHEMA_DIALECT, flow_json_schema

OPENAPI_VERSION = "3.1.0"
API_VERSION = "1"
REF_TEMPLATE = "#/components/schemas/{model}"
DESCRIPTION = (
    "Submit, watch and control dagrun runs. Every route but /health needs `Authorization: Bearer <token>`. "
    'Errors are JSON `{"error": message}`; an invalid flow adds `problems`, each with its `path`.'
)


def openapi_document(routes: Sequence[Route]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    used: set[type[BaseModel]] = {models.ErrorBody, models.InvalidFlowBody}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
        used.update(model for model in (route.body, route.query, *route.ok.values()) if model is not None)
    return {
        "openapi": OPENAPI_VERSION,
        "jsonSchemaDialect": JSON_SCHEMA_DIALECT,
        "info": {"title": "dagrun", "version": API_VERSION, "description": DESCRIPTION},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": component_schemas(sorted(used, key=lambda model: model.__name__)),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def component_schemas(used: Sequence[type[BaseModel]]) -> dict[str, Any]:
    """The schemas of `used` and of what they refer to, and the flow's; a name clash is a bug."""
    _, top = models_json_schema([(model, "validation") for model in used], ref_template=REF_TEMPLATE)
    schemas: dict[str, Any] = dict(top.get("$defs", {}))
    flow = flow_json_schema()
    flow.pop("$schema", None)  # the document's jsonSchemaDialect says it
    flow_defs = flow.pop("$defs", {})
    for name, schema in {**flow_defs, models.FLOW_SCHEMA_NAME: flow}.items():
        if name in schemas:
            raise RuntimeError(f"the API model {name!r} clashes with a flow schema definition")
        schemas[name] = _rehome_refs(schema)
    return dict(sorted(schemas.items()))


def _rehome_refs(schema: Any) -> Any:
    """The flow schema's ``#/$defs/X`` refs as ``#/components/schemas/X``."""
    if isinstance(schema, dict):
        return {
            key: REF_TEMPLATE.format(model=value.removeprefix("#/$defs/"))
            if key == "$ref" and isinstance(value, str) and value.startswith("#/$defs/")
            else _rehome_refs(value)
            for key, value in schema.items()
        }
    if isinstance(schema, list):
        return [_rehome_refs(item) for item in schema]
    return schema


def _operation(route: Route) -> dict[str, Any]:
    operation: dict[str, Any] = {"operationId": route.handler.__name__, "summary": route.summary}
    if route.description:
        operation["description"] = route.description
    if route.public:
        operation["security"] = []
    parameters = _path_parameters(route) + _query_parameters(route)
    if parameters:
        operation["parameters"] = parameters
    if route.body is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(route.body)}}}
    operation["responses"] = _successes(route) | _refusals(route)
    return operation


def _path_parameters(route: Route) -> list[dict[str, Any]]:
    return [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"{(\w+)}", route.path)
    ]


def _query_parameters(route: Route) -> list[dict[str, Any]]:
    parameters: list[dict[str, Any]] = []
    if route.query is not None:
        properties = route.query.model_json_schema(ref_template=REF_TEMPLATE)["properties"]
        for name, schema in properties.items():
            description = schema.pop("description", "")
            parameters.append({"name": name, "in": "query", "required": False, "schema": _query_schema(schema)})
            if description:
                parameters[-1]["description"] = description
    if route.media == "text/event-stream":
        parameters.append({
            "name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "integer", "minimum": 0},
            "description": "Resume after this event seq (an EventSource sends it when it reconnects).",
        })  # fmt: skip
    return parameters


def _query_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A query field's schema without what a query string cannot hold: a null (an absent parameter is
    the default), and pydantic's title."""
    schema = {
        key: value for key, value in schema.items() if key != "title" and not (key == "default" and value is None)
    }
    options = [option for option in schema.pop("anyOf", []) if option != {"type": "null"}]
    if len(options) == 1:
        schema |= options[0]
    elif options:
        schema["anyOf"] = options
    return schema


def _successes(route: Route) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, model in route.ok.items():
        response: dict[str, Any] = {"description": HTTPStatus(status).phrase}
        if model is not None:
            response["content"] = {route.media: {"schema": _ref(model)}}
        elif status != HTTPStatus.NO_CONTENT:
            response["content"] = {route.media: {"schema": {"type": "string" if "event" in route.media else "object"}}}
        responses[str(status)] = response
    return responses


def _refusals(route: Route) -> dict[str, Any]:
    """Route-specific refusals, and those implied by what the route takes."""
    refusals: dict[int, str] = {}
    if route.body is not None or route.query is not None:
        refusals[HTTPStatus.BAD_REQUEST] = "malformed JSON, or a body or query the route does not take"
    if not route.public:
        refusals[HTTPStatus.UNAUTHORIZED] = "missing or wrong token"
    if "{run_id}" in route.path:
        refusals[HTTPStatus.NOT_FOUND] = "no run has this id"
    if route.body is not None:
        refusals[HTTPStatus.REQUEST_ENTITY_TOO_LARGE] = "the body is over the server's size limit"
    refusals.update(route.refusals)
    responses: dict[str, Any] = {}
    for status, when in sorted(refusals.items()):
        model = models.InvalidFlowBody if status == HTTPStatus.UNPROCESSABLE_ENTITY else models.ErrorBody
        responses[str(status)] = {"description": when, "content": {"application/json": {"schema": _ref(model)}}}
    if not route.public:
        when = "the store or an executor failed (503), or a bug (500; its traceback is in the server's log)"
        responses["5XX"] = {"description": when, "content": {"application/json": {"schema": _ref(models.ErrorBody)}}}
    return responses


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF_TEMPLATE.format(model=model.__name__)}
