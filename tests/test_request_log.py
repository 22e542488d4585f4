"""The endpoint's data collector on a real server (two worker processes on 127.0.0.1, a real
registered model): every scoring request is recorded with what it got and gave back, off the hot
path, by whichever worker answered it (one file per writer process); feedback from every worker
joins by request id; a restart loses no accepted record; a killed server loses at most the last flush."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from serving_fixtures import ServerProcess, make_endpoint, metric, mnist, model_dir  # noqa: F401 (fixtures)
from mnistops.monitoring import request_log_reader
from mnistops.serving.request_log import RequestLogWriter, decode_images, request_log_dir_of

pytestmark = pytest.mark.integration


def wait_until(condition, what: str, timeout: float = 60.0) -> None:
    """Poll `condition` until it holds; fail saying `what` did not happen within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s")
        time.sleep(0.05)


def records(endpoint_dir: Path) -> list:
    files = sorted((request_log_dir_of(endpoint_dir) / "requests").glob("*.jsonl"))
    return [json.loads(line) for f in files for line in f.read_text().splitlines()]


def test_requests_are_collected_with_inputs_outputs_and_feedback(tmp_path, model_dir, mnist):
    images, labels = mnist
    d = make_endpoint(tmp_path, model_dir)
    srv = ServerProcess(d).start()
    try:
        with srv.client() as c:
            ids = []
            for i in range(20):
                r = c.post("/score", json={"data": images[i:i + 1].tolist()})
                assert r.status_code == 200
                ids.append(r.json()["request_id"])
            batch = c.post("/invocations", json={"inputs": images[20:23].tolist()}, headers={"x-request-id": "batch-3"})
            assert batch.status_code == 200
            assert c.post("/score", json={"data": [[1, 2, 3]]}).status_code == 422
            for rid, label in zip(ids[:10], labels[:10]):
                assert c.post("/feedback", json={"request_id": rid, "label": int(label)}).status_code == 202
            metrics = c.get("/metrics").text
    finally:
        assert srv.stop() == 0
    assert 'mnistops_collector_records_total{outcome="written"}' in metrics
    recs = records(d)
    assert len(recs) == 22
    by_id = {r["id"]: r for r in recs}
    first = by_id[ids[0]]
    assert first["route"] == "/score" and first["status"] == 200 and first["deployment"] == "blue"
    assert first["version"] == "1" and first["model"] == "mnist-classifier" and first["latency_ms"] > 0
    # the inputs come back pixel-exact, the outputs are what the client was answered
    assert np.array_equal(decode_images(first["inputs"], 1), images[:1])
    assert len(first["probabilities"][0]) == 10 and first["digits"][0] == int(np.argmax(first["probabilities"][0]))
    assert by_id["batch-3"]["n"] == 3 and np.array_equal(decode_images(by_id["batch-3"]["inputs"], 3), images[20:23])
    refused = [r for r in recs if r["status"] == 422]
    assert len(refused) == 1 and "inputs" not in refused[0] and refused[0]["deployment"] == ""

    window = request_log_reader.load_window(request_log_dir_of(d), 0, 1e12)
    assert window.images.shape == (23, 28, 28) and len(window.requests) == 22
    assert (window.labels >= 0).sum() == 10  # feedback joined by request id
    assert set(window.requests["status"]) == {200, 422}


def test_sampling_keeps_system_records_of_every_request(tmp_path, model_dir, mnist):
    images, _ = mnist
    d = make_endpoint(tmp_path, model_dir, collect_sampling_rate=0.0)
    srv = ServerProcess(d).start()
    try:
        with srv.client() as c:
            for i in range(10):
                assert c.post("/score", json={"data": images[i:i + 1].tolist()}).status_code == 200
    finally:
        srv.stop()
    recs = records(d)
    assert len(recs) == 10 and not any("inputs" in r for r in recs)
    assert all(r["status"] == 200 and r["latency_ms"] > 0 for r in recs)


def test_collection_survives_restart_and_kill(tmp_path, model_dir, mnist):
    images, _ = mnist
    d = make_endpoint(tmp_path, model_dir, collect_flush_ms=50.0)
    srv = ServerProcess(d)
    sent = []

    def burst(n: int, offset: int) -> None:
        def worker(k: int):
            with srv.client() as c:
                for i in range(k, n, 4):
                    r = c.post("/score", json={"data": images[offset + i:offset + i + 1].tolist()})
                    assert r.status_code == 200
                    sent.append(r.json()["request_id"])
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    srv.start()
    burst(100, 0)
    assert srv.stop() == 0  # graceful: everything pending is written
    srv.start()
    burst(60, 100)
    assert srv.stop() == 0
    assert sorted(r["id"] for r in records(d)) == sorted(sent)
    # a restart opens new files (one per worker); the old ones are never written again
    files = {f: f.stat().st_size for f in (request_log_dir_of(d) / "requests").glob("*.jsonl")}
    pids = {f.name.split("-")[1] for f in files}
    assert len(pids) == len(files)  # one file per writer process

    # kill -9: what was answered more than a flush period ago is on disk
    srv.start()
    burst(40, 160)
    wait_until(lambda: sorted(r["id"] for r in records(d)) == sorted(sent), "the last burst flushed to disk")
    srv.kill9()
    assert sorted(r["id"] for r in records(d)) == sorted(sent)
    assert all(f.stat().st_size == size for f, size in files.items())  # earlier files: never written again


def test_rotation_by_size(tmp_path):
    col = RequestLogWriter(tmp_path, rotate_mb=0.01, flush_ms=10)  # ~10 KB files
    col.start()
    batch = np.zeros((1, 1, 28, 28), np.float32)
    probs = np.full((1, 10), 0.1, np.float32)
    info = {"model_name": "m", "version": "1"}
    def written() -> int:
        return sum(len(f.read_text().splitlines()) for f in (tmp_path / "requests").glob("*.jsonl"))

    for i in range(100):
        col.record(float(i), f"r{i}", "/score", 200, 0.001, "blue", (batch, probs, info))
        if i % 10 == 9:  # the writer drains each ten (however busy the machine) before the next ten come
            deadline = time.monotonic() + 60
            while written() < i + 1 and time.monotonic() < deadline:
                time.sleep(0.01)
    col.close()
    files = sorted((tmp_path / "requests").glob("*.jsonl"))
    assert len(files) > 3
    lines = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    assert [r["id"] for r in lines] == [f"r{i}" for i in range(100)]


ONE = (np.zeros((1, 1, 28, 28), np.float32), np.full((1, 10), 0.1, np.float32), {"model_name": "m", "version": "1"})


def test_a_full_queue_drops_new_records_and_counts_them(tmp_path):
    """collect.max_pending: past it, record() drops (never blocks the request) and the metrics say so."""
    from mnistops.serving.prometheus import Metrics

    metrics = Metrics()
    col = RequestLogWriter(tmp_path, max_pending=5, metrics=metrics, flush_ms=600_000)  # the writer waits for close()
    col.start()
    for i in range(8):
        col.record(float(i), f"r{i}", "/score", 200, 0.001, "blue", ONE)
    col.close()  # writes what was queued
    lines = [json.loads(line) for f in (tmp_path / "requests").glob("*.jsonl") for line in f.read_text().splitlines()]
    assert [r["id"] for r in lines] == [f"r{i}" for i in range(5)]
    sample = metrics.registry.get_sample_value
    assert sample("mnistops_collector_records_total", {"outcome": "dropped"}) == 3
    assert sample("mnistops_collector_records_total", {"outcome": "written"}) == 5


@pytest.mark.parametrize("rotate_minutes, files", [(0.0005, 3), (60.0, 1)])
def test_rotation_by_age(tmp_path, rotate_minutes, files):
    """collect.rotate_minutes: a file older than that gets no more records; a new one opens."""
    col = RequestLogWriter(tmp_path, rotate_minutes=rotate_minutes, rotate_mb=64)
    col.dir.mkdir(parents=True)  # what start() does, without its writer thread: the flushes happen below
    for i in range(3):
        col.record(float(i), f"r{i}", "/score", 200, 0.001, "blue", ONE)
        col._flush()  # the writer thread's step, here in the test's order
        opened = col._file_opened
        wait_until(lambda: time.time() - opened > 0.03 + 0.001, "30 ms passed", timeout=10)
    col.close()
    found = sorted((tmp_path / "requests").glob("*.jsonl"))
    assert len(found) == files
    assert [json.loads(line)["id"] for f in found for line in f.read_text().splitlines()] == ["r0", "r1", "r2"]


def test_collection_off_writes_nothing_and_still_serves(tmp_path, model_dir, mnist):
    """collect.enabled=false: no collector at all, answers and feedback as usual."""
    images, _ = mnist
    d = make_endpoint(tmp_path, model_dir, workers=1, collect_enabled=False)
    srv = ServerProcess(d).start()
    try:
        with srv.client() as c:
            for i in range(5):
                r = c.post("/score", json={"data": images[i:i + 1].tolist()})
                assert r.status_code == 200
            metrics = c.get("/metrics").text
    finally:
        assert srv.stop() == 0
    assert not list((request_log_dir_of(d) / "requests").glob("*.jsonl"))
    assert "mnistops_collector_records_total{" not in metrics
    assert metric(metrics, "mnistops_requests_total", route="/score", status="200") == 5


def _append_feedback(log_dir: str, writer: int, n: int) -> None:
    from mnistops.serving.request_log import FeedbackLog

    log = FeedbackLog(Path(log_dir))
    for i in range(n):
        log.append({"request_id": f"w{writer}-{i}", "label": i % 10, "pad": "x" * 3000})


def test_feedback_appends_from_several_processes_never_tear(tmp_path):
    """The endpoint's workers append ground truth to one file: 4 processes at once, long lines."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_feedback, args=(str(tmp_path), w, 300)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    lines = (tmp_path / "feedback.jsonl").read_text().splitlines()
    ids = sorted(json.loads(line)["request_id"] for line in lines)  # every line a whole record
    assert ids == sorted(f"w{w}-{i}" for w in range(4) for i in range(300))
