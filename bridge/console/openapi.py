"""`/admin/openapi.json`: the admin API described in OpenAPI 3.1, generated from its route table and the
structs its handlers decode and encode."""

from __future__ import annotations

from functools import cache
from typing import Any

import msgspec
from aiohttp import web

from bridge import __version__
from bridge.console.api import API_HEADERS, ROUTES, Route, authorize
from bridge.console.models import NO_NUL, ErrorBody

REF = "#/components/schemas/{name}"


def _query_parameters(struct: type[msgspec.Struct], components: dict[str, Any]) -> list[dict[str, Any]]:
    _, defs = msgspec.json.schema_components([struct], ref_template=REF)
    components.update({k: v for k, v in defs.items() if k != struct.__name__})
    own = defs[struct.__name__]
    out = []
    for name, schema in own.get("properties", {}).items():
        out.append({"name": name, "in": "query", "required": name in own.get("required", []), "schema": schema,
                    **({"description": schema["description"]} if "description" in schema else {})})
    return out


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": REF.format(name=ErrorBody.__name__)}}}}


def _operation(route: Route, components: dict[str, Any]) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": route.handler.__name__,
        "summary": route.summary,
        "security": [{"bearer": []}],
        "tags": ["changes" if route.change else "reads"],
    }
    params = [{"name": p, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1, **NO_NUL}}
              for p in route.path_params]
    if route.query is not None:
        params += _query_parameters(route.query, components)
    if params:
        op["parameters"] = params
    if route.body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": {"$ref": REF.format(name=route.body.__name__)}}}}
    responses: dict[str, Any] = {"200": {"description": "done", "content": {"application/json": {
        "schema": {"$ref": REF.format(name=route.response.__name__)}}}}}
    if route.query is not None or route.body is not None:
        responses["400"] = _error("a parameter or the body is invalid, or the store refuses a path or query value (its "
                                  "SQLSTATE named); `error` says which and why")
    elif route.path_params:
        responses["400"] = _error("the store refuses a path value (its SQLSTATE named); `error` says which")
    if route.body is not None and route.change:
        responses["422"] = _error("the store refuses a value of the body (its SQLSTATE named); `error` says which")
    responses["401"] = _error("no token, or an unknown one")
    if route.change:
        responses["403"] = _error("a read-only token cannot make changes")
    responses["404"] = _error(route.errors.get(404, "the admin API is off (no token configured)"))
    for status, text in route.errors.items():
        if status != 404:
            responses[str(status)] = _error(text)
    if route.body is not None:
        responses["413"] = _error("the body is over server.max_body_bytes; `error` names the limit")
        responses["415"] = _error("the body was not sent as application/json (UTF-8); `error` names what was sent")
    elif route.method != "GET":
        responses["415"] = _error("a body was sent, and not as application/json: this route takes none")
    responses["503"] = _error("the store is unavailable")
    op["responses"] = responses
    return op


@cache
def spec() -> dict[str, Any]:
    """The whole document (built once: the routes and structs do not change while the process runs)."""
    types: list[Any] = [ErrorBody]
    for r in ROUTES:
        types.append(r.response)
        if r.body is not None:
            types.append(r.body)
    _, components = msgspec.json.schema_components(types, ref_template=REF)
    paths: dict[str, Any] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, components)
    return {
        "openapi": "3.1.0",
        "info": {"title": "ticketbridge admin API", "version": __version__,
                 "description": "Reads need admin.token or a read token (admin.read_tokens); changes need "
                                "admin.token. Every change is written to the audit log."},
        "paths": paths,
        "components": {
            "schemas": dict(sorted(components.items())),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "admin.token, or a read-only token from admin.read_tokens"}},
        },
        "security": [{"bearer": []}],
    }


async def openapi_json(request: web.Request) -> web.Response:
    caller = authorize(request, change=False)
    if isinstance(caller, web.Response):
        return caller
    return web.json_response(spec(), headers=API_HEADERS)
