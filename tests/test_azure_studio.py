"""Issue 17 (6), the seed's own way in: the quickstart notebook in Azure ML Studio, on a compute
instance, with no environment variable of ours. The workspace comes from the config.json Azure ML
writes there (found as MLClient.from_config finds it, checked against the SDK itself), the sign-in
is the instance's managed identity (the MSI endpoint Azure announces in MSI_ENDPOINT/MSI_SECRET,
served here by a local HTTP server), and infra/ can create that instance with its role."""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from conftest import compose, fresh_home, needs_module

needs_module("azure.ai.ml")

from azure_workspace import FakeWorkspace, StaticToken  # noqa: E402
from test_azure_infra import JOB_ACTIONS, WORKSPACE_SCOPE, allowed, assignments_for, role_of, terraform  # noqa: E402

SUBSCRIPTION = "11111111-2222-3333-4444-555555555555"
CONFIG = {"subscription_id": SUBSCRIPTION, "resource_group": "rg-studio", "workspace_name": "mlw-studio"}
OURS = ("AZURE_", "AZUREML_", "MNISTOPS_", "MSI_", "IDENTITY_", "DEFAULT_IDENTITY_CLIENT_ID")


@pytest.fixture
def studio(tmp_path, monkeypatch) -> Path:
    """A compute instance's layout, none of our variables set: HOME is its own, the cwd a notebook
    folder below the file share's root (where the test writes config.json)."""
    for name in list(os.environ):
        if name.startswith(OURS):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    notebooks = tmp_path / "code" / "Users" / "someone" / "notebooks"
    notebooks.mkdir(parents=True)
    (tmp_path / "home").mkdir()
    monkeypatch.chdir(notebooks)
    return tmp_path


def azure_cfg(env: str = "dev"):
    return compose([f"env={env}", "env.backend=azure"])


@pytest.mark.parametrize("where", ["code/config.json", "code/.azureml/config.json", "home/.azureml/config.json"])
def test_the_workspace_comes_from_config_json_when_no_setting_is_set(studio, where):
    from azure.ai.ml import MLClient

    from mnistops.backends.azure.workspace import Workspace, find_config_file, of_env

    path = studio / where
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(CONFIG))
    assert find_config_file() == path
    ws = of_env(azure_cfg())
    assert ws == Workspace(SUBSCRIPTION, "rg-studio", "mlw-studio") and ws.source == str(path)
    if not where.startswith("home/"):  # the SDK's own lookup (it walks up from the cwd) finds the same one
        sdk = MLClient.from_config(StaticToken())
        assert (sdk.subscription_id, sdk.resource_group_name, sdk.workspace_name) == (SUBSCRIPTION, "rg-studio", "mlw-studio")


def test_a_scope_config_and_the_sdk_agree(studio):
    from azure.ai.ml import MLClient

    from mnistops.backends.azure.workspace import of_env

    scope = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-scope/providers/Microsoft.MachineLearningServices/workspaces/mlw-scope"
    (studio / "code" / "config.json").write_text(json.dumps({"Scope": scope}))
    ws = of_env(azure_cfg())
    sdk = MLClient.from_config(StaticToken())
    assert (ws.subscription_id, ws.resource_group, ws.workspace) == (
        sdk.subscription_id, sdk.resource_group_name, sdk.workspace_name) == (SUBSCRIPTION, "rg-scope", "mlw-scope")


def test_the_sdk_calls_go_to_the_config_json_workspace(studio):
    from mnistops.backends.azure.workspace import Connection, use_transport

    # the notebook signs in as the compute instance's identity, which infra/ creates with its role when
    # compute_instance_enabled = true (README "In Azure ML Studio")
    ws = FakeWorkspace(SUBSCRIPTION, "rg-studio", "mlw-studio", variables={"compute_instance_enabled": True})
    ws.seed("computes/cpu-cluster", {"computeType": "AmlCompute", "properties": {}}, location="westeurope")
    (studio / "code" / "config.json").write_text(json.dumps(CONFIG))
    with use_transport(ws, StaticToken("instance:notebook")):
        assert Connection(azure_cfg()).ml.compute.get("cpu-cluster").name == "cpu-cluster"
    assert ws.sent("GET", "computes/cpu-cluster")


def test_settings_win_and_another_env_never_reads_config_json(studio, monkeypatch):
    from mnistops.backends.azure.workspace import of_env
    from mnistops.errors import MnistopsError

    (studio / "code" / "config.json").write_text(json.dumps(CONFIG))
    monkeypatch.setenv("AZURE_SUBSCRIPTION_ID", "sub-from-env")
    monkeypatch.setenv("AZUREML_DEV_RESOURCE_GROUP", "rg-env")
    monkeypatch.setenv("AZUREML_DEV_WORKSPACE", "mlw-env")
    ws = of_env(azure_cfg())
    assert (ws.subscription_id, ws.workspace, ws.source) == ("sub-from-env", "mlw-env", "")
    monkeypatch.delenv("AZURE_SUBSCRIPTION_ID")  # one setting missing: named, not patched from the file
    with pytest.raises(MnistopsError, match=r"^env\.azure\.subscription_id is not set for env=dev: export "
                                            r"AZURE_DEV_SUBSCRIPTION_ID or AZURE_SUBSCRIPTION_ID \(or pass [^,]*\)$"):
        of_env(azure_cfg())
    # promotion reads QA from PROD: the instance's config.json names PROD's own workspace, never QA's
    with pytest.raises(MnistopsError, match=r"^env\.azure\.subscription_id is not set for env=qa"):
        of_env(azure_cfg("prod"), "qa")


def test_with_neither_the_error_says_what_was_looked_for(studio):
    from mnistops.backends.azure.workspace import found_workspace, of_env
    from mnistops.errors import MnistopsError

    assert found_workspace(azure_cfg()) is None
    with pytest.raises(MnistopsError) as err:
        of_env(azure_cfg())
    line = str(err.value)
    assert "\n" not in line and line.startswith("env.azure.subscription_id is not set for env=dev: export ")
    assert f"no workspace config.json in {Path.cwd()} or its parents" in line and str(studio / "home" / ".azureml") in line
    (studio / "code" / "config.json").write_text(json.dumps({"subscription_id": SUBSCRIPTION, "resource_group": "rg"}))
    with pytest.raises(MnistopsError, match=r"^workspace config .*config\.json lacks workspace_name$"):
        of_env(azure_cfg())


class MsiEndpoint(BaseHTTPRequestHandler):
    """The compute instance's MSI endpoint (App Service protocol 2017-09-01, as Azure ML serves it)."""
    requests: list = []

    def do_GET(self):
        query = {k: v[0] for k, v in parse_qs(urlparse(self.path).query).items()}
        MsiEndpoint.requests.append((query, self.headers.get("secret")))
        if self.headers.get("secret") != "the-secret":
            self.send_response(401)
            self.end_headers()
            return
        body = json.dumps({"access_token": "instance-token", "expires_on": int(time.time()) + 3600,
                           "resource": query.get("resource"), "token_type": "Bearer"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.integration
def test_the_credential_is_the_compute_instance_identity(studio, monkeypatch):
    from mnistops.backends.azure import workspace

    server = ThreadingHTTPServer(("127.0.0.1", 0), MsiEndpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    MsiEndpoint.requests = []
    try:
        monkeypatch.setenv("MSI_ENDPOINT", f"http://127.0.0.1:{server.server_port}/msi/token")
        monkeypatch.setenv("MSI_SECRET", "the-secret")
        monkeypatch.setattr(workspace, "_CREDENTIAL", {})
        cred = workspace.credential()
        assert cred.get_token(workspace.MANAGEMENT_SCOPE).token == "instance-token"
    finally:
        server.shutdown()
        server.server_close()
    assert MsiEndpoint.requests and all(secret == "the-secret" for _, secret in MsiEndpoint.requests)
    assert MsiEndpoint.requests[0][0]["resource"] == "https://management.azure.com"
    assert "clientid" not in MsiEndpoint.requests[0][0]  # the instance's system-assigned identity


def test_infra_creates_the_compute_instance_behind_one_variable_with_its_role():
    tf = terraform()
    enabled = tf["variable"]["compute_instance_enabled"]
    assert enabled["type"] == "bool" and enabled["default"] is False
    instance = tf["resource"]["azurerm_machine_learning_compute_instance"]["notebook"]
    assert instance["count"] == "${var.compute_instance_enabled ? 1 : 0}"
    assert instance["machine_learning_workspace_id"] == WORKSPACE_SCOPE
    assert instance["identity"][0]["type"] == "SystemAssigned"
    mine = [a for a in assignments_for("azurerm_machine_learning_compute_instance.notebook", tf)
            if a["scope"] == WORKSPACE_SCOPE]
    assert mine and all(a["count"] == instance["count"] for a in mine), "its role exists exactly when it does"
    missing = [a for a in JOB_ACTIONS if not any(allowed(a, role_of(r, tf)) for r in mine)]
    assert not missing, missing


@pytest.mark.integration
def test_the_notebook_azure_cells_find_the_workspace_from_config_json(tmp_path_factory, data_cache, tmp_path, studio):
    """The Azure section of quickstart.ipynb, rehearsed as in Studio: a config.json, no variable of
    ours, AZURE_DRY_RUN = True (nothing may leave this machine)."""
    from test_notebook import QUICKSTART, execute, kernel_dir

    import nbformat

    (studio / "code" / "config.json").write_text(json.dumps(CONFIG))
    home = fresh_home(tmp_path_factory, data_cache, "studio-home")
    nb = nbformat.read(QUICKSTART, as_version=4)
    params = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    start = next(i for i, c in enumerate(nb.cells) if "found_workspace(" in c.source)
    cells = [nb.cells[params], nbformat.v4.new_code_cell(f"HOME = {str(home)!r}\nAZURE_DRY_RUN = True"),
             nb.cells[params + 1]]  # the parameters, ours, the imports and env()
    cells += [c for c in nb.cells[start:] if "registered." not in c.source]  # deploy needs section 2's model
    nb.cells = cells
    execute(nb, Path.cwd(), kernel_dir(tmp_path / "jupyter"))
    found = "".join(o.get("text", "") for o in nb.cells[3].outputs)
    assert (f"workspace mlw-studio (resource group rg-studio), from {studio / 'code' / 'config.json'}: "
            "dry run, YAML previews only") in found
    specs = "".join(o.get("text", "") for c in nb.cells[4:] for o in c.outputs)
    assert "environment.schema.json" in specs and "commandJob.schema.json" in specs
