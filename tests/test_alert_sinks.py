"""The alert webhook against a real HTTP server on 127.0.0.1: a 429 or a 5xx is retried with a doubling
back-off until the sink takes the alerts; a 4xx refusal is not retried; a sink that keeps failing is
reported with its attempts, its URL's secret path hidden."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest

from mnistops.monitoring.alerts import Alert, send_webhook

pytestmark = pytest.mark.integration  # listens on a socket

BACKOFF = 0.2


class Sink:
    """A webhook that answers the scripted statuses in turn (then 200) and keeps what it received."""

    def __init__(self, statuses):
        self.statuses = list(statuses)
        self.received = []  # (monotonic arrival, body)
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                sink.received.append((time.monotonic(), orjson.loads(body)))
                status = sink.statuses.pop(0) if sink.statuses else 200
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"no" if status >= 300 else b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/services/T000/SECRET"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def gaps(self):
        times = [t for t, _ in self.received]
        return [b - a for a, b in zip(times, times[1:])]


def alerts():
    return [Alert(signal="data_drift", metric="embedding_mmd", value=0.3, threshold=0.1, direction="above",
                  window={"spec": "1h"}, env="prod", endpoint="mnist")]


def test_429_and_5xx_are_retried_with_a_doubling_backoff_until_the_sink_takes_them():
    with Sink([429, 503, 502]) as sink:
        result = send_webhook(sink.url, alerts(), timeout_s=10, retries=4, backoff_s=BACKOFF)
    assert result.ok and result.attempts == 4 and result.error is None
    assert len(sink.received) == 4
    assert all(body == sink.received[0][1] for _, body in sink.received)  # the same alerts every time
    assert "data_drift/embedding_mmd" in sink.received[0][1]["text"]
    # the waits between attempts double (lower bounds only: a loaded machine may add to them)
    gaps = sink.gaps()
    assert gaps[0] >= BACKOFF and gaps[1] >= 2 * BACKOFF and gaps[2] >= 4 * BACKOFF, gaps


def test_a_refusal_is_not_retried():
    with Sink([400]) as sink:
        result = send_webhook(sink.url, alerts(), timeout_s=10, retries=4, backoff_s=BACKOFF)
    assert not result.ok and result.attempts == 1 and len(sink.received) == 1
    assert "HTTP 400" in result.error


def test_a_sink_that_keeps_failing_is_reported_without_its_secret():
    with Sink([500] * 10) as sink:
        result = send_webhook(sink.url, alerts(), timeout_s=10, retries=2, backoff_s=0.01)
    assert not result.ok and result.attempts == 3 and len(sink.received) == 3
    assert "HTTP 500" in result.error and "SECRET" not in result.error
    assert result.error.startswith(f"http://127.0.0.1:{sink.server.server_port}/…")
