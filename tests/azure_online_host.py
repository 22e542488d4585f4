"""A managed online deployment runs as Azure ML runs it (issue #17 item 2): when the stand-in workspace
(tests/azure_workspace.py) takes a deployment's PUT, `OnlineHost` does what Azure ML does with it,
from what the deployment names and nothing else:

- the environment: a fresh virtualenv built from ONLY the inference environment version's conda file
  (tests/azure_job_executor.py's JobVenvs: `pip --no-index` from the wheel cache): a package score.py
  imports that the spec lacks is not there;
- the code: the code version the deployment's code_configuration names, downloaded from Azurite, and
  its scoring_script as AZUREML_ENTRY_SCRIPT;
- the model: the model version's files (a `runs:/<run>/model` source read from the workspace's MLflow,
  or a folder of the workspace's datastore) under AZUREML_MODEL_DIR, as Azure mounts them;
- Azure's inference server, `azmlinfsrv`, from that virtualenv, with the deployment's
  environment_variables, and nothing of the test process's environment; where the deployment's
  data_collector enables collections, azureml-ai-monitoring's config and the collector's address (a
  sink per deployment, which `flush_collected` writes to Azurite as the collector sidecar does). The PUT is answered at once
  with provisioningState Creating, which azure-ai-ml's poller reads again until it is Succeeded (the
  server's readiness route answers) or Failed (it exited or never answered; `get_logs` returns its
  log), as Azure answers a deployment whose container does not start.

In front of the deployments, the endpoint's scoring URI (`ScoringFront`): key auth (`Authorization:
Bearer <primary or secondary key>`, else 401), the `azureml-model-deployment` header to pin a
deployment (404 for one that is not there), else the endpoint's traffic split (weighted), the mirror
split's copy sent on and its answer discarded, and `azureml-model-deployment` on every answer.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from azure_job_executor import EnvironmentSpec, JobVenvs, WorkspaceFiles
from azure_proxy import reply
from conftest import free_port

KEYS = ("primary-key-1", "secondary-key-1")  # what the stand-in's listkeys answers
DEPLOYMENT = r"onlineendpoints/([^/]+)/deployments/([^/]+)"


@dataclass
class RunningDeployment:
    endpoint: str
    name: str
    venv: Path
    port: int
    log: Path
    proc: subprocess.Popen
    sink: Optional["CollectorSink"] = None  # the data collector's address, when the deployment collects
    flushed: int = 0  # posts the sidecar has written to storage

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class OnlineHost(WorkspaceFiles):
    """Runs the online deployments PUT to `ws` (a FakeWorkspace served by `stand_in`) under `root`,
    and serves their endpoints' scoring URIs."""

    def __init__(self, stand_in, ws, venvs: JobVenvs, root: Path, startup_s: float = 180):
        super().__init__(stand_in, ws)
        self.venvs, self.root, self.startup_s = venvs, root, startup_s
        self.running: Dict[Tuple[str, str], RunningDeployment] = {}
        self.failed: Dict[Tuple[str, str], str] = {}  # why a deployment did not start
        self.threads: List[threading.Thread] = []
        self.stopped: List[RunningDeployment] = []  # their collected data may still be unwritten
        self._store = None  # the workspace's blob container in Azurite, where the sidecar writes
        self.front = ScoringFront(self)
        ws.scoring_base = f"http://127.0.0.1:{self.front.port}/{{name}}"  # one scoring URI per endpoint
        ws.on("PUT", DEPLOYMENT, self._deploy)
        ws.on("DELETE", DEPLOYMENT, self._delete)
        ws.on("POST", DEPLOYMENT + "/getlogs", self._logs)

    # ---------------------------------------------------------------- ARM side (under the front's lock)
    def _deploy(self, recorded) -> tuple:
        """Stored as Creating, as Azure answers; the container starts in a thread of its own, then the
        state the SDK polls for becomes Succeeded or Failed."""
        status, _ = self.ws._put(recorded)
        endpoint, name = re.fullmatch(DEPLOYMENT, self.ws.relative(recorded.path)).groups()
        stored = self.ws.resources[recorded.path]
        stored["properties"]["provisioningState"] = "Creating"
        thread = threading.Thread(target=self._provision, args=(recorded.path, endpoint, name,
                                                                json.loads(json.dumps(stored["properties"]))),
                                  daemon=True, name=f"azure-deployment-{endpoint}-{name}")
        self.threads.append(thread)
        thread.start()
        return status, self.ws._view(recorded.path)

    def _provision(self, path: str, endpoint: str, name: str, props: dict) -> None:
        self._stop(endpoint, name)
        try:
            self.running[(endpoint, name)] = self._start(endpoint, name, props)
            self.failed.pop((endpoint, name), None)
            state = "Succeeded"
        except Exception as exc:  # noqa: BLE001 (Azure fails the deployment; its log says why)
            self.failed[(endpoint, name)] = f"{type(exc).__name__}: {exc}"
            state = "Failed"
        with self.stand_in.front.lock:
            if path in self.ws.resources:
                self.ws.resources[path]["properties"]["provisioningState"] = state

    def _delete(self, recorded) -> tuple:
        endpoint, name = re.fullmatch(DEPLOYMENT, self.ws.relative(recorded.path)).groups()
        self._stop(endpoint, name)
        return (200, None) if self.ws.resources.pop(recorded.path, None) is not None else (204, None)

    def _logs(self, recorded) -> tuple:
        endpoint, name = re.fullmatch(DEPLOYMENT + "/getlogs", self.ws.relative(recorded.path)).groups()
        lines = int((recorded.body or {}).get("tail") or 100)
        running = self.running.get((endpoint, name))
        text = running.log.read_text(errors="replace") if running else self.failed.get((endpoint, name), "")
        return 200, {"content": "\n".join(text.splitlines()[-lines:])}

    # ---------------------------------------------------------------- the deployment's container
    def _start(self, endpoint: str, name: str, props: dict) -> RunningDeployment:
        base = self.root / endpoint / name
        shutil.rmtree(base, ignore_errors=True)  # a fresh container: nothing of the slot's last deployment
        conda = self._resource(props["environmentId"])["properties"]["condaFile"]
        venv = self.venvs.venv(EnvironmentSpec.from_conda(conda))
        code = props["codeConfiguration"]
        self._download_code(code["codeId"], base / "code")
        model_dir = self._download_model(props["model"], base / "azureml-models")
        port, log = free_port(), base / "server.log"
        sink, collect = self._collector(props.get("dataCollector") or {}, base)
        env = {"PATH": f"{venv / 'bin'}{os.pathsep}{os.defpath}", "HOME": str(base), "LANG": "C.UTF-8",
               "AML_APP_ROOT": str(base / "code"), "AZUREML_ENTRY_SCRIPT": str(base / "code" / code["scoringScript"]),
               "AZUREML_MODEL_DIR": str(model_dir), **collect, **(props.get("environmentVariables") or {})}
        with open(log, "wb") as out:
            proc = subprocess.Popen([str(venv / "bin" / "azmlinfsrv"), "--entry_script", env["AZUREML_ENTRY_SCRIPT"],
                                     "--port", str(port)], cwd=base / "code",
                                    env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        running = RunningDeployment(endpoint, name, venv, port, log, proc, sink)
        deadline = time.monotonic() + self.startup_s
        while not self._ready(running):
            if proc.poll() is not None or time.monotonic() > deadline:
                self._kill(running)
                raise RuntimeError(f"the container of {name} did not become ready:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        return running

    @staticmethod
    def _collector(spec: dict, base: Path) -> Tuple[Optional["CollectorSink"], Dict[str, str]]:
        """The deployment's data collector: azureml-ai-monitoring's config (AZUREML_MDC_CONFIG_PATH) from
        the spec's enabled collections and their sampling rates, and the collector's address
        (AZUREML_MDC_HOST/PORT), here a sink of this deployment's own that flush_collected writes out."""
        enabled = {name: c for name, c in (spec.get("collections") or {}).items()
                   if str(c.get("dataCollectionMode", "")).lower() == "enabled"}
        if not enabled:
            return None, {}
        config = {"runMode": "cloud", "collections": {
            name: {"enabled": True, "sampleRatePercentage": 100 * float(c.get("samplingRate") or 1.0)}
            for name, c in enabled.items()}}
        (base / "mdc.json").write_text(json.dumps(config))
        sink = CollectorSink()
        return sink, {"AZUREML_MDC_CONFIG_PATH": str(base / "mdc.json"), "AZUREML_MDC_HOST": "127.0.0.1",
                      "AZUREML_MDC_PORT": str(sink.port)}

    def flush_collected(self) -> int:
        """The collector sidecar's part: what each deployment's Collector posted since the last flush,
        appended to the hourly JSON-lines files of the workspace's blob datastore (Azurite), in Azure's
        documented record format (tests/azure_workspace.py's sidecar_records). Returns the posts written."""
        from azure_proxy import AzuriteStore
        from azure_workspace import sidecar_records, write_collector_files

        if self._store is None:
            self._store = AzuriteStore(self.stand_in, self.ws)
        written = 0
        for deployment in [*self.running.values(), *self.stopped]:
            if deployment.sink is None:
                continue
            posts = list(deployment.sink.posts)[deployment.flushed:]
            deployment.flushed += len(posts)
            write_collector_files(self._store, deployment.endpoint, deployment.name,
                                  sidecar_records(posts, deployment.endpoint, deployment.name))
            written += len(posts)
        return written

    def _download_model(self, model_id: str, target: Path) -> Path:
        """The model version's files where Azure mounts them: AZUREML_MODEL_DIR/<name>/<version>/."""
        props = self._resource(model_id)["properties"]
        found = re.search(r"/models/([^/]+)/versions/([^/]+)$", model_id)
        into = target / found.group(1) / found.group(2)
        uri = props["modelUri"]
        run = re.fullmatch(r"runs:/([^/]+)/(.+)", uri)
        if run:  # an MLflow run's files: Azure copies them from where run history keeps them
            into.mkdir(parents=True, exist_ok=True)
            self.run_files(run.group(1), run.group(2), into)
            return into
        store, path = re.search(r"/datastores/([^/]+)/paths/(.+)$", uri).groups()
        datastore = self.ws.resource(f"datastores/{store}")["properties"]
        self._download(datastore["accountName"], datastore["containerName"], path, into)
        return into

    @staticmethod
    def _ready(running: RunningDeployment) -> bool:
        try:
            with urllib.request.urlopen(f"{running.url}/", timeout=2) as answer:
                return answer.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _stop(self, endpoint: str, name: str) -> None:
        running = self.running.pop((endpoint, name), None)
        if running is not None:
            self._kill(running)
            self.stopped.append(running)

    @staticmethod
    def _kill(running: RunningDeployment) -> None:
        if running.proc.poll() is None:
            os.killpg(running.proc.pid, signal.SIGTERM)
            try:
                running.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(running.proc.pid, signal.SIGKILL)
                running.proc.wait()

    # ---------------------------------------------------------------- routing
    def route(self, endpoint: str, pinned: Optional[str]) -> Tuple[Optional[RunningDeployment], List[RunningDeployment]]:
        """(the deployment that answers, the mirror copies' deployments) of one request."""
        with self.stand_in.front.lock:
            found = self.ws.resource(f"onlineendpoints/{endpoint}")
            props = dict(found["properties"]) if found else {}
        if pinned:
            return self.running.get((endpoint, pinned)), []
        split = {k: v for k, v in (props.get("traffic") or {}).items() if v > 0}
        if not split:
            return None, []
        chosen = random.choices(list(split), weights=list(split.values()))[0]
        mirrors = [self.running[(endpoint, d)] for d, pct in (props.get("mirrorTraffic") or {}).items()
                   if pct > 0 and random.uniform(0, 100) < pct and (endpoint, d) in self.running]
        return self.running.get((endpoint, chosen)), mirrors

    def stop(self) -> None:
        self.front.stop()
        for thread in self.threads:
            thread.join(self.startup_s)
        for key in list(self.running):
            self._stop(*key)
        for deployment in self.stopped:
            if deployment.sink is not None:
                deployment.sink.close()


class ScoringFront:
    """The endpoints' scoring URIs: http://127.0.0.1:<port>/<endpoint>/score."""

    PASSED = ("content-type", "x-request-id", "x-ms-client-request-id")

    def __init__(self, host: OnlineHost):
        self.port = free_port()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def refuse(self, status: int, message: str) -> None:
                reply(self, status, [("Content-Type", "application/json")], json.dumps({"message": message}).encode())

            def do_POST(self):  # noqa: N802  (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                found = re.fullmatch(r"/([^/]+)/score", self.path.split("?")[0])
                if not found:
                    return self.refuse(404, f"no route {self.path}")
                if self.headers.get("Authorization", "") not in {f"Bearer {k}" for k in KEYS}:
                    return self.refuse(401, "key-based authentication: the request has no valid key")
                pinned = self.headers.get("azureml-model-deployment")
                target, mirrors = host.route(found.group(1), pinned)
                if target is None:
                    return self.refuse(404, f"deployment {pinned} is not there" if pinned else
                                       "No valid deployments to route to. Please check that the endpoint has at least "
                                       "one deployment with positive weight values or use a deployment specific "
                                       "header to route.")
                headers = {k: v for k, v in self.headers.items() if k.lower() in ScoringFront.PASSED}
                for mirror in mirrors:  # the copy's answer is discarded, as Azure discards it
                    threading.Thread(target=forward, args=(mirror, body, headers), daemon=True).start()
                status, answer, answer_headers = forward(target, body, headers)
                answer_headers["azureml-model-deployment"] = target.name
                reply(self, status, answer_headers.items(), answer)

        class Server(ThreadingHTTPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def forward(target: RunningDeployment, body: bytes, headers: Dict[str, str]) -> Tuple[int, bytes, Dict[str, str]]:
    request = urllib.request.Request(f"{target.url}/score", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, answer.read(), {"Content-Type": answer.headers.get("Content-Type", "")}
    except urllib.error.HTTPError as err:
        return err.code, err.read(), {"Content-Type": err.headers.get("Content-Type", "")}


class CollectorSink:
    """The data collector's local address: keeps what the Collector posts ({"path", "headers", "body"})."""

    def __init__(self):
        posts: list = []
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802  (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with lock:
                    posts.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                                  "body": body})
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")

            def log_message(self, *args):
                pass

        self.posts = posts
        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def of(self, collection: str) -> list:
        return [p for p in list(self.posts) if p["headers"].get("ce-type") == f"azureml.inference.{collection}"]

    def rows(self, collection: str) -> list:
        return [row for p in self.of(collection) for row in json.loads(p["body"])]

    def wait(self, ready, what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            assert time.monotonic() < deadline, f"the collector did not send {what} within {timeout} s"
            time.sleep(0.1)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
