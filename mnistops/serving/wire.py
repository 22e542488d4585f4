"""Every wire rule once: request body + headers -> (status, body, headers), whoever hosts the model.

``answer`` is the one function. The local server's routes (``scoring.py``) and Azure's scoring script
(``backends/azure/score.py``, its ``run()``) are thin shells around it, as MLflow's scoring server
keeps one ``invocations`` under its flask and ASGI shells. What no host may answer differently lives
here: the request id, the request formats, feedback, and every client error as (4xx,
``protocol.error_body``). The pixel rule, the decoders and the answer shapes stay in ``protocol.py``
(the registered pyfunc loads a copy of it without mnistops).

A format is one row of ``FORMATS`` (name -> parse, render); a new format is a row, not a new route body:

    score        {"data": images}                                   POST /score
    invocations  MLflow scoring protocol + Azure's {"input_data"}   POST /invocations
    azure        score or invocations, or a feedback body           Azure's one route (score.py)
    v2           Open Inference Protocol v2 (its "id" is the id)    POST /v2/models/{name}/infer
    upload       PNG/JPEG bytes of one digit                        POST /predict
    feedback     {"request_id", "label"} -> 202                     POST /feedback

The host gives what differs between hosts: ``score(images, request_id) -> (Scored, (model, version,
deployment))`` (awaited: the local micro-batcher; Azure: a plain call), ``feedback(scored_request_id,
label, request_id)`` where ground truth goes, and ``offload(fn, arg)`` to run a heavy parser
(pictures) off the event loop. ``answer`` is a coroutine; a host whose callbacks never wait
(Azure's ``run()``) finishes it with ``finish``, without an event loop.

Request id: the client's ``x-request-id`` when it is sane (1..128 of letters, digits, ``. _ : -``),
else a fresh one; it is the answer's ``request_id`` and every error's (Open Inference answers take
the body's ``id`` when it has one).
"""

from __future__ import annotations

import re
import uuid
from typing import Any, Awaitable, Callable, Dict, Mapping, NamedTuple, Optional, Tuple

from mnistops.serving import protocol
from mnistops.serving.protocol import InputError, ProtocolError

REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID_HEADER_B = REQUEST_ID_HEADER.encode()
_RID = r"[A-Za-z0-9._:\-]{1,128}"
_RID_STR, _RID_BYTES = re.compile(_RID), re.compile(_RID.encode())
FEEDBACK = "feedback"
FEEDBACK_KEYS = frozenset(("request_id", "label"))

Meta = Tuple[str, str, str]  # who answered: model name, version, deployment
Score = Callable[[Any, str], Awaitable[Tuple[protocol.Scored, Meta]]]
Keep = Callable[[str, int, str], None]
Offload = Callable[[Callable, Any], Awaitable[Any]]


class Reply(NamedTuple):
    status: int
    body: dict  # probability rows stay numpy (orjson writes them; ``protocol.to_jsonable`` otherwise)
    headers: Optional[Dict[str, str]] = None


# --------------------------------------------------------------------------- request id

def request_id_of(sent: Any) -> str:
    """The request's id from the header's value (str or bytes, or None): kept when sane, else a fresh one."""
    if sent.__class__ is bytes:
        if _RID_BYTES.fullmatch(sent):
            return sent.decode()
    elif isinstance(sent, str) and _RID_STR.fullmatch(sent):
        return sent
    return uuid.uuid4().hex


def header(headers: Optional[Mapping], name: str) -> Any:
    """A header's value from a mapping keyed by lower-case str or bytes (ASGI) or by the client's spelling."""
    if not headers:
        return None
    value = headers.get(name)
    if value is None:
        value = headers.get(name.encode())
    if value is None:
        for key, v in headers.items():
            if isinstance(key, str) and key.lower() == name:
                return v
    return value


def request_id(headers: Optional[Mapping]) -> str:
    return request_id_of(header(headers, REQUEST_ID_HEADER))


# --------------------------------------------------------------------------- feedback

def is_feedback(payload: Any) -> bool:
    """A body of exactly {"request_id", "label"}: ground truth, on a route that also scores (Azure's)."""
    return isinstance(payload, dict) and len(payload) == 2 and payload.keys() == FEEDBACK_KEYS


def read_feedback(payload: Any) -> Tuple[str, int]:
    """{"request_id": the scored request's id (1..128 characters), "label": its true digit 0..9}."""
    if not isinstance(payload, dict):
        raise InputError("the body must be a JSON object {\"request_id\", \"label\"}", "body")
    rid, label = payload.get("request_id"), payload.get("label")
    if not isinstance(rid, str) or not 1 <= len(rid) <= 128:
        raise InputError("'request_id' must be a string of 1..128 characters", "request_id")
    if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label <= 9:
        raise InputError("'label' must be an integer digit 0..9", "label")
    return rid, label


# --------------------------------------------------------------------------- the formats

class Format(NamedTuple):
    parse: Callable[[Any], Tuple[Any, Optional[str]]]  # payload -> (images, the body's own request id or None)
    render: Callable[[protocol.Scored, Meta, str], dict]  # answers, who answered, request id -> body
    json: bool = True  # the body is JSON (parsed first); else raw bytes
    offload: bool = False  # parsing is heavy: the host's ``offload`` runs it
    feedback: bool = False  # a feedback body is taken here too (a host with one route)


def _score_answer(scored: protocol.Scored, meta: Meta, rid: str) -> dict:
    return protocol.score_answer(scored, meta[0], meta[1], meta[2], rid)


def _v2_answer(scored: protocol.Scored, meta: Meta, rid: str) -> dict:
    return protocol.v2_answer(scored, meta[0], meta[1], rid)


def _v2(payload: Any) -> Tuple[Any, Optional[str]]:
    images, body_id, _ = protocol.decode_v2(payload)
    return images, body_id


def _upload(data: bytes) -> Tuple[Any, None]:
    from mnistops.serving.images import decode_upload  # PIL: only where pictures are taken

    return decode_upload(data), None


FORMATS: Dict[str, Format] = {
    "score": Format(lambda p: (protocol.decode_score(p), None), _score_answer),
    "invocations": Format(lambda p: (protocol.decode_invocations(p), None), _score_answer),
    "azure": Format(lambda p: (protocol.decode_any(p), None), _score_answer, feedback=True),
    "v2": Format(_v2, _v2_answer),
    "upload": Format(_upload, _score_answer, json=False, offload=True),
}


# --------------------------------------------------------------------------- the one function

async def answer(fmt: str, body: Any, headers: Optional[Mapping], score: Optional[Score] = None,
                 feedback: Optional[Keep] = None, offload: Optional[Offload] = None,
                 rid: Optional[str] = None) -> Reply:
    """One request of format ``fmt`` (a key of FORMATS, or FEEDBACK) -> its reply; every
    ``ProtocolError`` (the client's, or the host's: 408, 503, ...) becomes (status, error body, headers).
    ``rid``: the request id when the host has applied ``request_id`` already (the local server's
    middleware, which echoes it in the answer's header); else it is read from ``headers`` here."""
    if rid is None:
        rid = request_id(headers)
    try:
        if fmt == FEEDBACK:
            return _accept(protocol.parse_json(body), rid, feedback)
        row = FORMATS[fmt]
        payload = protocol.parse_json(body) if row.json else body
        if row.feedback and is_feedback(payload):
            return _accept(payload, rid, feedback)
        images, body_id = await offload(row.parse, payload) if row.offload and offload else row.parse(payload)
        scored, meta = await score(images, rid)
        return Reply(200, row.render(scored, meta, rid if body_id is None else body_id))
    except ProtocolError as err:
        return Reply(err.status, protocol.error_body(err.message, err.field, rid), err.headers)


def _accept(payload: Any, rid: str, keep: Optional[Keep]) -> Reply:
    scored_rid, label = read_feedback(payload)
    if keep is None:
        raise ProtocolError("this host keeps no feedback", status=503)
    keep(scored_rid, label, rid)
    return Reply(202, {"status": "accepted", "request_id": scored_rid})


def finish(pending: Awaitable[Reply]) -> Reply:
    """Run ``answer`` to its end without an event loop, for hosts whose callbacks never wait (Azure's run())."""
    try:
        pending.send(None)
    except StopIteration as done:
        return done.value
    pending.close()
    raise RuntimeError("answer() waited on something: a host whose score() waits must await answer() on its loop")
