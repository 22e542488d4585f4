"""The open routes (no key, like an Azure endpoint's probes): liveness, readiness (also the Open
Inference Protocol's), Prometheus metrics and the draw-a-digit page."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response

from mnistops.serving import schemas as S
from mnistops.serving.errors import json_response
from mnistops.serving.openapi import READY_QUERY, doc
from mnistops.serving.page import PAGE
from mnistops.serving.runtime import Runtime

PAGE_HEADERS = {"Cache-Control": "no-store", "X-Frame-Options": "DENY",
                "Content-Security-Policy": "default-src 'self'; style-src 'unsafe-inline'; "
                                           "script-src 'unsafe-inline'; img-src 'self' data: blob:"}


def router(rt: Runtime) -> APIRouter:
    r = APIRouter()

    @r.get("/health", tags=["ops"], **doc(S.Health, summary="Liveness"))
    async def health(request: Request) -> Response:
        return json_response({"status": "ok"})

    @r.get("/ready", tags=["ops"], **doc(S.Ready, errors=(404, 503), parameters=[READY_QUERY],
                                         summary="Readiness: every deployment with traffic answers "
                                                 "(?deployment=NAME checks one)"))
    async def ready(request: Request) -> Response:
        is_ready, reasons = await rt.live.readiness(request.query_params.get("deployment"))
        return json_response({"ready": is_ready, "reasons": reasons}, 200 if is_ready else 503)

    @r.get("/v2/health/live", tags=["open inference protocol"], **doc(S.V2Live, summary="Liveness (no key)"))
    async def v2_live(request: Request) -> Response:
        return json_response({"live": True})

    @r.get("/v2/health/ready", tags=["open inference protocol"],
           **doc(S.V2Ready, errors=(503,), summary="Readiness (no key)"))
    async def v2_ready(request: Request) -> Response:
        is_ready, _ = await rt.live.readiness()
        return json_response({"ready": is_ready}, 200 if is_ready else 503)

    @r.get("/metrics", tags=["ops"], summary="Prometheus metrics (all workers)", response_class=PlainTextResponse,
           responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
    async def metrics(request: Request) -> Response:
        live = rt.live
        rt.metrics.set_topology(live.traffic, live.mirror, live.health())
        return Response(rt.metrics.render(), media_type=rt.metrics.content_type)

    @r.get("/", tags=["page"], response_class=HTMLResponse, summary="Draw a digit",
           responses={200: {"content": {"text/html": {}}, "description": "the page"}})
    async def page(request: Request) -> Response:
        return HTMLResponse(PAGE, headers=PAGE_HEADERS)

    return r
