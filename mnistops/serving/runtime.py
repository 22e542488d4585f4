"""What the routes of one worker share: settings, keys, the live state, the cluster, metrics, the
request log; and the steps every scoring request takes (key, pinned deployment, traffic pick,
inference through the micro-batcher with its deadline, mirror copies, the answer)."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
from fastapi import Request

from mnistops.serving import protocol
from mnistops.serving.batching import BatcherClosed, InferenceFailed, QueueFull
from mnistops.serving.cluster import Cluster
from mnistops.serving.request_log import MIRROR_ROUTE, RequestLogWriter, FeedbackLog, request_log_dir_of
from mnistops.serving.deployments import Deployment
from mnistops.serving.errors import NotFound, ServerFault, Timeout, Unauthorized, Unavailable
from mnistops.serving.live_state import LiveState
from mnistops.serving.middleware import AccessLog
from mnistops.serving.prometheus import Metrics
from mnistops.serving.protocol import InputError
from mnistops.serving.settings import SCORING_KEYS, KeyRing, ServerSettings

JSON_TYPES = (b"application/json", b"text/json")
PINNED = b"azureml-model-deployment"


class Runtime:
    def __init__(self, endpoint_dir: Path, settings: ServerSettings):
        self.dir = Path(endpoint_dir)
        self.settings = settings
        self.scoring_keys = KeyRing(self.dir, SCORING_KEYS, required=settings.auth)
        self.admin_keys = KeyRing(self.dir, ("admin",))
        self.metrics = Metrics()
        self._counted: dict = {}  # deployment -> its images and per-digit prediction counters
        self.live = LiveState(self.dir, settings, self.metrics)
        self.cluster = Cluster(self.dir, self.live, self.admin_keys)
        self.timeout = settings.request_timeout_ms / 1000.0
        self.log_dir = request_log_dir_of(self.dir)
        self.feedback_log = FeedbackLog(self.log_dir)
        c = settings.collect
        self.request_log = RequestLogWriter(self.log_dir, sampling_rate=c.sampling_rate, rotate_mb=c.rotate_mb,
                                   rotate_minutes=c.rotate_minutes, flush_ms=c.flush_ms, max_pending=c.max_pending,
                                   metrics=self.metrics) if c.enabled else None
        self.access_log = AccessLog()
        # uploads decode off the event loop, two at a time at most (bounded memory for big pictures)
        self.image_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="images")

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        self.access_log.start()
        if self.request_log is not None:
            self.request_log.start()
        await self.live.startup()
        await self.cluster.join()

    async def stop(self) -> None:
        await self.cluster.leave()
        await self.live.shutdown()
        self.image_pool.shutdown(wait=False)
        if self.request_log is not None:  # after the drain: the last answered requests are recorded too
            self.request_log.close()
        await self.access_log.stop()

    # ---------------------------------------------------------------- request steps
    def check_scoring_key(self, scope) -> None:
        if self.settings.auth and not self.scoring_keys.allows(scope["mnistops.h"].get(b"authorization")):
            raise Unauthorized()

    def check_admin_key(self, scope) -> None:
        if not self.admin_keys.allows(scope["mnistops.h"].get(b"authorization")):
            raise Unauthorized("missing or wrong admin key: admin routes take the endpoint's admin key "
                               "(admin.key), not a scoring key")

    @staticmethod
    def check_json(scope) -> None:
        ctype = scope["mnistops.h"].get(b"content-type")
        if ctype is None:
            return  # lenient: a body without a type is read as JSON
        base = ctype.split(b";", 1)[0].strip().lower()
        if base not in JSON_TYPES and not base.endswith(b"+json"):
            raise InputError(f"Content-Type must be application/json, got {ctype.decode('latin-1')[:100]!r}",
                             "Content-Type", 415)

    async def json_body(self, request: Request) -> Any:
        self.check_json(request.scope)
        return protocol.parse_json(await request.body())

    def pinned(self, scope) -> Optional[str]:
        raw = scope["mnistops.h"].get(PINNED)
        if raw is None:
            return None
        name = raw.decode("latin-1").strip()
        if name not in self.live.slots:
            raise NotFound(f"no deployment named {name[:64]!r} (header azureml-model-deployment)",
                           "azureml-model-deployment")
        return name

    def pick(self, scope, pinned: Optional[str]) -> Deployment:
        live = self.live
        name = pinned if pinned is not None else live.router.pick()
        if name is None:
            raise Unavailable("no deployment has traffic on this endpoint", retry=False)
        slot = live.slots.get(name)
        if slot is None:
            raise (NotFound if pinned else Unavailable)(f"no deployment named {name!r}")
        if not slot.loaded:
            raise Unavailable(f"deployment {name} is not loaded: {slot.error}")
        scope["mnistops.deployment"] = name
        return slot

    async def infer(self, scope, slot: Deployment, batch: np.ndarray) -> protocol.Scored:
        """The batch's answers (calibrated probabilities, ood_score, ood) from the slot's micro-batcher."""
        s = self.settings
        if len(batch) > s.max_queue:
            raise InputError(f"{len(batch)} images in one request; at most {s.max_queue}", "data", 413)
        loop = asyncio.get_running_loop()
        remaining = scope["mnistops.deadline"] - loop.time()
        if remaining <= 0:
            raise Timeout(f"request took longer than {s.request_timeout_ms:g} ms before inference")
        try:
            fut = slot.batcher.submit(batch)
        except QueueFull as exc:
            self.metrics.rejected.labels(slot.name, "queue_full").inc()
            raise Unavailable(f"over capacity: {exc}") from None
        except BatcherClosed as exc:
            raise Unavailable(str(exc)) from None
        handle = loop.call_later(remaining, _expire, fut)
        started = loop.time()
        try:
            scored = await fut
        except _Expired:
            self.metrics.rejected.labels(slot.name, "timeout").inc()
            raise Timeout(f"not answered within request_timeout_ms={s.request_timeout_ms:g}") from None
        except BatcherClosed as exc:
            raise Unavailable(str(exc)) from None
        except InferenceFailed as exc:
            raise ServerFault(str(exc)) from None
        finally:
            handle.cancel()
        # the model's time on this request's batch (queueing on the loop left out: canary analysis
        # compares it between deployments); the queue + inference time when the batcher has none
        seconds = slot.batcher.model_seconds.get(fut, loop.time() - started)
        self.mirror(scope["mnistops.rid"], slot.name, batch)
        scope["mnistops.collect"] = (batch, scored.probabilities, slot.info, seconds, scored)
        return scored

    def mirror(self, rid: str, primary: str, batch: np.ndarray) -> None:
        """Copies of the request to the mirror deployments; their answers go to the request log (route
        ``mirror``, the same request id) for canary analysis, never to the client."""
        live = self.live
        for name in live.router.mirrors(primary):
            slot = live.slots.get(name)
            if slot is None or not slot.loaded:
                self.metrics.mirror.labels(name, "not_loaded").inc()
                self._record_mirror(rid, name, 503, 0.0, None)
                continue
            try:
                fut = slot.batcher.submit(batch)
            except (QueueFull, BatcherClosed):
                self.metrics.mirror.labels(name, "rejected").inc()
                self._record_mirror(rid, name, 503, 0.0, None, slot.info)
                continue
            fut.add_done_callback(self._mirror_done(rid, slot, batch, asyncio.get_running_loop().time()))

    def _mirror_done(self, rid: str, slot: Deployment, batch: np.ndarray, started: float) -> Callable:
        name = slot.name

        def done(fut: asyncio.Future) -> None:
            ok = not fut.cancelled() and fut.exception() is None
            self.metrics.mirror.labels(name, "ok" if ok else "error").inc()
            seconds = slot.batcher.model_seconds.get(fut, asyncio.get_running_loop().time() - started)
            if ok:
                scored = fut.result()
                self.metrics.images.labels(name, "mirror").inc(len(scored))
                self._record_mirror(rid, name, 200, seconds, (batch, scored.probabilities, slot.info, seconds, scored))
            else:  # (a deployment replaced while copies queued: they fail under its name, with its version)
                self._record_mirror(rid, name, 500, seconds, None, slot.info)
        return done

    def _record_mirror(self, rid: str, name: str, status: int, seconds: float, payload: Optional[tuple],
                       info: Optional[dict] = None) -> None:
        if self.request_log is not None:
            version = str(info.get("version", "")) if info and payload is None else ""
            self.request_log.record(time.time(), rid, MIRROR_ROUTE, status, seconds, name, payload, version)

    def count(self, slot: Deployment, scored: protocol.Scored) -> None:
        children = self._counted.get(slot.name)
        if children is None:  # a deployment's labelled counters, looked up once (labels() costs per call)
            name = slot.name
            children = self._counted[name] = (self.metrics.images.labels(name, "live"),
                                              [self.metrics.predictions.labels(name, str(d)) for d in range(10)])
        images, digits = children
        images.inc(len(scored))
        for d in scored.digits.tolist():
            digits[d].inc()

    def feedback(self, rid: str, label: int, feedback_id: str) -> None:
        now = time.time()
        self.feedback_log.append({"request_id": rid, "label": label, "t": round(now, 4),
                                  "received_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(now)),
                                  "feedback_id": feedback_id})


class _Expired(Exception):
    pass


def _expire(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_exception(_Expired())
