"""The local endpoint's process manager: the supervised server of one endpoint (started detached, so
it outlives the command that deployed it), its files under <paths.home>/<env>/endpoints/<name>/, its
keys, and a thin client for the server's admin routes. The server owns state.json; this side never
writes it.

Keys, as on an Azure managed endpoint: clients score with the primary or the secondary key, the
admin routes (what `stage=deploy`, `rollback` and `endpoint` call) take the admin key; each is a
0600 file, generated on first use, never logged. `regenerate_key("primary")` replaces one scoring
key while the other keeps working: the server accepts a new key file from its next request on.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import httpx
from omegaconf import DictConfig, OmegaConf

from mnistops.atomic import write_atomic
from mnistops.errors import MnistopsError

KEYS = ("primary", "secondary", "admin")
SCORING_KEYS = ("primary", "secondary")


class EndpointServer:
    """One local endpoint's server process seen from outside: start it detached and supervised, wait
    until it serves, stop it, its files and keys, and a client for its admin routes. Not an `Endpoint`
    (the flavour interface): `ProcessEndpoint` is that, and drives one of these."""

    def __init__(self, cfg: DictConfig):
        from mnistops.serving.settings import KEY_FILES, RUN_DIR

        self.cfg = cfg
        self.name = cfg.endpoint.name
        self.dir = Path(cfg.paths.home) / cfg.env.name / "endpoints" / self.name
        self.url = f"http://{cfg.endpoint.host}:{cfg.endpoint.port}"
        self.key_files = {which: self.dir / KEY_FILES[which] for which in KEYS}
        self.key_file = self.key_files["primary"]  # what clients use
        self.admin_key_file = self.key_files["admin"]
        self.pid_file = self.dir / "server.pid"
        self.log_file = self.dir / "server.log"
        self.models_dir = self.dir / "models"
        self.run_dir = self.dir / RUN_DIR

    # --- keys -------------------------------------------------------------------------------
    def _key(self, which: str) -> str:
        path = self.key_files[which]
        if not path.is_file() or not path.read_text().strip():
            self.dir.mkdir(parents=True, exist_ok=True)
            write_atomic(path, secrets.token_urlsafe(32) + "\n", mode=0o600)
        return path.read_text().strip()

    def key(self) -> str:
        """The primary scoring key (what clients send), generated on first use and kept 0600."""
        return self._key("primary")

    def secondary_key(self) -> str:
        return self._key("secondary")

    def admin_key(self) -> str:
        """The admin routes' key (deploy, traffic, rollback, state): never handed to clients."""
        return self._key("admin")

    def regenerate_key(self, which: str) -> Path:
        """A new `primary` or `secondary` scoring key, without downtime: the running server accepts
        it from its next request on and keeps accepting the other key throughout."""
        if which not in SCORING_KEYS:
            raise MnistopsError(f"endpoint.key={which!r}: regenerate 'primary' or 'secondary' "
                                "(the admin key is rotated by stopping the endpoint and deleting admin.key)")
        for other in KEYS:
            self._key(other)
        path = self.key_files[which]
        new = secrets.token_urlsafe(32)
        write_atomic(path, new + "\n", mode=0o600)
        if self.pid() and self.healthy() and self.cfg.endpoint.auth:
            try:
                code = httpx.get(f"{self.url}/v2/models/{self.name}", headers={"Authorization": f"Bearer {new}"},
                                 timeout=10).status_code
            except httpx.HTTPError as err:
                raise MnistopsError(f"endpoint {self.name}: the new {which} key could not be checked: {err}") from err
            if code != 200:
                raise MnistopsError(f"endpoint {self.name}: the server refused the new {which} key ({code})")
        return path

    # --- files ------------------------------------------------------------------------------
    def write_server_config(self) -> None:
        from mnistops.serving.settings import ConfigError, ServerSettings

        endpoint = OmegaConf.to_container(self.cfg.endpoint, resolve=True)
        try:
            settings = ServerSettings.from_endpoint(endpoint, self.name, self.cfg.env.name)
        except ConfigError as exc:
            raise MnistopsError(str(exc)) from None
        settings.write(self.dir)

    def pid(self) -> Optional[int]:
        """The supervisor's pid while it runs."""
        try:
            pid = int(self.pid_file.read_text().strip())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    def _run_json(self, name: str) -> Dict[str, Any]:
        try:
            return json.loads((self.run_dir / name).read_text())
        except (OSError, ValueError):
            return {}

    def worker_pids(self) -> List[int]:
        """The workers that have loaded the state and joined (registered their control port)."""
        pids = []
        for path in (self.run_dir / "workers").glob("*.json"):
            try:
                pid = int(path.stem)
            except ValueError:
                continue
            if _alive(pid):
                pids.append(pid)
        return sorted(pids)

    # --- process ----------------------------------------------------------------------------
    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def _port_taken(self) -> bool:
        with socket.socket() as s:
            s.settimeout(0.5)
            return s.connect_ex((self.cfg.endpoint.host, self.cfg.endpoint.port)) == 0

    def ensure_running(self) -> bool:
        """Start the server unless ours is already up; True when it had to start."""
        if self.pid():  # ours runs (perhaps restarting its master): wait until it serves
            workers = self._running_workers()
            if workers != int(self.cfg.endpoint.workers):
                print(f"note: endpoint {self.name} ({self.cfg.env.name}) runs with {workers} worker(s); "
                      f"endpoint.workers={self.cfg.endpoint.workers} applies when it next starts "
                      "(stage=endpoint endpoint.action=stop, then stage=deploy)")
            self._wait_serving(None, workers)
            return False
        if self._port_taken():
            raise MnistopsError(f"endpoint.port={self.cfg.endpoint.port} is in use by another process "
                                f"(not endpoint {self.name!r} of env {self.cfg.env.name!r}); pick another port")
        for which in KEYS:
            self._key(which)
        self.write_server_config()
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "mnistops.serving", "--endpoint-dir", str(self.dir)],
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, cwd=self.dir)
        self._wait_serving(proc)
        return True

    def _running_workers(self) -> int:
        """The worker count the running server was started with (its settings file)."""
        from mnistops.serving.settings import ConfigError, load_settings

        try:
            return int(load_settings(self.dir).workers)
        except ConfigError:
            return int(self.cfg.endpoint.workers)

    def _wait_serving(self, proc: Optional[subprocess.Popen], workers: Optional[int] = None) -> None:
        """Until /health answers and every worker has joined (each loaded the deployments)."""
        timeout = self.cfg.endpoint.startup_timeout_s
        workers = int(self.cfg.endpoint.workers) if workers is None else workers
        deadline = time.time() + timeout
        while time.time() < deadline:
            if proc is not None and proc.poll() is not None:
                raise MnistopsError(f"endpoint server exited at start (code {proc.returncode}): "
                                    f"{self.last_log_line()} (log: {self.log_file})")
            if self.healthy() and len(self.worker_pids()) >= workers:
                return
            time.sleep(0.2)
        if proc is not None:
            self.stop(timeout=5)
        raise MnistopsError(f"endpoint server did not answer /health with {workers} workers within {timeout}s "
                            f"(log: {self.log_file})")

    def last_log_line(self) -> str:
        try:
            lines = [ln for ln in self.log_file.read_text(errors="replace").splitlines() if ln.strip()]
            return lines[-1][-300:] if lines else "no output"
        except OSError:
            return "no log"

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the supervisor, its master and every worker (gracefully, then by force)."""
        pid = self.pid()
        master = self._run_json("supervisor.json").get("master_pid")
        orphaned = pid is None and bool(master) and _alive(master)  # the supervisor itself was killed
        if pid is None and not orphaned:
            return False
        if pid is not None:
            os.kill(pid, signal.SIGTERM)  # it stops its master gracefully (in-flight requests finish)
            deadline = time.time() + timeout
            while time.time() < deadline and self.pid() is not None:
                time.sleep(0.1)
            if self.pid() is not None:
                os.kill(pid, signal.SIGKILL)
                orphaned = bool(master)
        if orphaned:
            try:
                os.killpg(master, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.pid_file.unlink(missing_ok=True)
        return True

    # --- admin client -----------------------------------------------------------------------
    def admin(self, method: str, path: str, body: Optional[Dict[str, Any]] = None, timeout: float = 120) -> Dict:
        headers = {"Authorization": f"Bearer {self.admin_key()}"}
        try:
            resp = httpx.request(method, f"{self.url}{path}", json=body, headers=headers, timeout=timeout)
        except httpx.HTTPError as err:
            raise MnistopsError(f"endpoint {self.name} at {self.url} did not answer {path}: {err}") from err
        if resp.status_code >= 400:
            try:
                reason = resp.json().get("error") or resp.json().get("detail") or resp.text
            except ValueError:
                reason = resp.text
            raise MnistopsError(f"endpoint {self.name}: {method} {path} refused ({resp.status_code}): {reason}")
        return resp.json() if resp.content else {}

    def state(self) -> Dict[str, Any]:
        return self.admin("GET", "/admin/state")

    def status(self) -> Dict[str, Any]:
        """For `stage=endpoint`: processes, restarts, uptime, traffic, deployments, key files."""
        sup = self._run_json("supervisor.json")
        master = self._run_json("master.json")
        out: Dict[str, Any] = {"name": self.name, "env": self.cfg.env.name, "url": self.url, "dir": str(self.dir),
                               "log_file": str(self.log_file), "workers": int(self.cfg.endpoint.workers),
                               "key_files": {k: str(p) for k, p in self.key_files.items()}}
        pid = self.pid()
        out["running"] = bool(pid and self.healthy())
        if not out["running"]:
            return out
        now = time.time()
        out.update(pid=pid, master_pid=sup.get("master_pid"), worker_pids=self.worker_pids(),
                   uptime_s=round(now - sup.get("started_at", now), 1),
                   master_uptime_s=round(now - sup.get("master_started_at", now), 1),
                   restarts={"master": int(sup.get("master_restarts", 0)),
                             "workers": int(sup.get("worker_restarts", 0))
                             + max(0, int(master.get("forks", 0)) - int(master.get("workers", 0)))})
        try:
            state = self.state()
        except MnistopsError:  # answered /health, then went: a master being replaced right now
            out["running"] = False
            return out
        for key in ("traffic", "mirror_traffic", "deployments", "generation"):
            out[key] = state.get(key)
        out["workers_live"] = len(state.get("workers", []))
        return out


def _alive(pid) -> bool:
    from mnistops.serving.cluster import process_alive

    return isinstance(pid, int) and process_alive(pid)
