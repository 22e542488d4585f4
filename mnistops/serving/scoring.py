"""The scoring routes: /score, /invocations, /v2/models/{name}/infer (+ the model's metadata and
readiness), /predict and /feedback. Thin shells around ``wire.answer`` (the rules Azure's score.py
follows too): each checks the key and the pinned deployment, reads the body and hands it over with
how this server scores (traffic pick, micro-batcher, metrics).

The two busiest, ``POST /score`` and ``POST /invocations``, are also plain ASGI handlers
(``hot_routes``): the middleware (``Frame``) calls them before FastAPI's router, so a scoring request
skips the framework's route matching, dependency solving, Request and Response objects and exception
middleware (~80 us of CPU a request, an eighth of the request's whole cost with a 0.4 ms model).
Same steps, same answers and errors; the FastAPI routes stay for the OpenAPI description and for
what the hot path leaves to them (other methods: 405; other paths)."""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Dict, List, Optional, Tuple

from fastapi import APIRouter, Request
from fastapi.responses import Response

from mnistops.serving import schemas as S, wire
from mnistops.serving.errors import NotFound, internal_error, json_response, send_json
from mnistops.serving.openapi import PIN_HEADER, SCORING_ERRORS, doc
from mnistops.serving.protocol import IMAGE_TYPES, InputError, ProtocolError, error_body
from mnistops.serving.runtime import Runtime

SECURED = "scoringKey"
UPLOAD_TYPES = tuple(t.encode() for t in IMAGE_TYPES)
HOT_FORMATS = {"/score": "score", "/invocations": "invocations"}  # POST path -> wire format


def checked(rt: Runtime, scope) -> Optional[str]:
    """The checks before the body is read: scoring key (401), pinned deployment (404; returned),
    content type (415)."""
    rt.check_scoring_key(scope)
    pinned = rt.pinned(scope)
    rt.check_json(scope)
    return pinned


async def answer(rt: Runtime, scope, fmt: str, body: bytes, pinned: Optional[str],
                 offload: Optional[Callable] = None) -> wire.Reply:
    """``wire.answer`` with how this server scores: traffic pick, micro-batcher, counters."""
    async def score(images, _rid: str):
        slot = rt.pick(scope, pinned)
        scored = await rt.infer(scope, slot, images)
        rt.count(slot, scored)
        info = slot.info
        return scored, (info["model_name"], info["version"], slot.name)

    return await wire.answer(fmt, body, scope["mnistops.h"], score, offload=offload, rid=scope["mnistops.rid"])


async def read_body(receive) -> Optional[bytes]:
    """The whole request body from ASGI ``receive`` (None when the client left first)."""
    chunks: List[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def hot_routes(rt: Runtime) -> Dict[Tuple[str, str], Callable]:
    """{(method, path): ASGI handler} of the scoring routes the middleware serves itself (see the
    module doc); errors answer as the app's exception handlers would (``errors.install``)."""
    def handler(fmt: str) -> Callable:
        async def handle(scope, receive, send) -> None:
            try:
                pinned = checked(rt, scope)
                body = await read_body(receive)
                if body is None:
                    return
                status, obj, headers = await answer(rt, scope, fmt, body, pinned)
            except ProtocolError as exc:
                status, obj, headers = exc.status, error_body(exc.message, exc.field, scope["mnistops.rid"]), exc.headers
            except Exception as exc:  # noqa: BLE001 - a bug: logged, answered 500 (never a plain-text one)
                status, obj, headers = 500, internal_error(scope, exc), None
            await send_json(send, obj, status, headers)
        return handle

    return {("POST", path): handler(fmt) for path, fmt in HOT_FORMATS.items()}


def router(rt: Runtime) -> APIRouter:
    r = APIRouter()

    async def offload(fn: Callable, arg: Any) -> Any:  # pictures decode off the event loop
        return await asyncio.get_running_loop().run_in_executor(rt.image_pool, fn, arg)

    async def reply(scope, fmt: str, body: bytes, pinned: Optional[str]) -> Response:
        status, body, headers = await answer(rt, scope, fmt, body, pinned, offload)
        return json_response(body, status, headers)

    async def scored(request: Request, fmt: str) -> Response:
        scope = request.scope
        pinned = checked(rt, scope)
        return await reply(scope, fmt, await request.body(), pinned)

    @r.post("/score", tags=["scoring"], **doc(S.PredictionResponse, body=S.ScoreRequest, errors=SCORING_ERRORS,
                                               secured=SECURED, summary="Score images (Azure ML score.py style)",
                                               parameters=[PIN_HEADER]))
    async def score(request: Request) -> Response:
        return await scored(request, "score")

    @r.post("/invocations", tags=["scoring"],
            **doc(S.PredictionResponse, body=S.InvocationsRequest, errors=SCORING_ERRORS, secured=SECURED,
                  summary="Score images (MLflow scoring protocol, Azure ML input_data)", parameters=[PIN_HEADER]))
    async def invocations(request: Request) -> Response:
        return await scored(request, "invocations")

    def model_slots(name: str) -> List:
        slots = [s for s in rt.live.slots.values() if s.info.get("model_name") == name]
        if not slots and name != rt.settings.name:
            raise NotFound(f"no model named {name[:64]!r} on this endpoint", "name")
        return slots or list(rt.live.slots.values())

    @r.post("/v2/models/{name}/infer", tags=["open inference protocol"],
            **doc(S.V2InferResponse, body=S.V2InferRequest, errors=SCORING_ERRORS, secured=SECURED,
                  summary="Open Inference Protocol inference", parameters=[PIN_HEADER]))
    async def v2_infer(request: Request, name: str) -> Response:
        scope = request.scope
        rt.check_scoring_key(scope)
        model_slots(name)
        pinned = rt.pinned(scope)
        rt.check_json(scope)
        return await reply(scope, "v2", await request.body(), pinned)

    @r.get("/v2/models/{name}", tags=["open inference protocol"],
           **doc(S.V2ModelMetadata, errors=(401, 404), secured=SECURED))
    async def v2_model(request: Request, name: str) -> Response:
        rt.check_scoring_key(request.scope)
        versions = sorted({s.info.get("version", "") for s in model_slots(name)}, key=lambda v: (len(v), v))
        return json_response({"name": name, "versions": versions, "platform": "onnxruntime_onnx",
                              "inputs": [{"name": "images", "datatype": "FP32", "shape": [-1, 28, 28]}],
                              "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
                                          {"name": "digit", "datatype": "INT64", "shape": [-1]},
                                          {"name": "ood_score", "datatype": "FP32", "shape": [-1]},
                                          {"name": "ood", "datatype": "BOOL", "shape": [-1]}]})

    @r.get("/v2/models/{name}/ready", tags=["open inference protocol"],
           **doc(S.V2ModelReady, errors=(401, 404, 503), secured=SECURED))
    async def v2_model_ready(request: Request, name: str) -> Response:
        rt.check_scoring_key(request.scope)
        model_slots(name)
        ready, _ = await rt.live.readiness()
        return json_response({"name": name, "ready": ready}, 200 if ready else 503)

    @r.post("/predict", tags=["scoring"],
            **doc(S.PredictionResponse, body=S.PredictUpload, errors=SCORING_ERRORS, secured=SECURED,
                  content="multipart/form-data", summary="Score one uploaded picture of a digit (PNG/JPEG)",
                  parameters=[PIN_HEADER]))
    async def predict(request: Request) -> Response:
        scope = request.scope
        rt.check_scoring_key(scope)
        pinned = rt.pinned(scope)
        ctype = scope["mnistops.h"].get(b"content-type", b"")
        base = ctype.split(b";", 1)[0].strip().lower()
        if base == b"multipart/form-data":
            form = await request.form(max_files=1, max_fields=8)
            try:
                upload = form.get("file")
                if upload is None or isinstance(upload, str):
                    raise InputError("multipart field 'file' (the image file) is missing", "file")
                data = await upload.read()
            finally:
                await form.close()
        elif base in UPLOAD_TYPES:
            data = await request.body()
        else:
            raise InputError("send the image as multipart/form-data (field 'file') or as an image/png or "
                             f"image/jpeg body, not {ctype.decode('latin-1')[:100]!r}", "Content-Type", 415)
        return await reply(scope, "upload", data, pinned)

    @r.post("/feedback", tags=["scoring"],
            **doc(S.FeedbackAccepted, 202, body=S.FeedbackRequest, errors=(400, 401, 413, 415, 422), secured=SECURED,
                  summary="Ground truth for a scored request id"))
    async def feedback(request: Request) -> Response:
        scope = request.scope
        rt.check_scoring_key(scope)
        rt.check_json(scope)
        status, body, headers = await wire.answer(wire.FEEDBACK, await request.body(), scope["mnistops.h"],
                                                  feedback=rt.feedback, rid=scope["mnistops.rid"])
        return json_response(body, status, headers)

    return r
