"""Alerts: every breached threshold, written to the env's alert log and sent to the configured sinks.

The alert log (``<home>/<env>/monitoring/alerts.jsonl``) is the record: one JSON line per alert,
appended before any sink is tried. Sinks are best effort with retries and a timeout; a sink that
still fails is reported back (``SinkResult``), never swallowed.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

import orjson


@dataclass
class Alert:
    signal: str  # a family of monitoring.signals.SIGNALS: data_drift, ..., estimated_performance, ood, system
    metric: str
    value: float
    threshold: float
    direction: str  # above: value > threshold breaches; below: value < threshold breaches
    window: Dict[str, Any]  # {"spec", "start", "end", "requests", "images"}
    env: str
    endpoint: str
    deployment: Optional[str] = None
    run_id: Optional[str] = None  # the monitor run that raised it
    time: float = field(default_factory=time.time)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def message(self) -> str:
        where = f" [{self.deployment}]" if self.deployment else ""
        cmp = ">" if self.direction == "above" else "<"
        return (f"{self.signal}/{self.metric}{where} = {self.value:.4g} {cmp} threshold {self.threshold:g} "
                f"({self.env}/{self.endpoint}, window {self.window.get('spec')})")

    def to_dict(self) -> Dict[str, Any]:
        return {**asdict(self), "message": self.message}


def alerts_from(signals: Iterable[Any], *, window: Dict[str, Any], env: str, endpoint: str,
                run_id: Optional[str] = None) -> List[Alert]:
    """One alert per breached signal (signals not computed never alert)."""
    return [Alert(signal=s.name, metric=s.metric, value=float(s.value), threshold=float(s.threshold),
                  direction=s.direction, window=window, env=env, endpoint=endpoint,
                  deployment=getattr(s, "deployment", None), run_id=run_id)
            for s in signals if s.breached and s.value is not None]


def append_log(path: Path, alerts: List[Alert]) -> None:
    """Append the alerts as JSON lines, in one write, handed to the disk before the sinks run."""
    if not alerts:
        return
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    data = b"".join(orjson.dumps(a.to_dict()) + b"\n" for a in alerts)
    with open(path, "ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


@dataclass
class SinkResult:
    sink: str
    ok: bool
    attempts: int
    error: Optional[str] = None


def webhook_payload(alerts: List[Alert]) -> Dict[str, Any]:
    """Slack and Teams incoming webhooks both render ``text``; the structured alerts ride along."""
    first = alerts[0]
    head = f"mnistops: {len(alerts)} monitoring alert(s) on {first.env}/{first.endpoint}"
    lines = "\n".join(f"- {a.message}" for a in alerts[:20])
    more = f"\n- ... and {len(alerts) - 20} more" if len(alerts) > 20 else ""
    return {"text": f"{head}\n{lines}{more}", "summary": head, "alerts": [a.to_dict() for a in alerts]}


def send_webhook(url: str, alerts: List[Alert], *, timeout_s: float, retries: int, backoff_s: float) -> SinkResult:
    """POST the alerts; retry on connection errors, timeouts, 429 and 5xx, with doubling back-off."""
    import httpx

    body = orjson.dumps(webhook_payload(alerts))
    error = None
    attempts = 0
    delay = backoff_s
    for attempt in range(retries + 1):
        attempts = attempt + 1
        try:
            resp = httpx.post(url, content=body, headers={"Content-Type": "application/json"}, timeout=timeout_s)
            if resp.status_code < 300:
                return SinkResult("webhook", True, attempts)
            error = f"HTTP {resp.status_code}: {resp.text[:200]}"
            if resp.status_code < 500 and resp.status_code != 429:
                break  # the sink refused the payload: retrying will not help
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        if attempt < retries:
            time.sleep(delay)
            delay *= 2
    return SinkResult("webhook", False, attempts, f"{_redact(url)}: {error}")


def _redact(url: str) -> str:
    """Incoming-webhook URLs carry their secret in the path: show scheme and host only."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/…" if parts.path not in ("", "/") else url
