"""The one ASGI middleware, ``Frame``: what every request gets, whatever its route.

A request id (an incoming ``x-request-id`` when it is sane, else a fresh one; echoed in the answer),
the body limit enforced while the body streams in (``max_body_bytes``: 413) and a deadline for a
body that trickles in (``request_timeout_ms``: 408), then one log line, the metrics and (on scoring
routes) a request-log record per request. Pure ASGI: no per-request objects beyond a closure.
The hot scoring routes (``hot``: {(method, path): (route, ASGI handler)}, ``scoring.hot_routes``)
are called from here directly, past FastAPI's router.

The request log (``AccessLog``) writes the same line format as the logging setup of ``master.py``
(``<time> INFO <pid> mnistops.serving <request id> <method> <route> <status> <ms> <deployment>``),
buffered: whole lines, flushed every ``FLUSH_S`` in one ``write`` to the O_APPEND log file that every
worker shares (lines of two workers never interleave); a killed worker loses at most that much log.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from typing import Dict, List, Optional, Tuple

from mnistops.serving.request_log import RequestLogWriter
from mnistops.serving.errors import error_response
from mnistops.serving.prometheus import Metrics
from mnistops.serving.protocol import InputError, ProtocolError
from mnistops.serving.wire import request_id_of

log = logging.getLogger("mnistops.serving")

_timeout_at = getattr(asyncio, "timeout_at", None)  # Python >= 3.11
COLLECTED_ROUTES = frozenset(("/score", "/invocations", "/v2/models/{name}/infer", "/predict"))


class BodyTooLarge(InputError):
    status = 413


class BodyTimeout(ProtocolError):
    status = 408


class AccessLog:
    """One line per request, cheaply: formatted here, written in batches (see the module doc)."""

    FLUSH_S = 0.1
    LIMIT = 64 * 1024

    def __init__(self, fd: Optional[int] = None):
        self.fd = sys.stdout.fileno() if fd is None else fd
        self.pid = os.getpid()
        self._lines: List[str] = []
        self._size = 0
        self._second = -1
        self._stamp = ""
        self._task: Optional[asyncio.Task] = None
        self.enabled = log.isEnabledFor(logging.INFO)

    def line(self, rid: str, method: str, route: str, status: int, ms: float, deployment: str) -> None:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second, self._stamp = second, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        text = (f"{self._stamp},{int((now - second) * 1000):03d} INFO {self.pid} mnistops.serving {rid} {method} "
                f"{route} {status} {ms:.2f}ms {deployment or '-'}\n")
        self._lines.append(text)
        self._size += len(text)
        if self._size > self.LIMIT:
            self.flush()

    def flush(self) -> None:
        if not self._lines:
            return
        data = "".join(self._lines).encode("utf-8", "replace")
        self._lines, self._size = [], 0
        try:
            os.write(self.fd, data)
        except OSError:  # a full disk must not fail requests
            pass

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.FLUSH_S)
            self.flush()

    def start(self) -> None:
        self.pid = os.getpid()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.flush()


class Frame:
    def __init__(self, app, metrics: Metrics, max_body: int, timeout: float, request_log: Optional[RequestLogWriter] = None,
                 access_log: Optional[AccessLog] = None, hot: Optional[Dict[Tuple[str, str], tuple]] = None):
        self.app = app
        self.hot = hot or {}
        self.metrics = metrics
        self.request_log = request_log
        self.max_body = max_body
        self.timeout = timeout
        self.access_log = access_log

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        t_wall = time.time()
        h = dict(scope["headers"])
        scope["mnistops.h"] = h
        rid = request_id_of(h.get(b"x-request-id"))  # the one rule (wire.py), as Azure's score.py applies it
        rid_b = h[b"x-request-id"] = rid.encode()  # what every later reader of the headers sees
        scope["mnistops.rid"] = rid
        deadline = scope["mnistops.deadline"] = asyncio.get_running_loop().time() + self.timeout
        limit = self.max_body
        declared = h.get(b"content-length")
        too_big = declared is not None and declared.isdigit() and int(declared) > limit
        seen = [0, 500, False]  # bytes received, status sent, answer started

        async def counted_receive():
            if too_big:
                raise BodyTooLarge(f"body of {int(declared)} bytes is over the limit of {limit} bytes", "body",
                                   headers={"Connection": "close"})
            if _timeout_at is None:  # Python 3.10: no deadline on the body
                message = await receive()
            else:
                try:  # a body that trickles in (slowloris) ends at the request deadline
                    async with _timeout_at(deadline):
                        message = await receive()
                except TimeoutError:
                    raise BodyTimeout("the request body did not arrive within request_timeout_ms", "body",
                                      headers={"Connection": "close"}) from None
            if message["type"] == "http.request":
                seen[0] += len(message.get("body", b""))
                if seen[0] > limit:
                    raise BodyTooLarge(f"body is over the limit of {limit} bytes", "body",
                                       headers={"Connection": "close"})
            return message

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                seen[1] = message["status"]
                seen[2] = True
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", rid_b)]
            await send(message)

        hot = self.hot.get((scope["method"], scope["path"]))
        try:
            if hot is None:
                await self.app(scope, counted_receive, send_with_id)
            else:
                scope["route"] = hot[0]
                await hot[1](scope, counted_receive, send_with_id)
        except ProtocolError as exc:  # raised while the body streamed in, outside the routes' handlers
            if not seen[2]:
                await error_response(rid, exc.status, exc.message, exc.field, exc.headers)(scope, receive,
                                                                                          send_with_id)
            else:
                raise
        finally:
            elapsed = time.perf_counter() - t0
            route = scope.get("route")
            template = getattr(route, "path", None) or "other"
            deployment = scope.get("mnistops.deployment", "")
            status = seen[1]
            self.metrics.observe_request(template, status, deployment, elapsed)
            if self.request_log is not None and template in COLLECTED_ROUTES:
                self.request_log.record(t_wall, rid, template, status, elapsed, deployment, scope.get("mnistops.collect"))
            access = self.access_log
            if access is not None and access.enabled:
                access.line(rid, scope["method"],
                            template if template != "other" else scope["path"][:200].encode("unicode_escape").decode(),
                            status, elapsed * 1000, deployment)
