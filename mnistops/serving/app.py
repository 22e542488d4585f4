"""The endpoint app: ``create_app(endpoint_dir) -> FastAPI``.

Hot path kept lean: handlers take the raw ``Request``, parse with orjson, validate by hand
(``inputs.py``) and answer ``Response`` objects built with orjson; pydantic models (``schemas.py``)
only document the API. One pure-ASGI middleware (``Frame``) gives every request an id (honouring
an incoming ``x-request-id``), enforces the body limit while the body streams in, and records one
log line and the metrics per request.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.routing import Match, Route

from mnistops.serving import images, inputs, schemas as S
from mnistops.serving.auth import KeyAuth
from mnistops.serving.batching import BatcherClosed, InferenceFailed, QueueFull
from mnistops.serving.collector import Collector, FeedbackLog, monitor_dir_of
from mnistops.serving.deployments import Deployment, LoadError
from mnistops.serving.endpoint import Conflict, Endpoint, Invalid, NotFound
from mnistops.serving.inputs import InputError
from mnistops.serving.metrics import Metrics
from mnistops.serving.page import PAGE
from mnistops.serving.settings import ServerConfig, load_config, load_key

log = logging.getLogger("mnistops.serving")

RID_RE = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")
JSON_TYPES = (b"application/json", b"text/json")
IMAGE_TYPES = (b"image/png", b"image/jpeg", b"image/jpg", b"image/gif", b"image/bmp", b"image/webp", b"image/tiff")
DUMPS_OPTS = orjson.OPT_SERIALIZE_NUMPY
PINNED = b"azureml-model-deployment"
COLLECTED_ROUTES = frozenset(("/score", "/invocations", "/v2/models/{name}/infer", "/predict"))


class ApiError(Exception):
    def __init__(self, status: int, message: str, field: Optional[str] = None, headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.field, self.headers = status, message, field, headers


class BodyTooLarge(Exception):
    pass


class RequestTimeout(Exception):
    pass


_timeout_at = getattr(asyncio, "timeout_at", None)  # Python >= 3.11


def jresp(obj: Any, status: int = 200, headers: Optional[dict] = None) -> Response:
    return Response(orjson.dumps(obj, option=DUMPS_OPTS), status_code=status, headers=headers,
                    media_type="application/json")


def error_response(scope, status: int, message: str, field: Optional[str] = None,
                   headers: Optional[dict] = None) -> Response:
    body = {"error": message, "request_id": scope.get("mnistops.rid")}
    if field:
        body["field"] = field
    return jresp(body, status, headers)


KNOWN_ERRORS = (ApiError, InputError, BodyTooLarge, RequestTimeout, Invalid, LoadError, Conflict, NotFound)


def known_error(scope, exc: Exception) -> Response:
    """The JSON answer for an error a client (or an admin) caused."""
    if isinstance(exc, ApiError):
        return error_response(scope, exc.status, exc.message, exc.field, exc.headers)
    if isinstance(exc, InputError):
        return error_response(scope, exc.status, exc.message, exc.field)
    if isinstance(exc, BodyTooLarge):
        return error_response(scope, 413, str(exc), "body", {"Connection": "close"})
    if isinstance(exc, RequestTimeout):
        return error_response(scope, 408, str(exc) or "request timeout", "body", {"Connection": "close"})
    if isinstance(exc, LoadError):
        return error_response(scope, 422, str(exc), "path")
    status = {Invalid: 422, Conflict: 409, NotFound: 404}[type(exc)]
    return error_response(scope, status, str(exc))


# --------------------------------------------------------------------------- middleware

class Frame:
    """Request id, streamed body limit, one log line + metrics (+ a collector record) per request."""

    def __init__(self, app, metrics: Metrics, max_body: int, timeout: float, direct: Optional[dict] = None,
                 collector: Optional[Collector] = None):
        self.app = app
        self.metrics = metrics
        self.collector = collector
        self.max_body = max_body
        self.timeout = timeout
        # (method, path) -> handler: the hottest static routes skip the router and exception layers
        self.direct = direct or {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        t_wall = time.time()
        h = dict(scope["headers"])
        scope["mnistops.h"] = h
        rid_b = h.get(b"x-request-id")
        if rid_b is None or not RID_RE.match(rid_b):
            rid_b = uuid.uuid4().hex.encode()
        rid = rid_b.decode()
        scope["mnistops.rid"] = rid
        deadline = scope["mnistops.deadline"] = asyncio.get_running_loop().time() + self.timeout
        limit = self.max_body
        declared = h.get(b"content-length")
        too_big = declared is not None and declared.isdigit() and int(declared) > limit
        seen = [0, 500]  # bytes received, status sent

        async def counted_receive():
            if too_big:
                raise BodyTooLarge(f"body of {int(declared)} bytes is over the limit of {limit} bytes")
            if _timeout_at is None:
                message = await receive()
            else:
                try:  # a body that trickles in (slowloris) ends at the request deadline
                    async with _timeout_at(deadline):
                        message = await receive()
                except TimeoutError:
                    raise RequestTimeout("the request body did not arrive within request_timeout_ms") from None
            if message["type"] == "http.request":
                seen[0] += len(message.get("body", b""))
                if seen[0] > limit:
                    raise BodyTooLarge(f"body is over the limit of {limit} bytes")
            return message

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                seen[1] = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", rid_b)]
            await send(message)

        handler = self.direct.get((scope["method"], scope["path"]))
        try:
            if handler is None:
                await self.app(scope, counted_receive, send_with_id)
            else:
                scope["mnistops.route"] = scope["path"]
                try:
                    response = await handler(Request(scope, counted_receive))
                except KNOWN_ERRORS as exc:
                    response = known_error(scope, exc)
                await response(scope, counted_receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - t0
            route = scope.get("route")
            template = scope.get("mnistops.route") or getattr(route, "path", None) or "other"
            deployment = scope.get("mnistops.deployment", "")
            status = seen[1]
            self.metrics.observe_request(template, status, deployment, elapsed)
            if self.collector is not None and template in COLLECTED_ROUTES:
                self.collector.record(t_wall, rid, template, status, elapsed, deployment, scope.get("mnistops.collect"))
            log.info("%s %s %s %d %.2fms %s", rid, scope["method"],
                     template if template != "other" else scope["path"][:200].encode("unicode_escape").decode(),
                     status, elapsed * 1000, deployment or "-")


# --------------------------------------------------------------------------- docs helpers

ERRORS = {400: "malformed JSON or multipart body", 401: "missing or wrong API key", 404: "unknown model or deployment",
          408: "not answered within request_timeout_ms", 409: "conflicts with the current state",
          413: "body over max_body_bytes", 415: "wrong content type",
          422: "well-formed but invalid input (the error names the field)", 503: "queue full or no deployment ready"}
SCORING_ERRORS = (400, 401, 404, 408, 413, 415, 422, 503)


PIN_HEADER = {"name": "azureml-model-deployment", "in": "header", "required": False, "schema": {"type": "string"},
              "description": "pin the deployment that answers (blue, green, ...), bypassing the traffic split; "
                             "an unknown name gets a 404"}
READY_QUERY = {"name": "deployment", "in": "query", "required": False, "schema": {"type": "string"},
               "description": "check this deployment only (an unknown name gets a 404)"}


def doc(ok=None, ok_status: int = 200, body=None, errors=(), secured: bool = False,
        content: str = "application/json", summary: Optional[str] = None, parameters=()) -> dict:
    """The OpenAPI description of a route (its handler parses the raw request, so FastAPI can't infer it)."""
    responses: Dict[int, dict] = {}
    if ok is not None:
        responses[ok_status] = {"model": ok, "description": "OK"}
    for code in errors:
        responses[code] = {"model": S.Error, "description": ERRORS[code]}
    extra: Dict[str, Any] = {}
    if body is not None:
        schema = {"$ref": f"#/components/schemas/{body.__name__}"}
        extra["requestBody"] = {"required": True, "content": {content: {"schema": schema}}}
    if secured:
        extra["security"] = [{"bearerAuth": []}]
    if parameters:
        extra["parameters"] = list(parameters)
    out = {"responses": responses, "openapi_extra": extra, "status_code": ok_status}
    if summary:
        out["summary"] = summary
    return out


# --------------------------------------------------------------------------- the app

class Server:
    """Route handlers around one Endpoint."""

    def __init__(self, endpoint_dir: Path, cfg: ServerConfig, key: Optional[str]):
        self.dir = endpoint_dir
        self.cfg = cfg
        self.auth = KeyAuth(key, cfg.auth)
        self.admin_auth = KeyAuth(key, True)
        self.metrics = Metrics()
        self.endpoint = Endpoint(endpoint_dir, cfg, self.metrics)
        self.timeout = cfg.request_timeout_ms / 1000.0
        self.monitor_dir = monitor_dir_of(endpoint_dir)
        self.feedback_log = FeedbackLog(self.monitor_dir)
        self.collector = Collector(self.monitor_dir, sampling_rate=cfg.collect_sampling_rate,
                                   rotate_mb=cfg.collect_rotate_mb, rotate_minutes=cfg.collect_rotate_minutes,
                                   flush_ms=cfg.collect_flush_ms, max_pending=cfg.collect_max_pending,
                                   metrics=self.metrics) if cfg.collect else None
        # uploads decode off the event loop, two at a time at most (bounded memory for big pictures)
        self.image_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="images")

    # ---------------------------------------------------------------- shared steps
    def check_key(self, scope, admin: bool = False) -> None:
        auth = self.admin_auth if admin else self.auth
        if not auth.allows(scope["mnistops.h"].get(b"authorization")):
            raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'", "Authorization",
                           {"WWW-Authenticate": "Bearer"})

    @staticmethod
    def check_json(scope) -> None:
        ctype = scope["mnistops.h"].get(b"content-type")
        if ctype is None:
            return  # lenient: a body without a type is read as JSON
        base = ctype.split(b";", 1)[0].strip().lower()
        if base not in JSON_TYPES and not base.endswith(b"+json"):
            raise ApiError(415, f"Content-Type must be application/json, got {ctype.decode('latin-1')[:100]!r}",
                           "Content-Type")

    def pinned(self, scope) -> Optional[str]:
        raw = scope["mnistops.h"].get(PINNED)
        if raw is None:
            return None
        name = raw.decode("latin-1").strip()
        if name not in self.endpoint.slots:
            raise ApiError(404, f"no deployment named {name[:64]!r} (header azureml-model-deployment)",
                           "azureml-model-deployment")
        return name

    def pick(self, scope, pinned: Optional[str]) -> Deployment:
        ep = self.endpoint
        name = pinned if pinned is not None else ep.router.pick()
        if name is None:
            raise ApiError(503, "no deployment has traffic on this endpoint")
        slot = ep.slots.get(name)
        if slot is None:
            raise ApiError(404 if pinned else 503, f"no deployment named {name!r}")
        if not slot.loaded:
            raise ApiError(503, f"deployment {name} is not loaded: {slot.error}")
        scope["mnistops.deployment"] = name
        return slot

    async def json_body(self, request: Request) -> Any:
        self.check_json(request.scope)
        return inputs.parse_json(await request.body())

    async def infer(self, scope, slot: Deployment, batch: np.ndarray) -> np.ndarray:
        if len(batch) > self.cfg.max_queue:
            raise ApiError(413, f"{len(batch)} images in one request; at most {self.cfg.max_queue}", "data")
        loop = asyncio.get_running_loop()
        remaining = scope["mnistops.deadline"] - loop.time()
        if remaining <= 0:
            raise ApiError(408, f"request took longer than {self.cfg.request_timeout_ms:g} ms before inference")
        try:
            fut = slot.batcher.submit(batch)
        except QueueFull as exc:
            self.metrics.rejected.labels(slot.name, "queue_full").inc()
            raise ApiError(503, f"over capacity: {exc}", headers={"Retry-After": "1"}) from None
        except BatcherClosed as exc:
            raise ApiError(503, str(exc), headers={"Retry-After": "1"}) from None
        handle = loop.call_later(remaining, _expire, fut)
        try:
            probs = await fut
        except RequestTimeout:
            self.metrics.rejected.labels(slot.name, "timeout").inc()
            raise ApiError(408, f"not answered within request_timeout_ms={self.cfg.request_timeout_ms:g}") from None
        except BatcherClosed as exc:
            raise ApiError(503, str(exc), headers={"Retry-After": "1"}) from None
        except InferenceFailed as exc:
            raise ApiError(500, str(exc)) from None
        finally:
            handle.cancel()
        self.mirror(slot.name, batch)
        scope["mnistops.collect"] = (batch, probs, slot.info)
        return probs

    def mirror(self, primary: str, batch: np.ndarray) -> None:
        ep = self.endpoint
        for name in ep.router.mirrors(primary):
            slot = ep.slots.get(name)
            if slot is None or not slot.loaded:
                self.metrics.mirror.labels(name, "not_loaded").inc()
                continue
            try:
                fut = slot.batcher.submit(batch)
            except (QueueFull, BatcherClosed):
                self.metrics.mirror.labels(name, "rejected").inc()
                continue
            fut.add_done_callback(self._mirror_done(name))

    def _mirror_done(self, name: str) -> Callable:
        def done(fut: asyncio.Future) -> None:
            ok = not fut.cancelled() and fut.exception() is None
            self.metrics.mirror.labels(name, "ok" if ok else "error").inc()
            if ok:
                self.metrics.images.labels(name, "mirror").inc(len(fut.result()))
        return done

    def answer(self, scope, slot: Deployment, probs: np.ndarray) -> dict:
        digits = probs.argmax(axis=1)
        name = slot.name
        self.metrics.images.labels(name, "live").inc(len(digits))
        counter = self.metrics.predictions
        preds = []
        for d, p in zip(digits.tolist(), probs):
            counter.labels(name, str(d)).inc()
            preds.append({"digit": d, "probabilities": p})
        info = slot.info
        return {"predictions": preds, "model": info["model_name"], "version": info["version"], "deployment": name,
                "request_id": scope["mnistops.rid"]}

    async def scored(self, request: Request, parse: Callable[[Any], np.ndarray]) -> Response:
        scope = request.scope
        self.check_key(scope)
        pinned = self.pinned(scope)
        batch = parse(await self.json_body(request))
        slot = self.pick(scope, pinned)
        probs = await self.infer(scope, slot, batch)
        return jresp(self.answer(scope, slot, probs))

    # ---------------------------------------------------------------- scoring routes
    async def score(self, request: Request) -> Response:
        return await self.scored(request, inputs.score_batch)

    async def invocations(self, request: Request) -> Response:
        return await self.scored(request, inputs.invocations_batch)

    async def predict(self, request: Request) -> Response:
        scope = request.scope
        self.check_key(scope)
        pinned = self.pinned(scope)
        ctype = scope["mnistops.h"].get(b"content-type", b"")
        base = ctype.split(b";", 1)[0].strip().lower()
        if base == b"multipart/form-data":
            form = await request.form(max_files=1, max_fields=8)
            try:
                upload = form.get("file")
                if upload is None or isinstance(upload, str):
                    raise ApiError(422, "multipart field 'file' (the image file) is missing", "file")
                data = await upload.read()
            finally:
                await form.close()
        elif base in IMAGE_TYPES:
            data = await request.body()
        else:
            raise ApiError(415, "send the image as multipart/form-data (field 'file') or as an image/png or "
                                f"image/jpeg body, not {ctype.decode('latin-1')[:100]!r}", "Content-Type")
        img = await asyncio.get_running_loop().run_in_executor(self.image_pool, images.normalise, data)
        batch = inputs.to_batch(img[None], "file")
        slot = self.pick(scope, pinned)
        probs = await self.infer(scope, slot, batch)
        return jresp(self.answer(scope, slot, probs))

    def model_slots(self, name: str):
        ep = self.endpoint
        slots = [s for s in ep.slots.values() if s.info.get("model_name") == name]
        if not slots and name != self.cfg.name:
            raise ApiError(404, f"no model named {name[:64]!r} on this endpoint", "name")
        return slots or list(ep.slots.values())

    async def v2_infer(self, request: Request, name: str) -> Response:
        scope = request.scope
        self.check_key(scope)
        self.model_slots(name)
        pinned = self.pinned(scope)
        batch, req_id, _ = inputs.v2_batch(await self.json_body(request))
        slot = self.pick(scope, pinned)
        probs = await self.infer(scope, slot, batch)
        digits = probs.argmax(axis=1).astype(np.int64)
        self.metrics.images.labels(slot.name, "live").inc(len(digits))
        for d in digits.tolist():
            self.metrics.predictions.labels(slot.name, str(d)).inc()
        n = len(digits)
        return jresp({"model_name": slot.info["model_name"], "model_version": slot.info["version"],
                      "id": req_id if req_id is not None else scope["mnistops.rid"],
                      "outputs": [{"name": "probabilities", "shape": [n, 10], "datatype": "FP32",
                                   "data": probs.ravel()},
                                  {"name": "digit", "shape": [n], "datatype": "INT64", "data": digits}]})

    async def v2_live(self, request: Request) -> Response:
        self.check_key(request.scope)
        return jresp({"live": True})

    async def v2_ready(self, request: Request) -> Response:
        self.check_key(request.scope)
        ready, _ = await self.endpoint.readiness()
        return jresp({"ready": ready}, 200 if ready else 503)

    async def v2_model(self, request: Request, name: str) -> Response:
        self.check_key(request.scope)
        slots = self.model_slots(name)
        versions = sorted({s.info.get("version", "") for s in slots}, key=lambda v: (len(v), v))
        return jresp({"name": name, "versions": versions, "platform": "onnxruntime_onnx",
                      "inputs": [{"name": "images", "datatype": "FP32", "shape": [-1, 28, 28]}],
                      "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
                                  {"name": "digit", "datatype": "INT64", "shape": [-1]}]})

    async def v2_model_ready(self, request: Request, name: str) -> Response:
        self.check_key(request.scope)
        self.model_slots(name)
        ready, _ = await self.endpoint.readiness()
        return jresp({"name": name, "ready": ready}, 200 if ready else 503)

    # ---------------------------------------------------------------- open routes
    async def health(self, request: Request) -> Response:
        return jresp({"status": "ok"})

    async def ready(self, request: Request) -> Response:
        only = request.query_params.get("deployment")
        try:
            ready, reasons = await self.endpoint.readiness(only)
        except NotFound as exc:
            raise ApiError(404, str(exc), "deployment") from None
        return jresp({"ready": ready, "reasons": reasons}, 200 if ready else 503)

    async def metrics_route(self, request: Request) -> Response:
        ep = self.endpoint
        self.metrics.set_topology(ep.traffic, ep.mirror, {n: int(d.loaded and d.healthy) for n, d in ep.slots.items()})
        return Response(self.metrics.render(), media_type=self.metrics.content_type)

    async def page(self, request: Request) -> Response:
        return HTMLResponse(PAGE, headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY",
                                           "Content-Security-Policy": "default-src 'self'; style-src 'unsafe-inline'; "
                                                                      "script-src 'unsafe-inline'; img-src 'self' data: blob:"})

    async def feedback(self, request: Request) -> Response:
        scope = request.scope
        self.check_key(scope)
        body = await self.json_body(request)
        if not isinstance(body, dict):
            raise InputError("the body must be a JSON object {\"request_id\", \"label\"}", "body")
        rid, label = body.get("request_id"), body.get("label")
        if not isinstance(rid, str) or not 1 <= len(rid) <= 128:
            raise InputError("'request_id' must be a string of 1..128 characters", "request_id")
        if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label <= 9:
            raise InputError("'label' must be an integer digit 0..9", "label")
        now = time.time()
        record = {"request_id": rid, "label": label, "t": round(now, 4),
                  "received_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(now)),
                  "feedback_id": scope["mnistops.rid"]}
        self.feedback_log.append(record)
        return jresp({"status": "accepted", "request_id": rid}, 202)

    # ---------------------------------------------------------------- admin routes
    async def admin_state(self, request: Request) -> Response:
        self.check_key(request.scope, admin=True)
        return jresp(self.endpoint.status())

    async def admin_deploy(self, request: Request, deployment: str) -> Response:
        self.check_key(request.scope, admin=True)
        body = await self.json_body(request)
        return jresp(await self.endpoint.deploy(deployment, body))

    async def admin_delete(self, request: Request, deployment: str) -> Response:
        self.check_key(request.scope, admin=True)
        await self.endpoint.delete(deployment)
        return jresp(self.endpoint.status())

    async def admin_traffic(self, request: Request) -> Response:
        self.check_key(request.scope, admin=True)
        body = await self.json_body(request)
        if not isinstance(body, dict) or "traffic" not in body:
            raise Invalid("the body must be {\"traffic\": {deployment: percent}, \"mirror_traffic\"?: {...}}")
        return jresp(await self.endpoint.set_traffic(body["traffic"], body.get("mirror_traffic")))

    async def admin_rollback(self, request: Request) -> Response:
        self.check_key(request.scope, admin=True)
        return jresp(await self.endpoint.rollback())


def _expire(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_exception(RequestTimeout())


def create_app(endpoint_dir, freeze_gc: bool = False) -> FastAPI:
    """The app for one endpoint dir (server.json, key, state.json); models load at startup.

    ``freeze_gc`` (the server process sets it): once started, move every object alive into the
    GC's permanent generation, so full collections stay short (p99 latency) in a long-lived server.
    """
    endpoint_dir = Path(endpoint_dir).resolve()
    cfg = load_config(endpoint_dir)
    server = Server(endpoint_dir, cfg, load_key(endpoint_dir, cfg.auth))

    @asynccontextmanager
    async def lifespan(app):
        if server.collector is not None:
            server.collector.start()
        await server.endpoint.startup()
        if freeze_gc:
            gc.collect()
            gc.freeze()
        yield
        await server.endpoint.shutdown()
        server.image_pool.shutdown(wait=False)
        if server.collector is not None:  # after the drain: the last answered requests are recorded too
            server.collector.close()

    app = FastAPI(title=f"mnistops endpoint {cfg.name!r} ({cfg.env})", version="1", lifespan=lifespan,
                  description="Handwritten digit classifier. Scoring and admin routes need "
                              "`Authorization: Bearer <key>`; /health, /ready and /metrics are open.")
    app.state.server = server
    add = app.add_api_route
    s = server
    # hot routes first: the router tries them in order
    add("/score", s.score, methods=["POST"], tags=["scoring"],
        **doc(S.PredictionResponse, body=S.ScoreRequest, errors=SCORING_ERRORS, secured=True,
              summary="Score images (Azure ML score.py style)", parameters=[PIN_HEADER]))
    add("/invocations", s.invocations, methods=["POST"], tags=["scoring"],
        **doc(S.PredictionResponse, body=S.InvocationsRequest, errors=SCORING_ERRORS, secured=True,
              summary="Score images (MLflow scoring protocol, Azure ML input_data)", parameters=[PIN_HEADER]))
    add("/v2/models/{name}/infer", s.v2_infer, methods=["POST"], tags=["open inference protocol"],
        **doc(S.V2InferResponse, body=S.V2InferRequest, errors=SCORING_ERRORS, secured=True,
              summary="Open Inference Protocol inference", parameters=[PIN_HEADER]))
    add("/predict", s.predict, methods=["POST"], tags=["scoring"],
        **doc(S.PredictionResponse, body=S.PredictUpload, errors=SCORING_ERRORS, secured=True,
              content="multipart/form-data", summary="Score one uploaded picture of a digit (PNG/JPEG)",
              parameters=[PIN_HEADER]))
    add("/feedback", s.feedback, methods=["POST"], tags=["scoring"],
        **doc(S.FeedbackAccepted, 202, body=S.FeedbackRequest, errors=(400, 401, 413, 415, 422), secured=True,
              summary="Ground truth for a scored request id"))
    add("/health", s.health, methods=["GET"], tags=["ops"], **doc(S.Health, summary="Liveness"))
    add("/ready", s.ready, methods=["GET"], tags=["ops"],
        **doc(S.Ready, errors=(404, 503), summary="Readiness: every deployment with traffic answers "
                                                  "(?deployment=NAME checks one)", parameters=[READY_QUERY]))
    add("/metrics", s.metrics_route, methods=["GET"], tags=["ops"], summary="Prometheus metrics",
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
    add("/v2/health/live", s.v2_live, methods=["GET"], tags=["open inference protocol"],
        **doc(S.V2Live, errors=(401,), secured=True))
    add("/v2/health/ready", s.v2_ready, methods=["GET"], tags=["open inference protocol"],
        **doc(S.V2Ready, errors=(401, 503), secured=True))
    add("/v2/models/{name}", s.v2_model, methods=["GET"], tags=["open inference protocol"],
        **doc(S.V2ModelMetadata, errors=(401, 404), secured=True))
    add("/v2/models/{name}/ready", s.v2_model_ready, methods=["GET"], tags=["open inference protocol"],
        **doc(S.V2ModelReady, errors=(401, 404, 503), secured=True))
    add("/", s.page, methods=["GET"], tags=["page"], response_class=HTMLResponse, summary="Draw a digit",
        responses={200: {"content": {"text/html": {}}, "description": "the page"}})
    add("/admin/state", s.admin_state, methods=["GET"], tags=["admin"], **doc(S.AdminState, errors=(401,),
                                                                               secured=True))
    add("/admin/deployments/{deployment}", s.admin_deploy, methods=["POST"], tags=["admin"],
        **doc(S.DeploymentStatus, body=S.LoadRequest, errors=(400, 401, 413, 415, 422), secured=True,
              summary="Load a model into a deployment slot (warmed up before it replaces the old one)"))
    add("/admin/deployments/{deployment}", s.admin_delete, methods=["DELETE"], tags=["admin"],
        **doc(S.AdminState, errors=(401, 404, 409), secured=True, summary="Remove a deployment without traffic"))
    add("/admin/traffic", s.admin_traffic, methods=["PUT"], tags=["admin"],
        **doc(S.AdminState, body=S.TrafficRequest, errors=(400, 401, 413, 415, 422), secured=True,
              summary="Set the traffic split and mirror traffic"))
    add("/admin/rollback", s.admin_rollback, methods=["POST"], tags=["admin"],
        **doc(S.AdminState, errors=(401, 409, 422), secured=True, summary="Restore the previous state"))

    _install_fast_routes(app)
    _install_errors(app, server)
    _install_openapi(app)
    app.add_middleware(Frame, metrics=server.metrics, max_body=cfg.max_body_bytes, timeout=server.timeout,
                       direct={("POST", "/score"): server.score, ("POST", "/invocations"): server.invocations},
                       collector=server.collector)
    return app


def _install_fast_routes(app: FastAPI) -> None:
    """Serve every route through a plain Starlette ``Route`` placed in front of its FastAPI twin.

    The handlers take the raw request and validate by hand, so FastAPI's per-request machinery
    (dependency solving, telemetry hooks) would only cost time; the ``APIRoute`` twins stay in the
    route list, unreachable, so that ``/openapi.json`` and ``/docs`` describe them.
    """
    fast = []
    for route in app.router.routes:
        if isinstance(route, APIRoute):
            endpoint = route.endpoint
            if route.param_convertors:
                endpoint = _with_path_params(endpoint)
            fast.append(FastRoute(route.path, endpoint, methods=sorted(route.methods), include_in_schema=False,
                              name=f"fast:{route.name}"))
    app.router.routes[:0] = fast


class FastRoute(Route):
    def matches(self, scope):
        match, child = super().matches(scope)
        if match != Match.NONE:
            child["route"] = self  # the template labels the metrics and the log line
        return match, child


def _with_path_params(handler: Callable) -> Callable:
    async def endpoint(request: Request) -> Response:
        return await handler(request, **request.path_params)

    endpoint.__name__ = getattr(handler, "__name__", "endpoint")
    return endpoint


def _install_errors(app: FastAPI, server: Server) -> None:
    async def handle_known(request: Request, exc: Exception):
        return known_error(request.scope, exc)

    for exc_type in KNOWN_ERRORS:
        app.add_exception_handler(exc_type, handle_known)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        message = {404: f"no route {request.url.path[:200]!r}",
                   405: f"method {request.method} not allowed on {request.url.path[:200]!r}"}.get(
            exc.status_code, str(exc.detail))
        return error_response(request.scope, exc.status_code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        field = ".".join(str(p) for p in first.get("loc", ()))
        return error_response(request.scope, 422, f"{field}: {first.get('msg', 'invalid')}", field)

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception):
        log.exception("internal error on %s %s (request %s)", request.method, request.url.path,
                      request.scope.get("mnistops.rid"))
        return error_response(request.scope, 500, f"internal error ({type(exc).__name__}); see the server log")


def _install_openapi(app: FastAPI) -> None:
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
            "bearerAuth": {"type": "http", "scheme": "bearer", "description": "the endpoint's API key"}}
        app.openapi_schema = spec
        return spec

    app.openapi = openapi
