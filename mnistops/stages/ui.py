"""stage=ui: MLflow's UI on the env's store, so runs, metrics, the sample grid and confusion
matrix, and the registry with its aliases and lineage tags can be looked at, not only queried.

For the env's own sqlite store it runs `mlflow server` on ui.host:ui.port over that store and its
artifacts, in the foreground until Ctrl-C (ui.foreground=false: in the background, its pid
printed); with env.tracking_uri set, that server already has a UI: its address is printed.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import List

from omegaconf import DictConfig

from mnistops.errors import MnistopsError
from mnistops.stages import StageResult


def server_command(cfg: DictConfig) -> List[str]:
    from mnistops import layout, tracking

    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking.tracking_uri(cfg),
            "--default-artifact-root", layout.artifacts_dir(cfg).as_uri(),
            "--host", cfg.ui.host, "--port", str(cfg.ui.port), "--workers", "1"]


def port_taken(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0


def wait_until_ready(proc: subprocess.Popen, url: str, timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:]) if log.is_file() else ""
            raise MnistopsError(f"the MLflow UI exited with code {proc.returncode} before answering ({log}):\n{tail}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    proc.terminate()
    raise MnistopsError(f"the MLflow UI did not answer at {url} within ui.startup_timeout_s={timeout_s} (log: {log})")


def _announce(cfg: DictConfig, store: Path, url: str, log: Path) -> None:
    print(f"MLflow UI for env {cfg.env.name} ({store}): {url}")
    print(f"  registered models: {url}/#/models   server log: {log}")


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def run(cfg: DictConfig) -> StageResult:
    from mnistops import layout

    if cfg.env.tracking_uri:
        print(f"env {cfg.env.name} tracks to {cfg.env.tracking_uri}: its runs and registry are in that server's UI")
        return StageResult("ui", artifacts={"url": cfg.env.tracking_uri})
    store = layout.tracking_db(cfg)
    if not store.is_file():
        raise MnistopsError(f"env {cfg.env.name!r} has no MLflow store yet ({store}): run a stage in it first, "
                            f"e.g. python -m mnistops env={cfg.env.name}")
    if port_taken(cfg.ui.host, cfg.ui.port):
        raise MnistopsError(f"ui.port={cfg.ui.port} is already in use on {cfg.ui.host}: pick another, "
                            f"e.g. ui.port={cfg.ui.port + 1}")
    url = f"http://{cfg.ui.host}:{cfg.ui.port}"
    log = layout.ui_log(cfg)
    if cfg.ui.foreground and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)  # `kill <pid>` stops it as cleanly as Ctrl-C, at any moment
    with open(log, "ab") as out:  # the server's own request log: there, not on the terminal
        proc = subprocess.Popen(server_command(cfg), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=not cfg.ui.foreground)
    try:
        wait_until_ready(proc, url, cfg.ui.startup_timeout_s, log)
    except BaseException:
        proc.kill()
        raise
    if not cfg.ui.foreground:
        _announce(cfg, store, url, log)
        print(f"  running in the background as pid {proc.pid}; stop it with: kill {proc.pid}")
        return StageResult("ui", artifacts={"url": url, "pid": str(proc.pid), "log": str(log)})
    try:  # from here a Ctrl-C, even one pressed while the address is printed, stops the server
        _announce(cfg, store, url, log)
        print("  Ctrl-C stops it")
        proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        print("MLflow UI stopped")
    return StageResult("ui", artifacts={"url": url, "log": str(log)})
