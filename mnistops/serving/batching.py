"""Adaptive micro-batching: one queue per deployment (in each worker process).

Requests put their images in the queue and await a future. A worker task takes what is queued (up to
``max_batch`` images) and runs the model. It waits for more only while more keep coming: after the
first item it yields to the event loop once; if that brought new requests it keeps collecting (one
yield at a time) until ``max_batch`` images or ``max_wait_ms``; if not, it runs at once. Low load:
no added latency. High load: requests pile up while the previous batch runs, so batches grow by
themselves. The queue is bounded (``max_queue`` images, queued or in inference): a full queue
refuses at once (``QueueFull`` -> 503) instead of letting latency grow.

Where a batch runs: a model that answers a batch in under ``INLINE_MAX_MS`` (a moving average of the
CPU time it took, sampled every ``CPU_SAMPLE_EVERY`` batches; not the wall time, which on a busy
machine jumps to tens of ms whenever the scheduler preempts the worker and flipped fast models onto
the thread) runs right on the event loop, as a minimal server would: with one worker per core there is
no idle core for a second thread, and handing each batch to one costs CPU (wake-ups, GIL hand-offs)
that the requests pay for. A slower model runs in the deployment's own thread, so the loop keeps
answering probes and deadlines (408) hold while it computes. A batcher starts on the thread, until
it has measured its model.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Deque, List, Optional, Tuple

import numpy as np

log = logging.getLogger("mnistops.serving")

INLINE_MAX_MS = 20.0
CPU_SAMPLE_EVERY = 8  # batches between two measurements of the model's CPU time


class QueueFull(Exception):
    """No room for these images in the deployment's queue."""


class BatcherClosed(Exception):
    """The deployment was replaced or removed while the request waited."""


class MicroBatcher:
    def __init__(self, name: str, predict: Callable[[np.ndarray], np.ndarray], *, max_batch: int,
                 max_wait_ms: float, max_queue: int, metrics=None,
                 on_result: Optional[Callable[[bool, Optional[BaseException]], None]] = None):
        self.name = name
        self.predict = predict
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.depth = 0  # images queued or in inference
        self._queue: Deque[Tuple[np.ndarray, asyncio.Future]] = deque()
        self._wake: Optional[asyncio.Event] = None
        self._task: Optional[asyncio.Task] = None
        self._closed = False
        self._idle: Optional[asyncio.Event] = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{name}")
        self._on_result = on_result
        self._batch_seconds: Optional[float] = None  # moving average of one batch's inference CPU time
        self._cpu_seconds: Optional[float] = None  # the last timed batch's CPU time (one intra-op thread: the caller's)
        self._batches = 0
        # future -> the model time of the batch that answered it (the collector's model_ms: what canary
        # analysis compares, free of the event loop's queueing); weak: an unread entry goes with its future
        self.model_seconds: "weakref.WeakKeyDictionary[asyncio.Future, float]" = weakref.WeakKeyDictionary()
        if metrics is not None:
            self._m_batch = metrics.batch_size.labels(name)
            self._m_infer = metrics.inference.labels(name)
            self._m_depth = metrics.queue_depth.labels(name)
        else:
            self._m_batch = self._m_infer = self._m_depth = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task = loop.create_task(self._run(), name=f"batcher-{self.name}")

    async def close(self, drain_timeout: float = 10.0) -> None:
        """Stop taking requests, let queued ones finish (up to ``drain_timeout``), free the thread."""
        self._closed = True
        if self._task is not None and self.depth:
            try:
                await asyncio.wait_for(self._drained(), drain_timeout)
            except asyncio.TimeoutError:
                log.warning("deployment %s: %d images still queued at close", self.name, self.depth)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        while self._queue:
            _, fut = self._queue.popleft()
            if not fut.done():
                fut.set_exception(BatcherClosed(f"deployment {self.name} was replaced"))
        self._executor.shutdown(wait=False)

    async def _drained(self) -> None:
        while self.depth:
            await asyncio.sleep(0.005)

    # ------------------------------------------------------------------ requests
    def submit(self, batch: np.ndarray) -> asyncio.Future:
        """Queue ``batch`` (N, 1, 28, 28); the future resolves to probabilities (N, 10)."""
        n = len(batch)
        if self._closed:
            raise BatcherClosed(f"deployment {self.name} is shutting down")
        if self.depth + n > self.max_queue:
            raise QueueFull(f"deployment {self.name}: queue full ({self.depth} images waiting, limit {self.max_queue})")
        fut = asyncio.get_running_loop().create_future()
        self._queue.append((batch, fut))
        self.depth += n
        if self._m_depth is not None:
            self._m_depth.set(self.depth)
        self._wake.set()
        return fut

    def _take(self, items: List[Tuple[np.ndarray, asyncio.Future]], n: int) -> int:
        q = self._queue
        while q:
            batch, fut = q[0]
            size = len(batch)
            if fut.done():  # timed out or cancelled while queued: drop it, free its room
                q.popleft()
                self._release(size)
                continue
            if n and n + size > self.max_batch:
                break
            q.popleft()
            items.append((batch, fut))
            n += size
            if n >= self.max_batch:
                break
        return n

    def _release(self, n: int) -> None:
        self.depth -= n
        if self._m_depth is not None:
            self._m_depth.set(self.depth)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        wake = self._wake
        while True:
            if not self._queue:
                wake.clear()
                await wake.wait()
            items: List[Tuple[np.ndarray, asyncio.Future]] = []
            n = self._take(items, 0)
            if not items:
                continue
            if n < self.max_batch and self.max_wait > 0:
                deadline = loop.time() + self.max_wait
                while True:
                    await asyncio.sleep(0)  # let requests already in flight in this loop join
                    before = n
                    n = self._take(items, n)
                    if n == before or n >= self.max_batch or loop.time() >= deadline:
                        break
            await self._infer(loop, items, n)

    def _timed(self, x: np.ndarray):  # runs in the deployment's thread, or on the loop
        self._batches += 1
        if self._batches % CPU_SAMPLE_EVERY != 1:  # the CPU clock is a system call (~4 us): every few batches
            t0 = time.perf_counter()
            probs = self.predict(x)
            return probs, time.perf_counter() - t0
        t0, c0 = time.perf_counter(), time.thread_time()
        probs = self.predict(x)
        self._cpu_seconds = time.thread_time() - c0
        return probs, time.perf_counter() - t0

    @property
    def inline(self) -> bool:
        """Run batches on the event loop (a fast model, measured), or on the deployment's thread."""
        return self._batch_seconds is not None and self._batch_seconds * 1000.0 < INLINE_MAX_MS

    async def _infer(self, loop, items, n: int) -> None:
        x = items[0][0] if len(items) == 1 else np.concatenate([b for b, _ in items])
        error = None
        try:
            if self.inline:
                probs, seconds = self._timed(x)
            else:
                probs, seconds = await loop.run_in_executor(self._executor, self._timed, x)
        except asyncio.CancelledError:
            self._release(n)
            for _, fut in items:
                if not fut.done():
                    fut.set_exception(BatcherClosed(f"deployment {self.name} stopped"))
            raise
        except Exception as exc:  # a broken model: every waiting request learns it
            probs, error, seconds = None, exc, 0.0
            log.error("deployment %s: inference failed on a batch of %d: %r", self.name, n, exc)
        if error is None and self._cpu_seconds is not None:
            avg, cpu, self._cpu_seconds = self._batch_seconds, self._cpu_seconds, None
            self._batch_seconds = cpu if avg is None else 0.8 * avg + 0.2 * cpu
        if self._m_batch is not None:
            self._m_batch.observe(n)
            self._m_infer.observe(seconds)
        self._release(n)
        if self._on_result is not None:
            self._on_result(error is None, error)
        start = 0
        for batch, fut in items:
            size = len(batch)
            if not fut.done():
                if error is None:
                    self.model_seconds[fut] = seconds
                    fut.set_result(probs[start:start + size])
                else:
                    fut.set_exception(InferenceFailed(f"deployment {self.name}: inference failed: {error}"))
            start += size


class InferenceFailed(Exception):
    """The model raised on a valid batch: a server-side fault."""
