"""The workspace's MLflow as azureml-mlflow reaches it: a real `mlflow server` per workspace (sqlite
store in a tmp dir, 127.0.0.1), over TLS with a local certificate authority (trustme), answering at
the URL that azureml-mlflow derives from the workspace's `azureml://` tracking URI.

azureml-mlflow 1.62 (azureml/mlflow/_internal/utils.py, _store/azureml_reststore.py) turns
`azureml://<netloc>/mlflow/v1.0/<workspace scope>` into `https://<netloc>` + `/mlflow/v2.0` (its API
for MLflow 2 and 3) + `<workspace scope>`, then MLflow's REST paths (`/api/2.0/mlflow/...`). The
server's `--static-prefix` puts its REST API under exactly that prefix, so the tests reach it the way a
user's run does: `mlflow.set_tracking_uri("azureml://...")`, azureml-mlflow's store, its bearer token.

Tokens: azureml-mlflow signs every request with a token from azure-identity's default chain, which
reaches `AzureCliCredential`: `az account get-access-token` on PATH. `standin_az` writes an `az` that
answers that one command (as `AzureCLI@2` leaves a signed-in az on an agent). The server does not check
the token (MLflow's server has no bearer-token auth); Azure's MLflow would.

Cloud: azureml-mlflow asks management.azure.com for the cloud's metadata unless AZUREML_CURRENT_CLOUD
names a cloud it knows; the environment here names AzureCloud (there is no network to ask).

Artifacts: reached directly (this module alone), the server's default artifact root is a local folder
(file://) and run files go there through MLflow's local artifact repository. Behind the Azure stand-in
(tests/azure_proxy.py: AzureStandIn.attach_mlflow) a run's artifact URI is Azure's,
`azureml://<region>.api.azureml.ms/mlflow/v2.0/<scope>/experiments/<id>/runs/<run>/artifacts`
(`artifacts_as_azure`), so run files go through azureml-mlflow's artifact client, run history's
artifact routes (tests/azure_run_artifacts.py) and the workspace's storage in Azurite."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import pytest

from conftest import free_port

PROVIDER = "Microsoft.MachineLearningServices"
TOKEN = "agent-token"  # what the stand-in az hands out (the pipeline identity's sign-in)


def scope(subscription: str, resource_group: str, workspace: str) -> str:
    return f"/subscriptions/{subscription}/resourceGroups/{resource_group}/providers/{PROVIDER}/workspaces/{workspace}"


def unreachable(ws):
    """Point a FakeWorkspace's mlflowTrackingUri at a port where nothing listens: for tests of stages that
    must not touch MLflow (any call would fail them after MLflow's retries). Returns the workspace."""
    where = scope(ws.subscription, ws.resource_group, ws.workspace)
    ws.mlflow_uri = f"azureml://127.0.0.1:{free_port()}/mlflow/v1.0{where}"
    return ws


class Authority:
    """A local certificate authority: ca.pem for the clients, a server certificate for 127.0.0.1."""

    def __init__(self, root: Path):
        import trustme

        root.mkdir(parents=True, exist_ok=True)
        self.ca = trustme.CA()
        self.ca_file = root / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        cert = self.ca.issue_cert("127.0.0.1", "localhost")
        self.key_file, self.cert_file = root / "server-key.pem", root / "server-cert.pem"
        cert.private_key_pem.write_to_path(str(self.key_file))
        cert.cert_chain_pems[0].write_to_path(str(self.cert_file))
        for pem in cert.cert_chain_pems[1:]:
            with open(self.cert_file, "ab") as out:
                out.write(pem.bytes())


def standin_az(bin_dir: Path, token: str = TOKEN) -> Path:
    """An `az` that answers `az account get-access-token ... --output json` as the Azure CLI does
    (azure-identity's AzureCliCredential parses accessToken and expires_on); anything else fails."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    az = bin_dir / "az"
    az.write_text(
        "#!/bin/sh\n"
        "# a stand-in Azure CLI, signed in: only `az account get-access-token` (tests/azure_mlflow_server.py)\n"
        'if [ "$1 $2" != "account get-access-token" ]; then echo "stand-in az: only account get-access-token" >&2;'
        " exit 2; fi\n"
        "now=$(date +%s)\n"
        f'printf \'{{"accessToken": "%s", "expiresOn": "%s", "expires_on": %s, "subscription": "", '
        f'"tenant": "00000000-0000-0000-0000-0000000000aa", "tokenType": "Bearer"}}\\n\' '
        f'"${{STANDIN_AZ_TOKEN:-{token}}}" "$(date -d @$((now + 3600)) \'+%Y-%m-%d %H:%M:%S.000000\')" '
        '"$((now + 3600))"\n')
    az.chmod(0o755)
    return az


class WorkspaceMlflow:
    """`mlflow server` for one workspace: its tracking URI (azureml://), its https base URL."""

    def __init__(self, root: Path, authority: Authority, subscription: str, resource_group: str, workspace: str):
        self.root, self.authority = root, authority
        self.scope = scope(subscription, resource_group, workspace)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: Optional[subprocess.Popen] = None

    @property
    def tracking_uri(self) -> str:
        """What the workspace reports as mlflowTrackingUri (Azure: azureml://<region>.api.azureml.ms/...)."""
        return f"azureml://127.0.0.1:{self.port}/mlflow/v1.0{self.scope}"

    @property
    def base_url(self) -> str:
        """Where azureml-mlflow sends MLflow's REST calls for that URI."""
        return f"https://127.0.0.1:{self.port}/mlflow/v2.0{self.scope}"

    def start(self) -> "WorkspaceMlflow":
        log = open(self.root / "server.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--default-artifact-root", (self.root / "artifacts").as_uri(),
             "--static-prefix", f"/mlflow/v2.0{self.scope}",
             "--uvicorn-opts", f"--ssl-keyfile {self.authority.key_file} --ssl-certfile {self.authority.cert_file} "
                              "--timeout-graceful-shutdown 3"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            # no background job runner (scorers, trace archival): nothing here uses it
            env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
                 "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        log.close()
        return self

    def wait(self, timeout: float = 180) -> "WorkspaceMlflow":
        """Until /health answers over TLS, verified against the CA (a deadline, not a sleep)."""
        import requests

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"mlflow server exited {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                if requests.get(f"{self.base_url}/health", verify=str(self.authority.ca_file), timeout=2).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"mlflow server not answering in {timeout}s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return (self.root / "server.log").read_text(errors="replace")

    def artifacts_as_azure(self, regional_host: Optional[str]) -> None:
        """Experiments' artifact locations as Azure's MLflow reports them (`<regional host's MLflow URI>/
        experiments/<id>/runs`, so that a run's artifact URI is `.../experiments/<id>/runs/<run>/artifacts`),
        for experiments made from now on (a trigger in the server's store) and those there already; None:
        this server's own folder again. MLflow's server has no setting for it: a store rewrite."""
        import contextlib
        import sqlite3

        with contextlib.closing(sqlite3.connect(self.root / "mlflow.db")) as db, db:
            for event in ("insert", "update"):
                db.execute(f"DROP TRIGGER IF EXISTS azureml_artifact_location_{event}")
            if regional_host is None:
                db.execute("UPDATE experiments SET artifact_location = ? || '/' || experiment_id",
                           ((self.root / "artifacts").as_uri(),))
                return
            location = f"azureml://{regional_host}/mlflow/v2.0{self.scope}/experiments"
            db.execute("UPDATE experiments SET artifact_location = ? || '/' || experiment_id || '/runs'", (location,))
            # MLflow inserts an experiment, then sets its default location once it knows the id: both
            for event in ("INSERT", "UPDATE OF artifact_location"):
                db.execute(f"CREATE TRIGGER azureml_artifact_location_{event.split()[0].lower()} AFTER {event} ON "
                           f"experiments WHEN NEW.artifact_location IS NULL OR NEW.artifact_location NOT LIKE "
                           f"'{location}/%' BEGIN UPDATE experiments SET artifact_location = '{location}/' || "
                           "NEW.experiment_id || '/runs' WHERE experiment_id = NEW.experiment_id; END")

    def reset(self) -> None:
        """A fresh start for the next test: every experiment renamed aside and deleted (MLflow keeps a
        deleted experiment's name reserved), so searches by experiment name find nothing of earlier tests."""
        import uuid

        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.base_url)
        for experiment in client.search_experiments():
            if experiment.name == "Default":
                continue
            client.rename_experiment(experiment.experiment_id, f"{experiment.name}-{uuid.uuid4().hex[:8]}")
            client.delete_experiment(experiment.experiment_id)

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the CLI and the uvicorn it started

    def stop(self, timeout: float = 20) -> None:
        self.terminate()
        if self.proc is not None:
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


class AzureMlflow:
    """The MLflow servers of a test module's workspaces (one per workspace scope, started on first use)
    and the environment that reaches them (CA bundle, stand-in az on PATH, the cloud's name)."""

    def __init__(self, root: Path):
        self.root = root
        self.authority = Authority(root / "tls")
        self.bin = root / "bin"
        standin_az(self.bin)
        self.servers: Dict[str, WorkspaceMlflow] = {}
        self.used: set = set()

    @property
    def environment(self) -> Dict[str, str]:
        """What a process that talks to the servers needs (the test process; CLI subprocesses)."""
        return {"REQUESTS_CA_BUNDLE": str(self.authority.ca_file), "SSL_CERT_FILE": str(self.authority.ca_file),
                "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}", "AZUREML_CURRENT_CLOUD": "AzureCloud"}

    def start(self, workspaces: Iterable[Tuple[str, str, str]]) -> List[WorkspaceMlflow]:
        """The servers of these (subscription, resource group, workspace), started together if new."""
        wanted = [scope(*w) for w in workspaces]
        new = []
        for key, w in zip(wanted, workspaces):
            if key not in self.servers:
                self.servers[key] = WorkspaceMlflow(self.root / f"ws{len(self.servers)}", self.authority, *w).start()
                new.append(self.servers[key])
        for server in new:
            server.wait()
        return [self.servers[key] for key in wanted]

    def attach(self, *workspaces):
        """Point each FakeWorkspace's mlflowTrackingUri at its server (a clean one: a server that an
        earlier test used is reset first). Returns the workspaces (one, or a tuple)."""
        servers = self.start([(w.subscription, w.resource_group, w.workspace) for w in workspaces])
        for ws, server in zip(workspaces, servers):
            if server.scope in self.used:
                server.reset()
            self.used.add(server.scope)
            server.artifacts_as_azure(None)  # reached directly: its own folder (the stand-in changes it)
            ws.mlflow_uri = server.tracking_uri
            ws.mlflow_server = server
        return workspaces[0] if len(workspaces) == 1 else workspaces

    def stop(self) -> None:
        for server in self.servers.values():
            server.terminate()
        for server in self.servers.values():
            server.stop()


@pytest.fixture(scope="module")
def azure_mlflow(tmp_path_factory):
    """One AzureMlflow per test module (servers start on first attach and stop with the module); the
    module's process reaches them through the CA bundle and the stand-in az."""
    stand_in = AzureMlflow(tmp_path_factory.mktemp("azure-mlflow"))
    with pytest.MonkeyPatch.context() as mp:
        for key, value in stand_in.environment.items():
            mp.setenv(key, value)
        try:
            yield stand_in
        finally:
            stand_in.stop()
