"""The endpoint's request log (the writing side; monitoring/request_log_reader.py reads it back), its data
collector as Azure ML calls it: what each scoring request got and gave back.

The request handler only appends a tuple to a deque (no copying, no serialising: the hot path stays
lean); a writer thread wakes every ``flush_ms``, serialises what is pending and appends it, one JSON
line per request, to ``<log_dir>/requests/<start>-<pid>-<seq>.jsonl`` (one writer per file: each
worker process of the endpoint writes its own files, and the monitor reads them all). Files are append-only and
rotated by size and age; a closed file is never written again. A clean shutdown writes everything
still pending; a killed server loses at most the last ``flush_ms`` of records (lines reach the OS as
whole writes, and a reader skips a torn last line). Ground truth (``POST /feedback``) is appended to
``<log_dir>/feedback.jsonl`` before the 202 goes out.

One line per request::

    {"t": 1764240000.12, "id": "<request id>", "route": "/score", "status": 200, "latency_ms": 1.8,
     "deployment": "blue", "model": "mnist-classifier", "version": "3", "n": 1,
     "inputs": "<base64 of n x 28 x 28 uint8>", "digits": [7], "probabilities": [[...10 floats]]}

``ood_scores``/``ood`` (one per image, see ``protocol.read_outputs``) ride with them.
``inputs``/``digits``/``probabilities`` appear on sampled, answered requests only; the system fields
(status, latency, deployment) on every request, so error rates and latency percentiles are exact.
Answered requests also carry ``model_ms``: the model's time on the batch that answered them (the
same measure on every deployment, free of the event loop's queueing: what canary analysis compares).

A mirrored copy's answer is a line of its own with ``"route": "mirror"``, the primary request's id,
the mirror deployment, and ``latency_ms`` = ``model_ms`` (the copy never crosses HTTP): canary
analysis joins the two by id. The monitor's reader leaves mirror lines out.
"""

from __future__ import annotations

import base64
import logging
import os
import random
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Deque, Optional, Tuple

import numpy as np
import orjson

log = logging.getLogger("mnistops.serving")

REQUESTS_DIR = "requests"
MIRROR_ROUTE = "mirror"  # the route of a mirrored copy's record
FEEDBACK_FILE = "feedback.jsonl"
DUMPS_OPTS = orjson.OPT_SERIALIZE_NUMPY
CHUNK = 16  # records serialised per turn of the writer: ~0.1 ms holding the GIL (the event loop waits
# that long at most: a 64-record turn held it ~0.4-0.8 ms, a stall that reached the serving p99)
PACE_S = 0.001  # between two turns: a flush's ~2 ms of work (300 records) no longer comes back to back,
# one request waits on the writer ~0.1 ms at most; still 16 records a ms, ~5x what a worker can serve


def request_log_dir_of(endpoint_dir: Path) -> Path:
    """``<home>/<env>/endpoints/<name>`` -> ``<home>/<env>/monitoring/<name>``: the env's monitoring store."""
    endpoint_dir = Path(endpoint_dir)
    return endpoint_dir.parent.parent / "monitoring" / endpoint_dir.name


def decode_images(text: str, n: int) -> np.ndarray:
    """A record's ``inputs``: base64 of uint8 pixels (MNIST's own precision, 784 bytes an image)."""
    return np.frombuffer(base64.b64decode(text), dtype=np.uint8).reshape(n, 28, 28)


# (time, request id, route, status, latency s, deployment,
#  (batch, probs, info[, inference s[, protocol.Scored]]) or None)
Pending = Tuple[float, str, str, int, float, str, Optional[tuple], str]  # ..., payload, version


class RequestLogWriter:
    def __init__(self, log_dir: Path, *, sampling_rate: float = 1.0, rotate_mb: float = 64.0,
                 rotate_minutes: float = 60.0, flush_ms: float = 200.0, max_pending: int = 50000, metrics=None):
        self.dir = Path(log_dir) / REQUESTS_DIR
        self.sampling_rate = sampling_rate
        self.rotate_bytes = int(rotate_mb * 1024 * 1024)
        self.rotate_seconds = rotate_minutes * 60.0
        self.flush_s = flush_ms / 1000.0
        self.max_pending = max_pending
        self._pending: Deque[Pending] = deque()
        self._wake = threading.Event()
        self._stop = False
        self._thread: Optional[threading.Thread] = None
        self._file = None
        self._file_opened = 0.0
        self._seq = 0
        self._random = random.random
        self._scratch = np.empty((CHUNK, 784), np.float32)  # the writer's pixel buffer (see _lines)
        if metrics is not None:
            self._m_written = metrics.collected.labels("written")
            self._m_dropped = metrics.collected.labels("dropped")
            self._m_failed = metrics.collected.labels("write_failed")
        else:
            self._m_written = self._m_dropped = self._m_failed = None

    # ------------------------------------------------------------------ hot path
    def record(self, t: float, rid: str, route: str, status: int, seconds: float, deployment: str,
               payload: Optional[tuple], version: str = "") -> None:
        """Queue one request's record; never blocks, never raises. `version`: the model version of the
        deployment that failed a request (an answer's payload names its own), so that a failure is
        told apart from a later version's in the same deployment slot."""
        if payload is not None and self.sampling_rate < 1.0 and self._random() >= self.sampling_rate:
            payload = None
        if len(self._pending) >= self.max_pending:
            if self._m_dropped is not None:
                self._m_dropped.inc()
            return
        self._pending.append((t, rid, route, status, seconds, deployment, payload, version))

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="collector", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Write everything pending, then close the current file (a clean shutdown loses nothing)."""
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._flush()
        self._close_file()

    # ------------------------------------------------------------------ writer thread
    def _run(self) -> None:
        while not self._stop:
            self._wake.wait(self.flush_s)
            try:
                self._flush(PACE_S)
            except Exception:  # a full disk must not kill the writer: count, log, try again later
                log.exception("collector: writing %s failed", self.dir)

    def _flush(self, pace: float = 0.0) -> None:
        """Write what is pending, ``CHUNK`` records at a time, ``pace`` seconds apart (the writer
        thread's turns spread out instead of taking the GIL back to back: see PACE_S)."""
        pending = self._pending
        if not pending:
            return
        while pending:
            items = [pending.popleft() for _ in range(min(CHUNK, len(pending)))]
            data = self._lines(items)
            try:
                f = self._current_file(len(data))
                f.write(data)
                f.flush()
            except OSError:
                if self._m_failed is not None:
                    self._m_failed.inc(len(items))
                raise
            if self._m_written is not None:
                self._m_written.inc(len(items))
            time.sleep(0 if self._stop else pace)  # hand the GIL back to the event loop: serving latency first

    def _lines(self, items: list) -> bytes:
        """JSON lines for ``items``. The numpy work runs once over all of them (a few large calls
        instead of many small ones that hold the GIL against the event loop), in place in a scratch
        buffer kept between calls (fresh arrays of this size are fresh pages: several times slower)."""
        answered = [it[6] for it in items if it[6] is not None and it[3] < 400]
        if answered:
            probs = np.concatenate([p[1] for p in answered])
            n = len(probs)
            if len(self._scratch) < n:
                self._scratch = np.empty((max(n, 2 * len(self._scratch)), 784), np.float32)
            pixels = self._scratch[:n]
            np.concatenate([p[0].reshape(-1, 784) for p in answered], out=pixels)
            np.multiply(pixels, 255.0, out=pixels)
            np.rint(pixels, out=pixels)
            np.clip(pixels, 0, 255, out=pixels)
            pixels = pixels.astype(np.uint8)
            digits = probs.argmax(axis=1)
        out = []
        offset = 0
        for t, rid, route, status, seconds, deployment, payload, version in items:
            rec: dict[str, Any] = {"t": round(t, 4), "id": rid, "route": route, "status": status,
                                   "latency_ms": round(seconds * 1000.0, 3), "deployment": deployment}
            if version:
                rec["version"] = version
            if payload is not None:
                info = payload[2]
                n = len(payload[1])
                rec["model"] = info.get("model_name", "")
                rec["version"] = str(info.get("version", ""))
                rec["n"] = n
                if len(payload) > 3 and payload[3] is not None:
                    rec["model_ms"] = round(payload[3] * 1000.0, 3)
                if status < 400:
                    end = offset + n
                    rec["inputs"] = base64.b64encode(pixels[offset:end].tobytes()).decode("ascii")
                    rec["digits"] = digits[offset:end]
                    rec["probabilities"] = probs[offset:end]
                    if len(payload) > 4:  # the answers' protocol.Scored: the "not a digit" fields
                        rec["ood_scores"] = payload[4].ood_score.tolist()
                        rec["ood"] = payload[4].ood.tolist()
                    offset = end
            out.append(orjson.dumps(rec, option=DUMPS_OPTS))
            out.append(b"\n")
        return b"".join(out)

    def _current_file(self, incoming: int):
        f = self._file
        now = time.time()
        if f is not None and (f.tell() + incoming > self.rotate_bytes or now - self._file_opened > self.rotate_seconds):
            self._close_file()
            f = None
        if f is None:
            self._seq += 1
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
            path = self.dir / f"{stamp}-{os.getpid()}-{self._seq:04d}.jsonl"
            f = self._file = open(path, "ab")
            self._file_opened = now
        return f

    def _close_file(self) -> None:
        if self._file is not None:
            try:
                self._file.flush()
                os.fsync(self._file.fileno())
            finally:
                self._file.close()
                self._file = None


class FeedbackLog:
    """Ground truth, appended (and handed to the OS) before the client hears 202.

    Every worker process appends to the same file: each record is one ``write`` of one line on a
    descriptor opened with O_APPEND, which the kernel never interleaves with another's."""

    def __init__(self, log_dir: Path):
        self.path = Path(log_dir) / FEEDBACK_FILE

    def append(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = orjson.dumps(record) + b"\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
