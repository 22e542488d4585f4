"""The endpoint as a supervised group of workers (two here, one per core of a CI machine): a change
reaches every worker before the admin hears 200, a switch under load fails no request, a killed
worker or a killed master comes back by itself with its deployments and traffic, and the metrics
add up over the workers. Real server processes on 127.0.0.1, a real registered model; every client
thread's outcome is counted (an exception in a thread is an error of the test run)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from mnistops.serving.cluster import process_alive
from serving_fixtures import (AUTH, ServerProcess, make_endpoint, master_pid, metric, mnist, model_dir,  # noqa: F401
                              worker_pids)

pytestmark = pytest.mark.integration

ROW = {"data": [[0] * 784]}


def green_info(d: Path, model_dir: Path, version: str = "2") -> dict:
    path = d / "models" / f"mnist-classifier-v{version}"
    if not path.exists():
        shutil.copytree(model_dir, path)
    return {"path": str(path), "model_name": "mnist-classifier", "version": version,
            "model_uri": f"models:/mnist-classifier/{version}"}


def served_by(srv: ServerProcess, request_ids) -> dict:
    """request id -> pid of the worker that logged it (the log line carries the process id)."""
    wanted = set(request_ids)
    out = {}
    for line in srv.log().splitlines():
        m = re.search(r" (\d+) mnistops\.serving ([\w.:-]+) POST ", line)
        if m and m.group(2) in wanted:
            out[m.group(2)] = int(m.group(1))
    return out


def scored_requests_counted(srv: ServerProcess) -> float:
    """/score requests in /metrics (asked of any worker: it sums every worker's count)."""
    with srv.client() as c:
        return metric(c.get("/metrics").text, "mnistops_requests_total", route="/score")


def fresh_connection_versions(srv: ServerProcess, n: int) -> dict:
    """n requests at once, each on a new connection (the kernel spreads connections over the
    workers): request id -> the version that answered."""
    out, errors = {}, []
    barrier = threading.Barrier(n)

    def one():
        rid = uuid.uuid4().hex
        with srv.client() as c:
            barrier.wait()
            r = c.post("/score", json=ROW, headers={"x-request-id": rid})
        if r.status_code != 200:
            errors.append(r.text)
        out[rid] = r.json().get("version")

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return out


class Load:
    """Client threads, each with its own keep-alive connection, scoring until stopped; every
    request's outcome is kept (status or exception, start time, version)."""

    def __init__(self, srv: ServerProcess, threads: int = 4, headers=None):
        self.srv, self.stop_flag, self.results = srv, threading.Event(), []
        self.headers = headers or AUTH
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self):
        with httpx.Client(base_url=self.srv.url, headers=self.headers, timeout=30) as c:
            while not self.stop_flag.is_set():
                t0 = time.monotonic()
                try:
                    r = c.post("/score", json=ROW)
                    outcome = (r.status_code, r.json().get("version") if r.status_code == 200 else r.text[:200])
                except httpx.HTTPError as exc:  # a connection the dead worker held
                    outcome = (0, repr(exc))
                with self.lock:
                    self.results.append((t0, time.monotonic(), *outcome))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        for t in self.threads:
            t.join(60)
            assert not t.is_alive()

    def count(self) -> int:
        with self.lock:
            return len(self.results)

    def wait_for(self, n: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        start = self.count()
        while self.count() < start + n:
            assert time.monotonic() < deadline, "the load made no progress"
            time.sleep(0.02)


@pytest.fixture
def endpoint(tmp_path, model_dir):
    srv = ServerProcess(make_endpoint(tmp_path, model_dir)).start()
    yield srv
    srv.stop()


def test_a_switch_reaches_every_worker_before_the_admin_hears_200(endpoint, model_dir):
    srv = endpoint
    assert len(worker_pids(srv.dir)) == 2
    with srv.admin() as a:
        r = a.post("/admin/deployments/green", json=green_info(srv.dir, model_dir))
        assert r.status_code == 200 and r.json()["loaded"], r.text
        state = a.get("/admin/state").json()
        assert sorted(w["pid"] for w in state["workers"]) == worker_pids(srv.dir)
        assert all(w["loaded"] == {"blue": True, "green": True} for w in state["workers"])
        assert a.put("/admin/traffic", json={"traffic": {"green": 100}}).status_code == 200
    # every worker answers from the new state at once: requests on fresh connections, spread by the
    # kernel over the workers, until both workers have been seen answering
    seen, versions = set(), {}
    for _ in range(20):
        batch = fresh_connection_versions(srv, 10)
        versions.update(batch)
        seen |= set(served_by(srv, batch).values())
        if seen >= set(worker_pids(srv.dir)):
            break
        time.sleep(0.3)  # the log lines of the last requests reach the file
    assert seen == set(worker_pids(srv.dir)), "the kernel never gave a connection to one of the workers"
    assert set(versions.values()) == {"2"}
    saved = json.loads((srv.dir / "state.json").read_text())
    assert saved["traffic"] == {"green": 100} and saved["generation"] == 2

    with srv.admin() as a:  # rollback: every worker again
        assert a.post("/admin/rollback").json()["traffic"] == {"blue": 100}
    assert set(fresh_connection_versions(srv, 10).values()) == {"1"}


def test_switch_and_rollback_under_load_fail_no_request(endpoint, model_dir):
    srv = endpoint
    with Load(srv, threads=4) as load, srv.admin() as a:
        load.wait_for(50)
        assert a.post("/admin/deployments/green", json=green_info(srv.dir, model_dir)).status_code == 200
        assert a.put("/admin/traffic", json={"traffic": {"green": 100}}).status_code == 200
        switched = time.monotonic()
        load.wait_for(100)
        rollback_asked = time.monotonic()
        assert a.post("/admin/rollback").status_code == 200
        rolled_back = time.monotonic()
        load.wait_for(100)
    results = load.results
    failed = [r for r in results if r[2] != 200]
    assert len(results) > 250 and not failed, failed[:5]
    after_switch = [r[3] for r in results if switched < r[0] and r[1] < rollback_asked]
    after_rollback = [r[3] for r in results if r[0] > rolled_back]
    assert after_switch and set(after_switch) == {"2"}  # started after the 200: the new state, every worker
    assert after_rollback and set(after_rollback) == {"1"}


def test_keep_alive_connections_spread_over_the_workers(endpoint):
    """Keep-alive connections opened one after another (as wrk opens its 8): the least-connected
    worker accepts each, so both workers hold some, and each connection stays with its worker."""
    srv = endpoint
    clients = [httpx.Client(base_url=srv.url, headers=AUTH, timeout=30) for _ in range(8)]
    try:
        rounds = []
        for _ in range(2):
            rids = []
            for c in clients:  # the first round opens each client's one connection; the second reuses it
                rid = uuid.uuid4().hex
                assert c.post("/score", json=ROW, headers={"x-request-id": rid}).status_code == 200
                rids.append(rid)
            rounds.append(rids)
        deadline = time.monotonic() + 30
        while len(served_by(srv, rounds[0] + rounds[1])) < 16:  # the request log is written in batches
            assert time.monotonic() < deadline, srv.log()[-3000:]
            time.sleep(0.05)
        by = served_by(srv, rounds[0] + rounds[1])
    finally:
        for c in clients:
            c.close()
    first = [by[rid] for rid in rounds[0]]
    assert len(set(first)) == 2, f"every connection went to one worker: {first}"
    assert [by[rid] for rid in rounds[1]] == first  # keep-alive: a connection stays with its worker


def test_a_killed_worker_comes_back_with_the_state(endpoint, model_dir):
    srv = endpoint
    with srv.admin() as a:
        assert a.post("/admin/deployments/green", json=green_info(srv.dir, model_dir)).status_code == 200
        assert a.put("/admin/traffic", json={"traffic": {"blue": 30, "green": 70}}).status_code == 200
    threads = 4
    with Load(srv, threads=threads) as load:
        load.wait_for(50)
        victim = worker_pids(srv.dir)[0]
        os.kill(victim, signal.SIGKILL)
        srv.wait_serving(exclude=(victim,))  # a new worker has loaded the state and joined
        load.wait_for(100)
    failed = [r for r in load.results if r[2] != 200]
    # at most the killed worker's in-flight requests fail: one per connection it held
    assert len(failed) <= threads, failed
    assert all(r[2] == 0 for r in failed), failed  # connection errors, never an error answer
    pids = worker_pids(srv.dir)
    assert len(pids) == 2 and victim not in pids
    with srv.admin() as a:
        state = a.get("/admin/state").json()
    assert state["traffic"] == {"blue": 30, "green": 70}
    assert all(w["loaded"] == {"blue": True, "green": True} for w in state["workers"])
    master = json.loads((srv.dir / "run" / "master.json").read_text())
    assert master["forks"] - master["workers"] == 1  # one worker restart, counted for stage=endpoint


def test_a_killed_master_comes_back_with_the_state_and_metrics_add_up(endpoint, model_dir):
    srv = endpoint
    with srv.admin() as a:
        assert a.post("/admin/deployments/green", json=green_info(srv.dir, model_dir)).status_code == 200
        assert a.put("/admin/traffic", json={"traffic": {"blue": 50, "green": 50},
                                             "mirror_traffic": {}}).status_code == 200
    # metrics: requests on fresh connections land on both workers; /metrics (any worker) counts them all
    fresh_connection_versions(srv, 30)
    deadline = time.monotonic() + 30  # a worker counts a request just after its answer has gone out
    while (total := scored_requests_counted(srv)) < 30:
        assert time.monotonic() < deadline, f"/metrics counts {total} of 30 answered requests"
        time.sleep(0.05)
    assert total == 30  # and not more: every worker's count, each once

    old_master, old_workers = master_pid(srv.dir), worker_pids(srv.dir)
    os.kill(old_master, signal.SIGKILL)
    deadline = time.monotonic() + 90
    while master_pid(srv.dir) in (None, old_master) or set(worker_pids(srv.dir)) & set(old_workers) \
            or len(worker_pids(srv.dir)) < 2:
        assert time.monotonic() < deadline, srv.log()[-3000:]
        time.sleep(0.1)
    srv.wait_serving()
    for pid in old_workers:  # the orphaned workers were stopped, not left holding the port
        assert not process_alive(pid)
    with srv.admin() as a:
        state = a.get("/admin/state").json()
    assert state["traffic"] == {"blue": 50, "green": 50} and len(state["workers"]) == 2
    assert set(fresh_connection_versions(srv, 20).values()) <= {"1", "2"}
    sup = json.loads((srv.dir / "run" / "supervisor.json").read_text())
    assert sup["master_restarts"] == 1 and sup["pid"] == srv.proc.pid
    workers_before_stop, master_before_stop = worker_pids(srv.dir), master_pid(srv.dir)
    assert srv.stop() == 0
    for pid in [*workers_before_stop, master_before_stop]:  # stop() stops everything
        assert not process_alive(pid)


def test_a_broken_settings_file_is_one_clear_line(tmp_path, model_dir):
    d = make_endpoint(tmp_path, model_dir)
    settings = json.loads((d / "server.json").read_text())
    settings["workers"] = 0
    (d / "server.json").write_text(json.dumps(settings))
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "mnistops.serving", "--endpoint-dir", str(d)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "workers" in proc.stderr and "Traceback" not in proc.stderr
    assert not (d / "server.pid").exists()


HOLD_WITH_REUSEPORT = ("import socket, sys\ns = socket.socket()\n"
                       "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)\n"
                       "s.bind(('127.0.0.1', 0))\ns.listen()\nprint(s.getsockname()[1], flush=True)\nsys.stdin.read()\n")


def test_a_port_another_program_holds_even_with_so_reuseport_is_refused(tmp_path, model_dir):
    """The server itself (not only stage=deploy's check) refuses a port another program listens on,
    also one that set SO_REUSEPORT (which would let any later same-user socket that sets it share the
    port): the endpoint's socket does not set it, so the kernel refuses the bind, and the server
    exits without serving."""
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", HOLD_WITH_REUSEPORT], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        port = int(holder.stdout.readline())
        d = make_endpoint(tmp_path, model_dir, port=port)
        with open(d / "server.log", "ab") as log:
            proc = subprocess.run([sys.executable, "-m", "mnistops.serving", "--endpoint-dir", str(d)],
                                  stdout=log, stderr=subprocess.STDOUT, timeout=120)
        assert holder.poll() is None, "the holder still holds the port"
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    text = (d / "server.log").read_text(errors="replace")
    assert proc.returncode != 0, text[-3000:]
    assert f"Connection in use: ('127.0.0.1', {port})" in text, text[-3000:]
    assert not worker_pids(d) and not (d / "server.pid").exists()


def test_feedback_from_concurrent_clients_lands_whole(endpoint):
    """Ground truth from many connections at once (spread over the workers): every record whole."""
    srv = endpoint
    sent, lock = [], threading.Lock()

    def post(k: int):
        for i in range(25):
            with srv.client() as c:
                rid = f"fb-{k}-{i}"
                assert c.post("/feedback", json={"request_id": rid, "label": i % 10}).status_code == 202
                with lock:
                    sent.append(rid)

    threads = [threading.Thread(target=post, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    path = srv.dir.parent.parent / "monitoring" / srv.dir.name / "feedback.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]  # each a whole record
    assert sorted(r["request_id"] for r in lines) == sorted(sent) and len(sent) == 200
