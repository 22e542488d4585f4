"""The local endpoint backend: one uvicorn process per endpoint (started detached, so it outlives
the command that deployed it), its files under <paths.home>/<env>/endpoints/<name>/, and a thin
client for the server's admin routes. The server owns state.json; this side never writes it."""

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
from typing import Any, Dict, Optional

import httpx
from omegaconf import DictConfig

from mnistops.atomic import write_atomic
from mnistops.errors import MnistopsError

SERVER_KEYS = ("host", "port", "auth", "max_body_bytes", "request_timeout_ms", "max_batch", "max_wait_ms",
               "max_queue")


class LocalEndpoint:
    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.name = cfg.endpoint.name
        self.dir = Path(cfg.paths.home) / cfg.env.name / "endpoints" / self.name
        self.url = f"http://{cfg.endpoint.host}:{cfg.endpoint.port}"
        self.key_file = self.dir / "key"
        self.pid_file = self.dir / "server.pid"
        self.log_file = self.dir / "server.log"
        self.models_dir = self.dir / "models"

    # --- files ------------------------------------------------------------------------------
    def key(self) -> str:
        """The endpoint's API key, generated on first use and kept 0600."""
        if not self.key_file.is_file():
            self.dir.mkdir(parents=True, exist_ok=True)
            write_atomic(self.key_file, secrets.token_urlsafe(32) + "\n", mode=0o600)
        return self.key_file.read_text().strip()

    def write_server_config(self) -> None:
        collect = self.cfg.endpoint.collect
        settings = {"name": self.name, "env": self.cfg.env.name,
                    **{k: self.cfg.endpoint[k] for k in SERVER_KEYS},
                    "collect": bool(collect.enabled), "collect_sampling_rate": float(collect.sampling_rate),
                    "collect_rotate_mb": float(collect.rotate_mb), "collect_rotate_minutes": float(collect.rotate_minutes),
                    "collect_flush_ms": float(collect.flush_ms), "collect_max_pending": int(collect.max_pending)}
        self.dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.dir / "server.json", json.dumps(settings, indent=2))

    def pid(self) -> Optional[int]:
        try:
            pid = int(self.pid_file.read_text().strip())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

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
        if self.pid() and self.healthy():
            return False
        if self._port_taken():
            raise MnistopsError(f"endpoint.port={self.cfg.endpoint.port} is in use by another process "
                                f"(not endpoint {self.name!r} of env {self.cfg.env.name!r}); pick another port")
        self.key()
        self.write_server_config()
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "mnistops.serving", "--endpoint-dir", str(self.dir)],
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, cwd=self.dir)
        deadline = time.time() + self.cfg.endpoint.startup_timeout_s
        while time.time() < deadline:
            if proc.poll() is not None:
                raise MnistopsError(f"endpoint server exited at start (code {proc.returncode}): "
                                    f"{self.last_log_line()} (log: {self.log_file})")
            if self.healthy():
                return True
            time.sleep(0.2)
        proc.kill()
        raise MnistopsError(f"endpoint server did not answer /health within {self.cfg.endpoint.startup_timeout_s}s "
                            f"(log: {self.log_file})")

    def last_log_line(self) -> str:
        try:
            lines = [ln for ln in self.log_file.read_text(errors="replace").splitlines() if ln.strip()]
            return lines[-1][-300:] if lines else "no output"
        except OSError:
            return "no log"

    def stop(self, timeout: float = 15.0) -> bool:
        pid = self.pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.time() + timeout
        while time.time() < deadline and self.pid() is not None:
            time.sleep(0.1)
        if self.pid() is not None:
            os.kill(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return True

    # --- admin client -----------------------------------------------------------------------
    def admin(self, method: str, path: str, body: Optional[Dict[str, Any]] = None, timeout: float = 120) -> Dict:
        headers = {"Authorization": f"Bearer {self.key()}"}
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
