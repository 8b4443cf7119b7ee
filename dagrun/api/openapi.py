"""The OpenAPI 3.1 document of the API, built from the route table and the pydantic models.

Schemas come from the models (`dagrun.api.models`) and the flow's own model (`flow_json_schema()`),
all hoisted into ``components/schemas`` so that every ``$ref`` resolves against the document. Errors
every route may answer (400, 401, 404, 413, 503) are derived from what the route takes. The route that
creates a run links its id to every route that takes one, so that clients (and stateful fuzzers) can
chain calls; a new run route is linked without being named here.
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
STATIC_PATHS = frozenset({"/openapi.json"})  # served from memory: no store behind them, so never a 503
# How a link from a created run (`RunCreated`) fills each path parameter of the route it leads to: the run's
# id from the response, a step's id from the submitted flow (its first step).
CREATED_RUN_PARAMETERS = {"run_id": "$response.body#/run_id", "step_id": "$request.body#/flow/steps/0/id"}


def openapi_document(routes: Sequence[Route]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    used: set[type[BaseModel]] = {models.ErrorBody, models.InvalidFlowBody, models.EventBody}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, routes)
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


def _operation(route: Route, routes: Sequence[Route]) -> dict[str, Any]:
    operation: dict[str, Any] = {"operationId": route.handler.__name__, "summary": route.summary}
    if route.description:
        operation["description"] = route.description
    if route.public:
        operation["security"] = []
    parameters = _path_parameters(route) + _query_parameters(route)
    if parameters:
        operation["parameters"] = parameters
    if route.body is not None:
        operation["requestBody"] = {
            "required": route.body_required,
            "content": {"application/json": {"schema": _ref(route.body)}},
        }
    operation["responses"] = _successes(route, routes) | _refusals(route)
    return operation


def _path_parameter_names(route: Route) -> list[str]:
    return re.findall(r"{(\w+)}", route.path)


def _path_parameters(route: Route) -> list[dict[str, Any]]:
    return [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _path_parameter_names(route)
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
            "name": "Last-Event-ID", "in": "header", "required": False,
            "schema": {"type": "integer", "minimum": 0, "maximum": models.MAX_SEQ},
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


def _successes(route: Route, routes: Sequence[Route]) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, model in route.ok.items():
        response: dict[str, Any] = {"description": HTTPStatus(status).phrase}
        if model is not None:
            response["content"] = {route.media: {"schema": _ref(model)}}
        elif status != HTTPStatus.NO_CONTENT:
            schema = _event_frame_schema() if route.media == "text/event-stream" else {"type": "object"}
            response["content"] = {route.media: {"schema": schema}}
        if model is models.RunCreated:
            response["links"] = _created_run_links(routes)
        responses[str(status)] = response
    return responses


def _event_frame_schema() -> dict[str, Any]:
    """One frame of a run's event stream, as its fields (an OpenAPI 3.1 event stream's schema describes
    each event): `data` is the event as JSON."""
    return {
        "type": "object",
        "required": ["id", "event", "data"],
        "properties": {
            "id": {"type": "string", "pattern": "^[0-9]+$", "description": "The event's seq."},
            "event": {"enum": ["run", "step"], "description": "The event's kind."},
            "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": _ref(models.EventBody)},
        },
    }


def _created_run_links(routes: Sequence[Route]) -> dict[str, Any]:
    """A link to every route that takes a run's id (and nothing a created run cannot fill), by operationId."""
    links: dict[str, Any] = {}
    for target in routes:
        names = _path_parameter_names(target)
        if "run_id" in names and CREATED_RUN_PARAMETERS.keys() >= set(names):
            parameters = {name: CREATED_RUN_PARAMETERS[name] for name in names}
            links[target.handler.__name__] = {"operationId": target.handler.__name__, "parameters": parameters}
    return links


def _refusals(route: Route) -> dict[str, Any]:
    """Route-specific refusals, and those implied by what the route takes."""
    refusals: dict[int, str] = {}
    if route.body is not None or route.query is not None:
        refusals[HTTPStatus.BAD_REQUEST] = "malformed JSON, or a body, query or header value the route does not take"
    if not route.public:
        refusals[HTTPStatus.UNAUTHORIZED] = "missing or wrong token"
    if "{run_id}" in route.path:
        refusals[HTTPStatus.NOT_FOUND] = "no run has this id"
    # the guard refuses a declared body over the limit on every route, before it is read
    refusals[HTTPStatus.REQUEST_ENTITY_TOO_LARGE] = "the body is over the server's size limit"
    if not route.public and route.path not in STATIC_PATHS:
        refusals[HTTPStatus.SERVICE_UNAVAILABLE] = "the store or an executor failed; retry later"
    for status, when in route.refusals.items():
        refusals[status] = f"{refusals[status]}; or {when}" if status in refusals else when
    responses: dict[str, Any] = {}
    for status, when in sorted(refusals.items()):
        model = models.InvalidFlowBody if status == HTTPStatus.UNPROCESSABLE_ENTITY else models.ErrorBody
        responses[str(status)] = {"description": when, "content": {"application/json": {"schema": _ref(model)}}}
    return responses


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF_TEMPLATE.format(model=model.__name__)}
