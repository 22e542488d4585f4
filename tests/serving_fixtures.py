"""Helpers shared by the tests that drive a real endpoint server from the outside (browser, OpenAPI
fuzzing, Postman collection): a registered model trained once per test session by the real
pipeline, an endpoint dir laid out as the deploy stage lays it out, and the server process.

Not a conftest: the test modules import what they use. ``registered_model`` memoises in this
module, so the model is trained once per session however many modules ask for it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, Optional

import httpx
import numpy as np
import pytest

from conftest import QUICK, REPO, free_port, fresh_home, mlflow_client, run_cli

KEY = "test-key-0123456789abcdef"  # the primary scoring key
KEY2 = "test-key2-fedcba9876543210"  # the secondary scoring key
ADMIN_KEY = "test-admin-key-00112233445566"
AUTH = {"Authorization": f"Bearer {KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}

_MODELS: Dict[str, Path] = {}


def registered_model(tmp_path_factory, data_cache: Path) -> Path:
    """``models:/mnist-classifier@candidate`` trained and registered by the real pipeline (QUICK: a logreg
    good enough, ~90 %, to read a test image and a drawn "1" or "7"), downloaded as the deploy stage does
    it; made once per test session."""
    if "candidate" in _MODELS:
        return _MODELS["candidate"]
    home = fresh_home(tmp_path_factory, data_cache, "served-model-home")
    run_cli(QUICK, home, check=True, timeout=600)
    import mlflow

    mlflow_client(home)
    dst = home / "downloaded"
    dst.mkdir()
    path = Path(mlflow.artifacts.download_artifacts("models:/mnist-classifier@candidate", dst_path=str(dst)))
    assert (path / "artifacts" / "model.onnx").is_file() and (path / "MLmodel").is_file()
    _MODELS["candidate"] = path
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, data_cache) -> Path:
    """The session's registered model, for the test modules that serve it (import this fixture)."""
    return registered_model(tmp_path_factory, data_cache)


@pytest.fixture(scope="module")
def mnist(data_cache):
    """The first 300 official test images and labels."""
    from mnistops.data.idx import read_idx

    images = read_idx(data_cache / "mnist" / "t10k-images-idx3-ubyte")[:300]
    labels = read_idx(data_cache / "mnist" / "t10k-labels-idx1-ubyte")[:300]
    return np.array(images), np.array(labels)


@contextlib.contextmanager
def azure_inference_server(model_dir: Path, log: Path, cwd: Path, startup_s: float = 180,
                           **extra_env: str) -> Iterator[str]:
    """Azure's inference server (azmlinfsrv, what managed online deployments run) serving
    mnistops/backends/azure/score.py on `model_dir` (AZUREML_MODEL_DIR) as version 1 on deployment
    blue; yields its URL once it answers, and stops it after."""
    port = free_port()
    env = {**os.environ, "AZUREML_MODEL_DIR": str(model_dir), "MNISTOPS_MODEL_NAME": "mnist-classifier",
           "MNISTOPS_MODEL_VERSION": "1", "MNISTOPS_DEPLOYMENT": "blue", **extra_env}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "azureml_inference_server_http.amlserver", "--entry_script",
                                 str(REPO / "mnistops/backends/azure/score.py"), "--port", str(port),
                                 "--worker_count", "1"],
                                cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"azmlinfsrv exited {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"azmlinfsrv did not start:\n{log.read_text()[-3000:]}"
            time.sleep(0.2)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def server_settings(name: str = "mnist", port: Optional[int] = None, **overrides):
    """The server's settings from EndpointConfig's defaults (the one place they live), as the deploy
    side writes them; ``overrides``: endpoint keys (``workers=1``) or ``collect_<key>=…``."""
    from omegaconf import OmegaConf

    from mnistops.config import EndpointConfig
    from mnistops.serving.settings import ServerSettings

    ep = OmegaConf.to_container(OmegaConf.structured(EndpointConfig), resolve=True)
    ep.update(port=port or free_port(), workers=2)
    for key, value in overrides.items():
        if key.startswith("collect_"):
            ep["collect"][key[len("collect_"):]] = value
        else:
            ep[key] = value
    return ServerSettings.from_endpoint(ep, name, "dev")


def write_key(path: Path, key: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, (key + "\n").encode())
    os.close(fd)


def make_endpoint(root: Path, model_dir: Path, name: str = "mnist", port: Optional[int] = None, **server) -> Path:
    """The endpoint dir as the deploy stage lays it out: server.json, the three keys (0600), models/,
    state.json with blue = the model, taking all traffic. Two workers unless ``workers=`` says otherwise."""
    d = root / "dev" / "endpoints" / name
    (d / "models").mkdir(parents=True)
    server_settings(name, port, **server).write(d)
    for which, key in (("primary", KEY), ("secondary", KEY2), ("admin", ADMIN_KEY)):
        write_key(d / f"{which}.key", key)
    blue = d / "models" / "mnist-classifier-v1"
    shutil.copytree(model_dir, blue)
    state = {"deployments": {"blue": {"model_name": "mnist-classifier", "version": "1",
                                      "model_uri": "models:/mnist-classifier/1", "path": str(blue),
                                      "loaded_at": "2025-01-01T00:00:00+00:00"}},
             "traffic": {"blue": 100}, "mirror_traffic": {}, "previous": None}
    (d / "state.json").write_text(json.dumps(state))
    return d


def metric(text: str, name: str, **labels) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)(\{(.*)\})? ([-+\d.eE]+|NaN|[+-]Inf)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        if all(got.get(k) == str(v) for k, v in labels.items()):
            total += float(m.group(4))
    return total


def worker_pids(endpoint_dir: Path) -> list:
    """The workers that joined (loaded the state, registered their control port) and are alive."""
    from mnistops.serving.cluster import process_alive

    out = []
    for path in (endpoint_dir / "run" / "workers").glob("*.json"):
        try:
            pid = int(path.stem)
        except ValueError:
            continue
        if process_alive(pid):
            out.append(pid)
    return sorted(out)


def master_pid(endpoint_dir: Path) -> Optional[int]:
    try:
        return json.loads((endpoint_dir / "run" / "supervisor.json").read_text())["master_pid"]
    except (OSError, ValueError, KeyError):
        return None


class ServerProcess:
    """``python -m mnistops.serving --endpoint-dir DIR`` (the supervisor) as the deploy stage starts it."""

    def __init__(self, endpoint_dir: Path):
        self.dir = endpoint_dir
        cfg = json.loads((endpoint_dir / "server.json").read_text())
        self.url = f"http://{cfg['host']}:{cfg['port']}"
        self.workers = cfg["workers"]
        self.proc: Optional[subprocess.Popen] = None

    def start(self, timeout: float = 60, wait_for: str = "/ready") -> "ServerProcess":
        """Start it; wait until `wait_for` answers 200 (/health: up, even with a broken deployment)
        and every worker has joined."""
        log = open(self.dir / "server.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "mnistops.serving", "--endpoint-dir", str(self.dir)],
                                     cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        log.close()
        self.wait_serving(timeout, wait_for)
        return self

    def wait_serving(self, timeout: float = 60, wait_for: str = "/ready", exclude=()) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                pids = [p for p in worker_pids(self.dir) if p not in exclude]
                if len(pids) >= self.workers and httpx.get(self.url + wait_for, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"server not serving with {self.workers} workers in {timeout}s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return (self.dir / "server.log").read_text(errors="replace")

    def client(self, key: bool = True, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=AUTH if key else {}, timeout=30, **kw)

    def admin(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=ADMIN, timeout=120, **kw)

    def stop(self) -> Optional[int]:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.kill9()
        return None if self.proc is None else self.proc.returncode

    def kill9(self) -> None:
        """The whole server dies at once (supervisor, master, workers), like a crashed machine."""
        master = master_pid(self.dir)
        self.proc.kill()
        self.proc.wait()
        if master:
            try:
                os.killpg(master, signal.SIGKILL)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and worker_pids(self.dir):
                time.sleep(0.05)


def server_errors_logged(srv: ServerProcess) -> list:
    """Lines of the server log that record an internal error (a 500 or a traceback)."""
    return [line for line in srv.log().splitlines() if "internal error" in line or "Traceback" in line]
