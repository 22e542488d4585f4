"""Every non-200 answer of the server: the error kinds (each knows its status) and the handlers
that turn them, and FastAPI's own errors, into the one JSON error shape (``protocol.error_body``)."""

from __future__ import annotations

import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from mnistops.serving.protocol import ProtocolError, error_body

log = logging.getLogger("mnistops.serving")


class Unauthorized(ProtocolError):
    status = 401

    def __init__(self, message: str = "missing or wrong API key: send 'Authorization: Bearer <key>'"):
        super().__init__(message, "Authorization", headers={"WWW-Authenticate": "Bearer"})


class NotFound(ProtocolError):
    """No such deployment or model (404)."""

    status = 404


class Conflict(ProtocolError):
    """The change contradicts the current state (409)."""

    status = 409


class Invalid(ProtocolError):
    """The change is malformed or impossible (422)."""

    status = 422


class Timeout(ProtocolError):
    status = 408


class Unavailable(ProtocolError):
    """Over capacity, shutting down, or nothing ready to answer (503, retry later)."""

    status = 503

    def __init__(self, message: str, field=None, retry: bool = True):
        super().__init__(message, field, headers={"Retry-After": "1"} if retry else None)


class ServerFault(ProtocolError):
    """The model failed on valid input (500): the server's fault, not the client's."""

    status = 500


def json_response(obj, status: int = 200, headers=None) -> Response:
    return Response(orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status, headers=headers,
                    media_type="application/json")


_JSON_TYPE = (b"content-type", b"application/json")


async def send_json(send, obj, status: int = 200, headers=None) -> None:
    """What ``json_response(obj, status, headers)`` sends, straight to the ASGI ``send`` (the hot path
    of ``scoring.hot_routes``: no Response object)."""
    body = orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()] if headers else []
    raw.append((b"content-length", str(len(body)).encode()))
    raw.append(_JSON_TYPE)
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def error_response(request_id, status: int, message: str, field=None, headers=None) -> Response:
    return json_response(error_body(message, field, request_id), status, headers)


def internal_error(scope, exc: BaseException) -> dict:
    """A bug met while answering: logged with its traceback; the 500 answer's body names only its type."""
    log.error("internal error on %s %s (request %s)", scope.get("method"), scope.get("path"), scope.get("mnistops.rid"),
              exc_info=exc)
    return error_body(f"internal error ({type(exc).__name__}); see the server log", None, scope.get("mnistops.rid"))


def install(app: FastAPI) -> None:
    """The exception handlers: every error a client can cause is a 4xx with a message, never a 500."""

    @app.exception_handler(ProtocolError)
    async def protocol_error(request: Request, exc: ProtocolError):
        return error_response(request.scope.get("mnistops.rid"), exc.status, exc.message, exc.field, exc.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        path = request.url.path[:200]
        message = {404: f"no route {path!r}", 405: f"method {request.method} not allowed on {path!r}"}.get(
            exc.status_code, str(exc.detail))
        return error_response(request.scope.get("mnistops.rid"), exc.status_code, message,
                              headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        field = ".".join(str(p) for p in first.get("loc", ()))
        return error_response(request.scope.get("mnistops.rid"), 422, f"{field}: {first.get('msg', 'invalid')}",
                              field)

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception):
        return json_response(internal_error(request.scope, exc), 500)
