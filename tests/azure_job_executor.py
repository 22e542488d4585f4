"""A submitted command job runs as Azure ML runs it (issue #17 item 2): the stand-in workspace
(tests/azure_workspace.py, served through tests/azure_proxy.py) stores the job, and `JobExecutor`
then does what Azure ML's compute does with it, from what the job names and nothing else:

- the environment: a fresh virtualenv built from ONLY the environment version's own conda file (its
  python version and pip list), installed with `pip install --no-index --find-links <wheel cache>` and
  no pip configuration of this machine (PIP_CONFIG_FILE=/dev/null): a package the spec lacks is not
  there (issue #17 items 3 and 11). One venv per spec digest under a folder the test gives;
- the code: the code version's codeUri (a container + folder in the workspace's storage account, as
  azure-ai-ml uploaded it after startPendingUpload) downloaded from Azurite into a fresh working
  directory: what .amlignore left out is not there (item 10);
- the inputs: each uri_folder input's data asset downloaded from the datastore it points into, and
  `${{inputs.<name>}}` in the command replaced by its path (Azure mounts it; here a read-only copy);
- the command line as submitted (`bash -c`), in that directory, with the venv's python first on PATH,
  the job's environment variables and the ones Azure ML sets in a command job: MLFLOW_TRACKING_URI
  (the workspace's azureml://<region>.api.azureml.ms/... URI), MLFLOW_RUN_ID (= the job name; its run
  made in the workspace's MLflow before the job starts, as run history does), MLFLOW_EXPERIMENT_ID/NAME,
  MLFLOW_TRACKING_TOKEN, AZUREML_RUN_ID, AZUREML_ARM_SUBSCRIPTION/RESOURCEGROUP/WORKSPACE_NAME/
  PROJECT_NAME, AZUREML_SERVICE_ENDPOINT, AZURE_ML_INPUT_<name>, and the compute's managed identity
  (MSI_ENDPOINT + MSI_SECRET, which azure-identity's ManagedIdentityCredential reads on Azure ML
  compute: `MsiEndpoint` answers its token requests as the cluster's identity, e.g. "qa/cluster:cpu",
  whose roles infra/*.tf decides). Nothing of the test process's environment reaches the job except
  the stand-in's network (proxy, CA bundle): no `az` on PATH, no MNISTOPS_* or AZURE_* variables;
- run history: the job's status goes Queued -> Preparing (venv, downloads) -> Running -> Completed or
  Failed from the exit code, which `ml.jobs.stream` on the agent polls; its output is
  user_logs/std_log.txt in the workspace's storage (Azurite), listed in run history, so the agent prints
  it as it would Azure's; stdout/stderr are kept (`executor.jobs[name]`) for the test to read.

The wheel cache (.tools/wheels, git-ignored) is filled once, from the package index, with the same
spec: `python tests/azure_job_executor.py fill` (bash .ci/run does it).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Optional
from urllib.parse import parse_qs, urlparse

import pytest

REPO = Path(__file__).resolve().parents[1]
WHEELS = REPO / ".tools" / "wheels"
FILL = "python tests/azure_job_executor.py fill (bash .ci/run does it)"
TENANT = "00000000-0000-0000-0000-0000000000aa"


class WheelMissing(AssertionError):
    """The wheel cache lacks a distribution the job environment's spec needs."""


# ----------------------------------------------------------------------------- the environment

@dataclass(frozen=True)
class EnvironmentSpec:
    """What an environment version's conda file asks for: a python version and a pip list."""
    python: str
    pip: tuple

    @classmethod
    def from_conda(cls, conda_file) -> "EnvironmentSpec":
        import yaml

        spec = yaml.safe_load(conda_file) if isinstance(conda_file, str) else conda_file
        python, pip, other = None, [], []
        for dep in spec.get("dependencies", []):
            if isinstance(dep, dict) and "pip" in dep:
                pip += [str(p) for p in dep["pip"]]
            elif isinstance(dep, str) and re.fullmatch(r"python\s*[=<>]*\s*[\d.]+", dep):
                python = re.sub(r"^python\s*=*\s*", "", dep)
            elif dep != "pip":
                other.append(dep)
        if python is None:
            raise AssertionError(f"the environment's conda file names no python version: {spec}")
        if other:  # nothing here installs conda packages: say so rather than skip them
            raise AssertionError(f"the environment's conda file asks for conda packages {other}: the stand-in "
                                 "builds pip lists only")
        return cls(python, tuple(pip))

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps([self.python, list(self.pip)]).encode()).hexdigest()[:16]


def interpreter(version: str) -> str:
    """A python of the spec's version on this machine (the base of this venv first)."""
    base = getattr(sys, "_base_executable", sys.executable)
    if f"{sys.version_info.major}.{sys.version_info.minor}" == version:
        return base
    found = shutil.which(f"python{version}")
    if not found:
        raise AssertionError(f"the job environment asks for python={version}, which this machine lacks")
    return found


def missing_wheel(pip_output: str) -> Optional[str]:
    """The requirement pip found no wheel for, from its error output."""
    found = re.search(r"No matching distribution found for (\S+)", pip_output)
    return found.group(1) if found else None


KEEP_VENVS = 2  # built venvs kept besides the one being built
# where the job venvs live between runs (git-ignored): one build per spec digest, the older ones removed
VENVS = Path(os.environ.get("MNISTOPS_JOB_VENVS") or REPO / ".tools" / "job-venvs")


class JobVenvs:
    """Virtualenvs built from job environments' specs, one per spec digest under `root`, from the
    wheels in `wheels` only (pip sees no index and no configuration of this machine)."""

    def __init__(self, root: Path, wheels: Path = WHEELS):
        self.root, self.wheels = root, wheels
        root.mkdir(parents=True, exist_ok=True)
        self.built: List[str] = []  # digests built by this process (the rest were already there)

    def venv(self, spec: EnvironmentSpec) -> Path:
        target = self.root / spec.digest
        if (target / ".built").is_file():
            (target / ".built").touch()  # in use (see _build's clean-up)
            return target
        with open(self.root / f".{spec.digest}.lock", "w") as lock:  # two test processes, one build
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (target / ".built").is_file():
                self._build(spec, target)
                self.built.append(spec.digest)
        return target

    def _build(self, spec: EnvironmentSpec, target: Path) -> None:
        if not self.wheels.is_dir() or not any(self.wheels.glob("*.whl")):
            raise WheelMissing(f"the job wheel cache {self.wheels} is empty: {FILL}")
        # ~6 GB each (PyPI's torch carries CUDA): the two used last stay, the older ones go, so that a
        # checkout whose dependencies change often does not fill its disk
        used = sorted(self.root.glob("*/.built"), key=lambda built: built.stat().st_mtime, reverse=True)
        for older in used[KEEP_VENVS:]:
            shutil.rmtree(older.parent, ignore_errors=True)
        shutil.rmtree(target, ignore_errors=True)
        subprocess.run([interpreter(spec.python), "-m", "venv", str(target)], check=True, capture_output=True)
        (target / "requirements.txt").write_text("\n".join(spec.pip) + "\n")
        env = {"PATH": f"{target / 'bin'}{os.pathsep}{os.defpath}", "HOME": str(target),
               "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        proc = subprocess.run([str(target / "bin" / "python"), "-m", "pip", "install", "-q", "--no-compile",
                               "--no-index", "--find-links", str(self.wheels), "-r", str(target / "requirements.txt")],
                              env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            shutil.rmtree(target, ignore_errors=True)
            wanted = missing_wheel(proc.stderr + proc.stdout)
            if wanted:
                raise WheelMissing(f"the job wheel cache {self.wheels} has no wheel for {wanted}, which the job "
                                   f"environment's spec needs: {FILL}")
            raise AssertionError(f"pip could not build the job environment {spec.digest}:\n{proc.stderr[-3000:]}")
        (target / ".built").write_text(json.dumps({"python": spec.python, "pip": list(spec.pip)}, indent=1))

    @staticmethod
    def installed(venv: Path) -> Dict[str, str]:
        """{canonical name: version} of what the venv holds (its own pip's view)."""
        out = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format=json"],
                             env={"PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1",
                                  "PATH": os.defpath}, capture_output=True, text=True, check=True).stdout
        return {re.sub(r"[-_.]+", "-", p["name"]).lower(): p["version"] for p in json.loads(out)}


@pytest.fixture(scope="session")
def job_venvs() -> JobVenvs:
    """The session's JobVenvs (a fixture: tests import it): an empty wheel cache skips here and fails
    in CI, like a missing tool."""
    from conftest import needs_tool

    if not any(WHEELS.glob("*.whl")):
        needs_tool(f"the job wheel cache {WHEELS} is empty: {FILL}")
    return JobVenvs(VENVS, WHEELS)


def fill_wheel_cache(requirements: List[str], wheels: Path = WHEELS) -> None:
    """Download the wheels of `requirements` (and their dependencies) into `wheels`, from the package
    index this machine's pip uses; a distribution published only as an sdist is built into a wheel
    there, so that a job venv never builds anything."""
    wheels.mkdir(parents=True, exist_ok=True)
    listed, done = wheels / ".requirements.txt", wheels / ".filled"
    if done.is_file() and done.read_text() == "\n".join(requirements) + "\n":
        return  # filled for exactly this list before
    listed.write_text("\n".join(requirements) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "-d", str(wheels),
                    "-r", str(listed)], check=True)
    for sdist in [p for p in wheels.iterdir() if p.name.endswith((".tar.gz", ".zip"))]:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps",
                        "-w", str(wheels), str(sdist)], check=True)
        sdist.unlink()
    done.write_text(listed.read_text())


def job_requirements() -> List[str]:
    """The pip lists of the environments the flavour creates (training and online scoring)."""
    from mnistops.backends.azure import environments

    return environments.train_requirements() + environments.pinned(environments.INFERENCE) + \
        environments.INFERENCE_SERVER


# ----------------------------------------------------------------------------- the compute's identity

def entra_jwt(principal: str, audience: str) -> str:
    """An unsigned JWT of Entra ID's shape naming `principal` (claim xms_mnistops_principal): what
    Azurite's basic OAuth reads (iss, aud, nbf, exp) and what azureml-mlflow decodes a job's
    MLFLOW_TRACKING_TOKEN for (its exp)."""
    import base64

    now = int(time.time())
    b64 = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()  # noqa: E731
    return b64({"alg": "none", "typ": "JWT"}) + "." + b64({
        "aud": audience, "iss": f"https://sts.windows.net/{TENANT}/", "iat": now, "nbf": now - 60,
        "exp": now + 3600, "tid": TENANT, "xms_mnistops_principal": principal}) + "."


def token_for_resource(principal: str, resource: str) -> str:
    """The token Entra ID would give `principal` for `resource`, in the stand-in's formats: azure_rbac's
    for ARM and the workspace (the fake reads the principal from it), a JWT for storage (as the
    stand-in az does)."""
    from azure_rbac import TOKEN_PREFIX

    if "storage.azure.com" in resource:
        return entra_jwt(principal, "https://storage.azure.com")
    return TOKEN_PREFIX + principal


class MsiEndpoint:
    """The managed identity endpoint of Azure ML compute (MSI_ENDPOINT, header `secret: MSI_SECRET`,
    api-version 2017-09-01, `resource=`): answers as `principal`. `asked` lists the resources asked for."""

    def __init__(self, principal: str):
        from conftest import free_port

        self.principal, self.secret, self.port = principal, uuid.uuid4().hex, free_port()
        self.asked: List[str] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                query = {k: v[0] for k, v in parse_qs(urlparse(self.path).query).items()}
                if self.headers.get("secret") != endpoint.secret or "resource" not in query:
                    body, status = {"error": "invalid_request", "error_description": "secret or resource missing"}, 400
                else:
                    endpoint.asked.append(query["resource"])
                    expires = int(time.time()) + 3600
                    body, status = {"access_token": token_for_resource(endpoint.principal, query["resource"]),
                                    "expires_on": str(expires), "resource": query["resource"],
                                    "token_type": "Bearer"}, 200
                content = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def environment(self) -> Dict[str, str]:
        return {"MSI_ENDPOINT": f"http://127.0.0.1:{self.port}/MSI/auth", "MSI_SECRET": self.secret}

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ----------------------------------------------------------------------------- running a job

@dataclass
class ExecutedJob:
    name: str
    command: str
    workdir: Path
    venv: Optional[Path] = None
    env: Dict[str, str] = field(default_factory=dict)
    returncode: Optional[int] = None
    error: Optional[str] = None  # why it failed before its command ran (a missing wheel, code, input)
    statuses: List[str] = field(default_factory=list)

    @property
    def stdout(self) -> str:
        path = self.workdir.parent / "std_log.txt"
        return path.read_text(errors="replace") if path.is_file() else ""

    @property
    def stderr(self) -> str:
        path = self.workdir.parent / "std_err.txt"
        return path.read_text(errors="replace") if path.is_file() else ""


class WorkspaceFiles:
    """What Azure ML's compute reads from the workspace before it runs anything: resources by ARM id,
    and files from the workspace's storage account (Azurite, reached directly with the account key)."""

    def __init__(self, stand_in, ws):
        self.stand_in, self.ws = stand_in, ws

    def _resource(self, arm_id: str) -> dict:
        found = self.ws.resources.get(arm_id.lower().rstrip("/"))
        if found is None:
            raise AssertionError(f"{arm_id} is not in the workspace (a job or deployment names it)")
        return found

    def _container(self, account: str, container: str):
        """A ContainerClient of Azurite reached directly (account key; the test process's side)."""
        from azure.storage.blob import ContainerClient

        from azure_proxy import account_key

        return ContainerClient(f"https://127.0.0.1:{self.stand_in.azurite.port}/{account}", container,
                               credential={"account_name": account, "account_key": account_key(account)},
                               connection_verify=str(self.stand_in.authority.ca_file))

    def _download(self, account: str, container: str, folder: str, target: Path) -> int:
        client, count = self._container(account, container), 0
        prefix = folder.strip("/") + "/"
        for blob in client.list_blobs(name_starts_with=prefix):
            path = target / blob.name[len(prefix):]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(client.download_blob(blob.name).readall())
            count += 1
        if not count:
            raise AssertionError(f"nothing under {account}/{container}/{prefix}")
        return count

    def run_files(self, run_id: str, path: str, into: Path) -> Path:
        """A run's file, or folder, `path` where run history keeps it (the workspace's storage:
        tests/azure_run_artifacts.py), downloaded to `into/path`, which it returns: what a deployment
        copies, what a test reads."""
        from azure_run_artifacts import CONTAINER, blob_name

        account, name = self.ws.blobstore.account, blob_name(run_id, path)
        blob = self._container(account, CONTAINER).get_blob_client(name)
        if blob.exists():  # a file
            (into / path).parent.mkdir(parents=True, exist_ok=True)
            (into / path).write_bytes(blob.download_blob().readall())
        else:
            self._download(account, CONTAINER, name, into / path)
        return into / path

    def _download_code(self, code_id: str, target: Path) -> None:
        uri = self._resource(code_id)["properties"]["codeUri"]  # https://<account>.blob.core.windows.net/<c>/<folder>
        host, _, path = uri.split("://", 1)[1].partition("/")
        container, folder = path.split("/", 1)
        target.mkdir(parents=True, exist_ok=True)
        self._download(host.split(".")[0], container, folder, target)


class JobExecutor(WorkspaceFiles):
    """Runs the command jobs PUT to `ws` (a FakeWorkspace served by `stand_in`), each in a thread of
    its own, as the cluster's identity `principal` (azure_rbac's "<env>/cluster:<name>")."""

    def __init__(self, stand_in, ws, venvs: JobVenvs, root: Path, principal: Optional[str] = None,
                 timeout: float = 900):
        super().__init__(stand_in, ws)
        self.venvs, self.root, self.timeout = venvs, root, timeout
        self.principal = principal or f"{ws.env}/cluster:cpu"
        self.msi = MsiEndpoint(self.principal)
        self.jobs: Dict[str, ExecutedJob] = {}
        self.threads: List[threading.Thread] = []
        self.procs: List[subprocess.Popen] = []
        ws.on("PUT", r"jobs/[^/]+", self._submitted)

    # ---------------------------------------------------------------- ARM side
    def _submitted(self, recorded) -> tuple:
        """Store the job as ARM does (called under the front's lock), queue it, start it."""
        status, _ = self.ws._put(recorded)
        name = recorded.path.split("/")[-1]
        self._status(name, "Queued", locked=True)
        thread = threading.Thread(target=self._run, args=(name,), daemon=True, name=f"azure-job-{name}")
        self.threads.append(thread)
        thread.start()
        return status, self.ws._view(recorded.path)

    def _status(self, name: str, status: str, locked: bool = False) -> None:
        lock = contextlib.nullcontext() if locked else self.stand_in.front.lock
        with lock:
            self.ws.resource(f"jobs/{name}")["properties"]["status"] = status
        job = self.jobs.get(name)
        if job is not None:
            job.statuses.append(status)

    # ---------------------------------------------------------------- the compute side
    def _run(self, name: str) -> None:
        props = self.ws.resource(f"jobs/{name}")["properties"]
        base = self.root / name
        job = self.jobs[name] = ExecutedJob(name, props["command"], base / "wd", statuses=["Queued"])
        try:
            self._status(name, "Preparing")
            command = self._prepare(job, props, base)
            self._status(name, "Running")
            self._execute(job, command, base)
            self._end_run(name, job.returncode == 0)
        except Exception as exc:  # noqa: BLE001 (the job fails, as Azure fails one it cannot prepare or run)
            job.error = f"{type(exc).__name__}: {exc}"
            base.mkdir(parents=True, exist_ok=True)
            with open(base / "std_err.txt", "a") as err:
                err.write(job.error + "\n")
        try:
            self._publish_log(job)
        except Exception as exc:  # noqa: BLE001 (the log is a courtesy to the agent; the status is not)
            job.error = (job.error or "") + f" (its log could not be published: {type(exc).__name__}: {exc})"
        self._status(name, "Completed" if job.returncode == 0 and job.error is None else "Failed")

    def _publish_log(self, job: ExecutedJob) -> None:
        """user_logs/std_log.txt in the workspace's storage, listed in run history (logFiles, a SAS URL), as
        Azure ML's common runtime leaves it: what `ml.jobs.stream` prints on the agent. Published once,
        before the job's final status, so the agent's last poll prints all of it."""
        import datetime

        from azure.storage.blob import BlobSasPermissions, generate_blob_sas

        from azure_proxy import account_key

        account, container = self.ws.blobstore.account, "azureml"
        blob = f"ExperimentRun/dcid.{job.name}/user_logs/std_log.txt"
        client = self._container(account, container)
        if not client.exists():
            client.create_container()
        client.upload_blob(blob, (job.stdout + job.stderr).encode(), overwrite=True)
        sas = generate_blob_sas(account, container, blob, account_key=account_key(account),
                                permission=BlobSasPermissions(read=True),
                                expiry=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1))
        with self.stand_in.front.lock:
            self.ws.run_logs[job.name] = {"user_logs/std_log.txt":
                                          f"https://{self.ws.blobstore.host}/{container}/{blob}?{sas}"}

    def _prepare(self, job: ExecutedJob, props: dict, base: Path) -> str:
        """The venv, the code, the inputs, the environment: the command line to run."""
        base.mkdir(parents=True, exist_ok=True)
        env_props = self._resource(props["environmentId"])["properties"]
        job.venv = self.venvs.venv(EnvironmentSpec.from_conda(env_props["condaFile"]))
        self._download_code(props["codeId"], job.workdir)
        command, inputs = props["command"], {}
        for key, value in (props.get("inputs") or {}).items():
            inputs[key] = self._download_input(value, base / "inputs" / key)
            command = re.sub(r"\$\{\{\s*inputs\." + re.escape(key) + r"\s*\}\}", str(inputs[key]), command)
        job.env = self._environment(job.name, props, job.venv, base, inputs)
        return command

    def _execute(self, job: ExecutedJob, command: str, base: Path) -> None:
        with open(base / "std_log.txt", "wb") as out, open(base / "std_err.txt", "wb") as error:
            proc = subprocess.Popen(["bash", "-c", command], cwd=job.workdir, env=job.env, stdout=out, stderr=error,
                                    start_new_session=True)
            self.procs.append(proc)
            try:
                job.returncode = proc.wait(self.timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                job.returncode = proc.wait()
                job.error = f"ran past {self.timeout}s"

    def _end_run(self, name: str, ok: bool) -> None:
        """Run history ends the job's run (azureml-mlflow skips status updates of AZUREML_RUN_ID's run)."""
        from mlflow.tracking import MlflowClient

        MlflowClient(self.ws.mlflow_server.base_url).set_terminated(name, "FINISHED" if ok else "FAILED")

    def _download_input(self, value: dict, target: Path) -> Path:
        """A uri_folder input naming a data asset (azureml:<name>:<version> or its ARM id): the asset's
        folder in its datastore, copied to `target` and made read-only (Azure mounts it read-only)."""
        uri = value.get("uri", "")
        if value.get("jobInputType") not in ("uri_folder", "UriFolder", None):
            raise AssertionError(f"the stand-in runs uri_folder inputs only, not {value}")
        found = re.fullmatch(r"azureml:([^:/]+):([^:/]+)", uri)
        asset = (self.ws.resource(f"data/{found.group(1)}/versions/{found.group(2)}") if found
                 else self._resource(uri.removeprefix("azureml:")))
        if asset is None:
            raise AssertionError(f"the input's data asset {uri} is not in the workspace")
        data_uri = asset["properties"]["dataUri"]
        store, path = re.search(r"/datastores/([^/]+)/paths/(.+)$", data_uri).groups()
        datastore = self.ws.resource(f"datastores/{store}")["properties"]
        self._download(datastore["accountName"], datastore["containerName"], path, target)
        for folder, _, files in os.walk(target):
            for name in files:
                os.chmod(os.path.join(folder, name), 0o444)
        return target

    def _environment(self, name: str, props: dict, venv: Path, base: Path, inputs: Dict[str, Path]) -> Dict[str, str]:
        """What the job's process sees: the stand-in's network, the job's own variables, Azure ML's."""
        ws, server = self.ws, self.ws.mlflow_server
        experiment = props.get("experimentName") or "Default"
        experiment_id = self._mlflow_run(server, experiment, name, props.get("displayName") or name)
        home = base / "home"
        home.mkdir(parents=True, exist_ok=True)
        network = {k: v for k, v in self.stand_in.environment().items() if k != "PATH"}
        azure = {
            "AZUREML_RUN_ID": name, "AZUREML_ARM_SUBSCRIPTION": ws.subscription,
            "AZUREML_ARM_RESOURCEGROUP": ws.resource_group, "AZUREML_ARM_WORKSPACE_NAME": ws.workspace,
            "AZUREML_ARM_PROJECT_NAME": experiment, "AZUREML_EXPERIMENT_ID": experiment_id,
            "AZUREML_WORKSPACE_ID": ws.workspace_id,
            "AZUREML_SERVICE_ENDPOINT": f"https://{ws.location}.api.azureml.ms",
            "AZUREML_DISCOVERY_SERVICE_ENDPOINT": f"https://{ws.location}.api.azureml.ms/discovery",
            "MLFLOW_TRACKING_URI": ws.mlflow_uri, "MLFLOW_RUN_ID": name,
            "MLFLOW_EXPERIMENT_ID": experiment_id, "MLFLOW_EXPERIMENT_NAME": experiment,
            "MLFLOW_TRACKING_TOKEN": entra_jwt(self.principal, "https://ml.azure.com"),  # Azure's run token: a JWT
            **{f"AZURE_ML_INPUT_{key}": str(path) for key, path in inputs.items()},
            **self.msi.environment}
        return {"PATH": f"{venv / 'bin'}{os.pathsep}{os.defpath}", "HOME": str(home), "LANG": "C.UTF-8",
                "TMPDIR": str(self._tmp(base)), **network, **(props.get("environmentVariables") or {}), **azure}

    @staticmethod
    def _tmp(base: Path) -> Path:
        (base / "tmp").mkdir(parents=True, exist_ok=True)
        return base / "tmp"

    @staticmethod
    def _mlflow_run(server, experiment: str, run_id: str, display_name: str) -> str:
        """Run history makes the job's run before the job starts, its id the job's name: the experiment
        (made if new) and a RUNNING run in the workspace's MLflow, renamed in its store to `run_id`
        (MLflow's REST API picks its own ids). Returns the experiment id."""
        import sqlite3

        from mlflow.tracking import MlflowClient

        client = MlflowClient(server.base_url)
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(experiment)
        made = client.create_run(experiment_id, run_name=display_name).info.run_id
        with contextlib.closing(sqlite3.connect(server.root / "mlflow.db")) as db, db:
            db.execute("UPDATE runs SET run_uuid = ?, artifact_uri = replace(artifact_uri, ?, ?) WHERE run_uuid = ?",
                       (run_id, made, run_id, made))
            for table in ("tags", "params", "metrics", "latest_metrics"):
                db.execute(f"UPDATE {table} SET run_uuid = ? WHERE run_uuid = ?", (run_id, made))
        return experiment_id

    # ---------------------------------------------------------------- the test's side
    def report(self) -> str:
        """Each job's end and the tail of its output, for a failed assertion's message."""
        return "".join(f"\n--- job {job.name}: {job.error or ''} statuses {job.statuses}\n--- job stdout\n"
                       f"{job.stdout[-4000:]}\n--- job stderr\n{job.stderr[-6000:]}" for job in self.jobs.values())

    def wait(self, timeout: float = 900) -> None:
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def stop(self) -> None:
        """Stop the MSI endpoint and any job still running (a test that failed first)."""
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.msi.stop()


def main(argv: List[str]) -> int:
    if argv[:1] != ["fill"]:
        print("usage: python tests/azure_job_executor.py fill [WHEEL_DIR]   (the job environments' wheels)")
        return 2
    sys.path.insert(0, str(REPO))
    target = Path(argv[1]) if len(argv) > 1 else WHEELS
    fill_wheel_cache(job_requirements(), target)
    print(f"job wheel cache: {len(list(target.glob('*.whl')))} wheels in {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
