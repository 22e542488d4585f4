"""``create_app(endpoint_dir) -> FastAPI``: one worker's app for one endpoint directory.

Put together from small modules: ``runtime`` (what the routes share, the steps of a scoring
request), ``scoring`` / ``admin`` / ``ops`` (the routes), ``middleware`` (request id, body limit,
log line, metrics, collection), ``errors`` (every non-200 answer), ``openapi`` (the description).
Models load in the lifespan, before the worker takes requests; the worker then joins the others.
"""

from __future__ import annotations

import gc
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from mnistops.serving import admin, errors, ops, openapi, scoring
from mnistops.serving.middleware import Frame
from mnistops.serving.runtime import Runtime
from mnistops.serving.settings import load_settings


def create_app(endpoint_dir, freeze_gc: bool = False) -> FastAPI:
    """``freeze_gc`` (the server's workers set it): once started, move every object alive into the
    GC's permanent generation, so full collections stay short (p99 latency) in a long-lived worker."""
    endpoint_dir = Path(endpoint_dir).resolve()
    settings = load_settings(endpoint_dir)
    rt = Runtime(endpoint_dir, settings)

    @asynccontextmanager
    async def lifespan(app):
        await rt.start()
        if freeze_gc:
            gc.collect()
            gc.freeze()
        yield
        await rt.stop()

    app = FastAPI(title=f"mnistops endpoint {settings.name!r} ({settings.env})", version="2", lifespan=lifespan,
                  description="Handwritten digit classifier. Scoring routes take a scoring key (primary or "
                              "secondary), admin routes the admin key: `Authorization: Bearer <key>`. "
                              "/health, /ready, /v2/health/*, /metrics and / are open.")
    app.state.runtime = rt
    routers = {module: module.router(rt) for module in (scoring, ops, admin)}
    for r in routers.values():  # scoring first: the router tries routes in order
        app.include_router(r)
    errors.install(app)
    openapi.install(app)
    routes = {(m, r.path): r for r in routers[scoring].routes for m in r.methods}
    hot = {key: (routes[key], handler) for key, handler in scoring.hot_routes(rt).items()}  # with its FastAPI route
    app.add_middleware(Frame, metrics=rt.metrics, max_body=settings.max_body_bytes, timeout=rt.timeout,
                       request_log=rt.request_log, access_log=rt.access_log, hot=hot)
    return app
