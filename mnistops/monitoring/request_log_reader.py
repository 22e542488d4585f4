"""The endpoint's request log read back (the monitoring side; serving/request_log.py writes it): what
the endpoint served in a time window, its feedback and labelled exports.

Layout (written by ``mnistops.serving.request_log``)::

    <home>/<env>/monitoring/<endpoint>/requests/*.jsonl   one line per scoring request
    <home>/<env>/monitoring/<endpoint>/feedback.jsonl     ground truth by request id
    <home>/<env>/monitoring/<endpoint>/labelled/*.npz     feedback-labelled images exported for retraining
    <home>/<env>/monitoring/alerts.jsonl                  every alert, one JSON line each
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import orjson
import pandas as pd

from mnistops.errors import MnistopsError
from mnistops.serving.request_log import FEEDBACK_FILE, MIRROR_ROUTE, REQUESTS_DIR, decode_images

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
WINDOW_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


def window_bounds(spec: str, now: Optional[float] = None) -> Tuple[float, float]:
    """``monitor.window`` ("30m", "24h", "7d", "all") -> (start, end) in epoch seconds."""
    now = time.time() if now is None else now
    text = str(spec).strip().lower()
    if text == "all":
        return 0.0, now
    m = WINDOW_RE.match(text)
    if not m or float(m.group(1)) <= 0:
        raise MnistopsError(f"monitor.window={spec!r}: expected a duration such as 30m, 24h, 7d (units s m h d w) "
                            "or 'all'")
    return now - float(m.group(1)) * UNITS[m.group(2)], now


@dataclass
class ReadStats:
    files: int = 0
    lines: int = 0
    torn: int = 0  # lines a killed writer left half-written: skipped


def json_lines(path: Path, stats: ReadStats) -> Iterator[dict]:
    """The records of one append-only JSON-lines file; a torn line (a killed writer's) is counted, skipped."""
    with open(path, "rb") as f:
        for line in f:
            try:
                rec = orjson.loads(line)
            except orjson.JSONDecodeError:
                stats.torn += 1
                continue
            stats.lines += 1
            yield rec


def iter_records(log_dir: Path, start: float, end: float, stats: Optional[ReadStats] = None,
                 id_prefix: Optional[str] = None, mirrored: bool = False) -> Iterator[dict]:
    """Every collected request record with ``start <= t <= end`` (and an id starting with
    ``id_prefix``, when given), oldest file first; mirrored copies' answers only when ``mirrored``
    (canary analysis reads them, the monitor judges what clients got)."""
    stats = stats if stats is not None else ReadStats()
    files = sorted((Path(log_dir) / REQUESTS_DIR).glob("*.jsonl"))
    for path in files:
        if path.stat().st_mtime < start:  # last written before the window opened
            continue
        stats.files += 1
        for rec in json_lines(path, stats):
            if start <= rec.get("t", 0.0) <= end and (id_prefix is None or str(rec.get("id", "")).startswith(id_prefix)) \
                    and (mirrored or rec.get("route") != MIRROR_ROUTE):
                yield rec


def read_feedback(log_dir: Path) -> Dict[str, int]:
    """request id -> label; a later answer for the same request wins."""
    path = Path(log_dir) / FEEDBACK_FILE
    if not path.is_file():
        return {}
    return {rec["request_id"]: int(rec["label"]) for rec in json_lines(path, ReadStats())}


def load_window(log_dir: Path, start: float, end: float, stats: Optional[ReadStats] = None,
                id_prefix: Optional[str] = None):
    """The collected requests of ``[start, end]`` (only those whose id starts with ``id_prefix``, when
    given) as a ``Window``, feedback joined by request id.

    Feedback labels a request's image when the request held one image (a label is one digit).
    """
    from mnistops.monitoring.window import REQUEST_COLUMNS, Window

    requests: List[tuple] = []
    images: List[np.ndarray] = []
    digits: List[np.ndarray] = []
    probs: List[np.ndarray] = []
    ood: List[np.ndarray] = []  # per answered record, while every one carries the flag
    all_ood = True
    meta: List[Tuple[str, str, str, int]] = []  # per image: request id, deployment, version, images in request
    for rec in iter_records(log_dir, start, end, stats, id_prefix):
        n = rec.get("n", 0)
        requests.append((rec["t"], rec["route"], rec["status"], rec["latency_ms"], rec.get("deployment", ""),
                         rec.get("version", ""), n))
        if "inputs" in rec:
            images.append(decode_images(rec["inputs"], n))
            digits.append(np.asarray(rec["digits"], dtype=np.int64))
            probs.append(np.asarray(rec["probabilities"], dtype=np.float32).reshape(n, 10))
            all_ood = all_ood and "ood" in rec
            if all_ood:
                ood.append(np.asarray(rec["ood"], dtype=bool).reshape(n))
            meta.extend([(rec["id"], rec.get("deployment", ""), rec.get("version", ""), n)] * n)
    feedback = read_feedback(log_dir)
    labels = np.array([feedback.get(rid, -1) if n == 1 else -1 for rid, _, _, n in meta], dtype=np.int64)
    frame = pd.DataFrame(requests, columns=list(REQUEST_COLUMNS))
    if start <= 0 and len(frame):  # window "all": it starts with the first record
        start = float(frame["time"].min())
    return Window(
        start=start, end=end,
        images=np.concatenate(images) if images else np.zeros((0, 28, 28), np.uint8),
        digits=np.concatenate(digits) if digits else np.zeros(0, np.int64),
        probabilities=np.concatenate(probs) if probs else np.zeros((0, 10), np.float32),
        request_ids=np.array([m[0] for m in meta], dtype=object),
        deployments=np.array([m[1] for m in meta], dtype=object),
        versions=np.array([m[2] for m in meta], dtype=object),
        labels=labels,
        requests=frame,
        ood=(np.concatenate(ood) if ood else np.zeros(0, bool)) if all_ood and len(ood) == len(images) else None,
    )
