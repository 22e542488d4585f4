"""The OpenAPI description (``/openapi.json``, ``/docs``) of routes whose handlers decode raw bodies
with ``protocol.py``: each route declares its body, answers and errors with ``doc()``, and the
request models of ``schemas.py`` are added to the components."""

from __future__ import annotations

from typing import Any, Dict, Optional

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from mnistops.serving import schemas as S
from mnistops.serving.protocol import STATUS_MEANING

SCORING_ERRORS = (400, 401, 404, 408, 413, 415, 422, 503)
PIN_HEADER = {"name": "azureml-model-deployment", "in": "header", "required": False, "schema": {"type": "string"},
              "description": "pin the deployment that answers (blue, green, ...), bypassing the traffic split; "
                             "an unknown name gets a 404"}
READY_QUERY = {"name": "deployment", "in": "query", "required": False, "schema": {"type": "string"},
               "description": "check this deployment only (an unknown name gets a 404)"}


def doc(ok=None, ok_status: int = 200, body=None, errors=(), secured: Optional[str] = None,
        content: str = "application/json", summary: Optional[str] = None, parameters=()) -> dict:
    """Keyword arguments for ``add_api_route``: answers, body, security (``scoringKey`` or ``adminKey``)."""
    responses: Dict[int, dict] = {}
    if ok is not None:
        responses[ok_status] = {"model": ok, "description": "OK"}
    for code in errors:
        responses[code] = {"model": S.Error, "description": STATUS_MEANING[code]}
    extra: Dict[str, Any] = {}
    if body is not None:
        extra["requestBody"] = {"required": True,
                                "content": {content: {"schema": {"$ref": f"#/components/schemas/{body.__name__}"}}}}
    if secured:
        extra["security"] = [{secured: []}]
    if parameters:
        extra["parameters"] = list(parameters)
    out = {"responses": responses, "openapi_extra": extra, "status_code": ok_status}
    if summary:
        out["summary"] = summary
    return out


def install(app: FastAPI) -> None:
    def openapi():
        if app.openapi_schema:
            return app.openapi_schema
        spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schemas = spec.setdefault("components", {}).setdefault("schemas", {})
        for model in S.REQUEST_MODELS:
            js = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, sub in js.pop("$defs", {}).items():
                schemas.setdefault(name, sub)
            schemas[model.__name__] = js
        spec["components"]["securitySchemes"] = {
            "scoringKey": {"type": "http", "scheme": "bearer",
                           "description": "a scoring key of the endpoint (primary or secondary)"},
            "adminKey": {"type": "http", "scheme": "bearer", "description": "the endpoint's admin key"}}
        app.openapi_schema = spec
        return spec

    app.openapi = openapi
