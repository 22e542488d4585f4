"""The endpoint's supervisor: keeps the gunicorn master (``master.py``) running, like the platform
behind a managed endpoint keeps its containers.

``python -m mnistops.serving --endpoint-dir DIR`` runs this. It writes ``server.pid`` (its own pid),
starts the master in a process group of its own, and when the master dies (SIGKILL, a crash) it
kills whatever is left of that group (orphaned workers still holding the port) and starts a new
master, which loads the deployments and traffic of ``state.json``: no ``stage=deploy`` needed.
A master that never became ready (bad settings, port in use) is not retried: the supervisor exits
with its code. SIGTERM/SIGINT stop everything gracefully (in-flight requests finish); restarts and
pids are in ``run/supervisor.json`` and ``run/master.json`` for ``stage=endpoint``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from mnistops.serving.master import GRACEFUL_TIMEOUT_S, MASTER_FILE, write_json
from mnistops.serving.prometheus import MULTIPROC_ENV
from mnistops.serving.settings import RUN_DIR

log = logging.getLogger("mnistops.serving.supervisor")

# glibc's malloc for the master and its workers: keep freed memory instead of handing the heap's top
# back to the OS after every burst (the request-log writer's chunk, a batch's arrays) only to fault
# the same pages in again on the next one; that halved the writer's CPU per record (12 -> 6 us).
# Ignored by other C libraries; a value set in the environment wins.
MALLOC_ENV = {"MALLOC_TRIM_THRESHOLD_": "67108864", "MALLOC_MMAP_THRESHOLD_": "4194304"}  # 64 MiB, 4 MiB

PID_FILE = "server.pid"
SUPERVISOR_FILE = "supervisor.json"
BACKOFF_S = (0.2, 1.0, 2.0, 5.0, 10.0)  # between restarts of a master that keeps dying young
STABLE_S = 30.0  # a master that lived this long resets the backoff


class Supervisor:
    def __init__(self, endpoint_dir: Path, log_level: str = "info"):
        self.dir = Path(endpoint_dir).resolve()
        self.run_dir = self.dir / RUN_DIR
        self.log_level = log_level
        self.master: Optional[subprocess.Popen] = None
        self.stopping = False
        self._stop_at = float("inf")
        self.status = {"pid": os.getpid(), "started_at": time.time(), "master_pid": None,
                       "master_started_at": None, "master_restarts": 0, "worker_restarts": 0}

    # ------------------------------------------------------------------ signals
    def _stop(self, signum, frame) -> None:
        if not self.stopping:
            self.stopping, self._stop_at = True, time.time()
        if self.master is not None and self.master.poll() is None:
            try:
                os.killpg(self.master.pid, signal.SIGTERM)  # graceful: workers finish in-flight requests
            except ProcessLookupError:
                pass

    # ------------------------------------------------------------------ files
    def _save(self) -> None:
        write_json(self.run_dir / SUPERVISOR_FILE, self.status)

    def _fresh_run_dir(self) -> None:
        """What a previous master left: worker registrations, metric files, its status."""
        shutil.rmtree(self.run_dir / "workers", ignore_errors=True)
        shutil.rmtree(self.run_dir / "prometheus", ignore_errors=True)
        (self.run_dir / MASTER_FILE).unlink(missing_ok=True)
        (self.run_dir / "prometheus").mkdir(parents=True)

    def _master_info(self) -> Optional[dict]:
        try:
            return json.loads((self.run_dir / MASTER_FILE).read_text())
        except (OSError, ValueError):
            return None

    # ------------------------------------------------------------------ the loop
    def _start_master(self) -> subprocess.Popen:
        self._fresh_run_dir()
        env = dict(os.environ, **{MULTIPROC_ENV: str(self.run_dir / "prometheus")})
        for name, value in MALLOC_ENV.items():
            env.setdefault(name, value)
        cmd = [sys.executable, "-m", "mnistops.serving.master", "--endpoint-dir", str(self.dir),
               "--log-level", self.log_level]
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
        self.status.update(master_pid=proc.pid, master_started_at=time.time())
        self._save()
        return proc

    def _reap(self, proc: subprocess.Popen) -> int:
        """Wait for the master; on stop, give it the graceful period, then kill its whole group."""
        while True:
            try:
                rc = proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if self.stopping and time.time() - self._stop_at > GRACEFUL_TIMEOUT_S + 10:
                    log.warning("master %d did not stop in time: killing it", proc.pid)
                    _killpg(proc.pid, signal.SIGKILL)
        _killpg(proc.pid, signal.SIGKILL)  # orphaned workers (the master was killed) release the port
        return rc

    def run(self) -> int:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        pid_path = self.dir / PID_FILE
        write_json_text(pid_path, f"{os.getpid()}\n")
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        failures = 0
        ever_ready = False
        rc = 0
        try:
            while not self.stopping:
                self.master = proc = self._start_master()
                started = time.time()
                rc = self._reap(proc)
                info = self._master_info()
                ready = bool(info and info.get("ready_at"))
                if info:
                    self.status["worker_restarts"] += max(0, int(info.get("forks", 0)) - int(info.get("workers", 0)))
                if self.stopping:
                    break
                if not ready and not ever_ready:
                    log.error("endpoint master exited (code %s) before it was ready: not restarting", rc)
                    return rc if rc else 3
                ever_ready |= ready
                if time.time() - started > STABLE_S:
                    failures = 0
                delay = BACKOFF_S[min(failures, len(BACKOFF_S) - 1)]
                failures += 1
                self.status["master_restarts"] += 1
                self._save()
                log.error("endpoint master %d exited (code %s): restarting it in %.1fs (restart %d)", proc.pid, rc,
                          delay, self.status["master_restarts"])
                time.sleep(delay)
            return 0
        finally:
            try:
                if pid_path.read_text().strip() == str(os.getpid()):
                    pid_path.unlink()
            except OSError:
                pass
            self.status["master_pid"] = None
            self._save()
            log.info("endpoint %s stopped", self.dir.name)


def write_json_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
