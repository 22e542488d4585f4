"""Identity and roles in the Azure stand-in: every call to tests/azure_workspace.py's workspaces (and to
a workspace's MLflow, tests/azure_mlflow_guard.py) is allowed only where a role assignment in
infra/*.tf gives the calling principal a role whose actions cover it (tests/azure_rbac.py; Azure's
built-in role definitions in tests/data/azure-roles/). The flavour's own code paths run as the
principal that runs them on Azure, against infra/ as it is and against a copy with one of issue 17's
fixes reverted:
- (4) a job's registry calls as the cluster's managed identity (no role on the workspace before);
- (6) promotion's download of QA's run files as PROD's identity (the cross-env role lacked
  `.../metadata/artifacts/read` before)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from conftest import REPO, compose, needs_module

needs_module("azure.ai.ml", "pip install -e '.[azure]'")
needs_module("hcl2", "pip install -e '.[test]'")

from azure_rbac import INFRA, Names, Rbac, arm_action, builtin_roles, matches, mlflow_action, token_for  # noqa: E402
from azure_workspace import FakeAzure, FakeWorkspace, StaticToken  # noqa: E402

from mnistops import tags as T  # noqa: E402
from mnistops.errors import MnistopsError  # noqa: E402

ML = "Microsoft.MachineLearningServices/workspaces"
NAME = "mnist-classifier"
WS = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.MachineLearningServices/workspaces/ws"


def infra_copy(tmp_path: Path) -> Path:
    """infra/ as it is, in a folder a test may change."""
    copy = tmp_path / "infra"
    copy.mkdir()
    for f in list(INFRA.glob("*.tf")) + list(INFRA.glob("*.tfvars")):
        shutil.copy(f, copy / f.name)
    return copy


def without_resource(tf: Path, kind: str, name: str) -> None:
    """Drop one `resource "kind" "name" { ... }` block (up to its closing brace at the line start)."""
    text = tf.read_text()
    start = text.index(f'resource "{kind}" "{name}" {{')
    end = text.index("\n}\n", start) + 3
    tf.write_text(text[:start] + text[end:])


def settings(ws: FakeWorkspace, env: str = "qa"):
    return [f"env={env}", "env.backend=azure", f"env.azure.subscription_id={ws.subscription}",
            f"env.azure.resource_group={ws.resource_group}", f"env.azure.workspace={ws.workspace}"]


def model_dir(root: Path, weights: bytes = b"onnx weights") -> Path:
    (root / "artifacts").mkdir(parents=True)
    (root / "MLmodel").write_text("flavors:\n  python_function:\n    loader_module: mlflow.pyfunc.model\n")
    (root / "artifacts" / "model.onnx").write_bytes(weights)
    return root


# --------------------------------------------------------------------------- the rules themselves

def test_role_actions_follow_azure_wildcards_and_not_actions():
    scientist, reader = builtin_roles()["AzureML Data Scientist"], builtin_roles()["Storage Blob Data Reader"]
    assert scientist.allows(f"{ML}/experiments/runs/write") and scientist.allows(f"{ML}/models/versions/write")
    assert scientist.allows(f"{ML}/read")  # workspaces/*/read covers the workspace itself
    assert not scientist.allows(f"{ML}/write") and not scientist.allows(f"{ML}/computes/cpu-cluster/write")
    assert not scientist.allows(f"{ML}/listKeys/action") and not scientist.allows("Microsoft.Authorization/roleAssignments/write")
    blob = "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read"
    assert reader.allows(blob, data=True) and not reader.allows(blob) and not scientist.allows(blob, data=True)
    assert matches("Microsoft.Storage/*/read", "microsoft.storage/storageaccounts/read")


def test_each_request_maps_to_its_azure_operation():
    assert arm_action("GET", WS) == f"{ML}/read"
    assert arm_action("PUT", f"{WS}/models/m/versions/3") == f"{ML}/models/versions/write"
    assert arm_action("GET", f"{WS}/models/m/versions") == f"{ML}/models/versions/read"
    assert arm_action("DELETE", f"{WS}/onlineEndpoints/e/deployments/blue") == f"{ML}/onlineEndpoints/deployments/delete"
    assert arm_action("POST", f"{WS}/onlineEndpoints/e/listKeys") == f"{ML}/onlineEndpoints/listKeys/action"
    assert arm_action("POST", f"{WS}/datastores/workspaceblobstore/listSecrets") == f"{ML}/datastores/listSecrets/action"
    assert mlflow_action("GET", "/api/2.0/mlflow/runs/get") == f"{ML}/experiments/runs/read"
    assert mlflow_action("POST", "/api/2.0/mlflow/runs/log-batch") == f"{ML}/experiments/runs/write"
    assert mlflow_action("GET", "/api/2.0/mlflow-artifacts/artifacts/1/r/artifacts/model") == f"{ML}/metadata/artifacts/read"
    assert mlflow_action("PUT", "/api/2.0/mlflow-artifacts/artifacts/1/r/artifacts/x") == f"{ML}/metadata/artifacts/write"


def test_infra_gives_roles_to_the_principals_it_creates_and_to_prods_identity_in_qa():
    names = Names("s", "rg", "ws", "guid", "stws")
    qa = Rbac("qa", names, variables={"cross_env_principal_ids": ["prod/pipeline"]})
    who = {a.principal for a in qa.assignments}
    assert who == {"qa/pipeline", "qa/cluster:cpu", "prod/pipeline"}  # no GPU cluster, no compute instance by default
    assert not qa.roles_of("qa/endpoint", WS)  # Azure ML gives the endpoint its roles itself
    assert qa.denied("qa/pipeline", f"{ML}/read", WS) is None
    assert Rbac("prod", names).denied("qa/pipeline", f"{ML}/read", WS)  # QA's identity has nothing in PROD
    on = Rbac("qa", names, variables={"gpu_cluster_enabled": True, "compute_instance_enabled": True})
    assert {"qa/cluster:gpu", "qa/instance:notebook"} <= {a.principal for a in on.assignments}


def test_a_call_without_a_role_is_answered_403_with_arms_message():
    from azure.ai.ml import MLClient
    from azure.core.exceptions import HttpResponseError

    ws = FakeWorkspace()
    ml = MLClient(StaticToken("endpoint"), ws.subscription, ws.resource_group, ws.workspace, transport=ws,
                  enable_telemetry=False)
    with pytest.raises(HttpResponseError) as err:
        ml.models.get(NAME, version="1")
    assert err.value.status_code == 403 and err.value.error.code == "AuthorizationFailed"
    assert re.search(r"The client 'qa/endpoint' with object id '[0-9a-f-]{36}' does not have authorization to perform "
                     rf"action '{ML}/models/versions/read' over scope '.*/models/{NAME}/versions/1' or the scope is "
                     "invalid", str(err.value))
    assert ws.denied == [("qa/endpoint", f"{ML}/models/versions/read", ws.denied[0][2])]


# --------------------------------------------------------------------------- issue 17 (4): the job's identity

def in_job_registry(ws: FakeWorkspace, home: Path, mlflow_uri: str):
    """The registry a job's register/baseline/gate steps use: inside the job, on its own workspace."""
    from mnistops.backends.azure.model_registry import AzureModelRegistry
    from mnistops.backends.azure.workspace import Connection

    cfg = compose([*settings(ws), "azure.inside_job=true"], home)
    return AzureModelRegistry("qa", Connection(cfg), lambda: mlflow_uri)


def register_and_move_alias(registry, tmp_path: Path, mlflow_uri: str) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name("mnistops")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(
        "mnistops", artifact_location=(tmp_path / "art").as_uri())
    run = client.create_run(experiment_id)
    created = registry.register(NAME, model_dir(tmp_path / f"model-{run.info.run_id}"), run_id=run.info.run_id,
                                tags={T.ENV: "qa"}, description="in-job registration")
    registry.set_alias(NAME, "candidate", created.version)
    return registry.resolve(f"models:/{NAME}@candidate").version


def test_a_jobs_registry_calls_as_the_cluster_identity_need_its_role_on_the_workspace(tmp_path, home):
    """Issue 17 (4): the cluster's managed identity had no role on the workspace: register, baseline and
    gate inside the job got 403 on their first SDK call."""
    from mnistops.backends.azure.workspace import use_transport

    mlflow_uri = f"sqlite:///{tmp_path / 'workspace-mlflow.db'}"
    ws = FakeWorkspace()
    with use_transport(ws, StaticToken("cluster:cpu")):
        assert register_and_move_alias(in_job_registry(ws, home, mlflow_uri), tmp_path, mlflow_uri) == "1"
    assert not ws.denied and ws.sent("PUT", f"models/{NAME}/versions/1")

    reverted = infra_copy(tmp_path)
    without_resource(reverted / "identity.tf", "azurerm_role_assignment", "cluster_workspace")
    ws = FakeWorkspace(infra=reverted)
    with use_transport(ws, StaticToken("cluster:cpu")), pytest.raises(Exception) as err:
        register_and_move_alias(in_job_registry(ws, home, mlflow_uri), tmp_path, mlflow_uri)
    assert "AuthorizationFailed" in str(err.value) and "'qa/cluster:cpu'" in str(err.value)
    assert ws.denied and ws.denied[0][:2] == ("qa/cluster:cpu", f"{ML}/models/versions/read"), ws.denied
    assert not ws.sent("PUT", ".*")


# --------------------------------------------------------------------------- issue 17 (6): PROD reading QA

class GuardedMlflow:
    """tests/azure_mlflow_guard.py as a process: QA's MLflow behind QA's RBAC (infra read per request)."""

    def __init__(self, tmp_path: Path, ws: FakeWorkspace, infra: Path):
        settings_ = {"store": f"sqlite:///{tmp_path / 'qa-mlflow.db'}", "artifacts": str(tmp_path / "qa-artifacts"),
                     "env": ws.env, "names": asdict(ws.names), "infra": str(infra), "variables": ws.variables}
        self.log = tmp_path / "guard.log"
        self.proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "azure_mlflow_guard.py"), json.dumps(settings_)],
                                     stdout=subprocess.PIPE, stderr=self.log.open("wb"), text=True,
                                     env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
        self.url = self._wait(180)

    def _wait(self, timeout: float) -> str:
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if sel.select(timeout=1):
                line = self.proc.stdout.readline()
                if line.startswith("listening "):
                    return line.split()[1]
        self.stop()
        raise AssertionError(f"the guarded MLflow did not start:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.mark.integration  # starts an MLflow server
def test_promotion_downloads_qas_run_files_as_prods_identity_only_with_the_artifacts_read_role(tmp_path, home,
                                                                                             monkeypatch):
    """Issue 17 (6): the cross-env role could write run files in QA but not read them: promotion's
    download of QA's model files, as PROD's identity, got 403."""
    from mlflow.tracking import MlflowClient

    from mnistops.backends.azure import AzureBackend
    from mnistops.backends.azure.workspace import use_transport

    qa = FakeWorkspace(subscription="11111111-0000-0000-0000-000000000000", resource_group="rg-qa", workspace="mlw-qa")
    prod = FakeWorkspace(subscription="22222222-0000-0000-0000-000000000000", resource_group="rg-prod",
                         workspace="mlw-prod", mlflow_uri=f"sqlite:///{tmp_path / 'prod-mlflow.db'}")
    infra = infra_copy(tmp_path)
    guard = GuardedMlflow(tmp_path, qa, infra)
    try:
        qa.mlflow_uri = guard.url
        # QA's CI left an approved version whose files are its run's (written as QA's pipeline identity)
        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", token_for("qa/pipeline"))
        client = MlflowClient(guard.url)
        run = client.create_run(client.create_experiment("mnistops"))
        client.log_artifacts(run.info.run_id, str(model_dir(tmp_path / "qa-model")), "model")
        qa.seed(f"models/{NAME}/versions/3", {"modelType": "mlflow_model", "modelUri": f"runs:/{run.info.run_id}/model", "flavors": {},
                                              "tags": {T.GATE_DECISION: T.APPROVED, T.alias("champion"): "2026-01-03"},
                                              "properties": {T.FILES_RUN_ID: run.info.run_id}})
        for key, value in {"AZURE_QA_SUBSCRIPTION_ID": qa.subscription, "AZUREML_QA_RESOURCE_GROUP": qa.resource_group,
                           "AZUREML_QA_WORKSPACE": qa.workspace}.items():
            monkeypatch.setenv(key, value)
        cfg = compose(settings(prod, "prod"), home)

        # PROD's pipeline identity: what promotion does on QA's side (resolve, then download the run's files)
        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", token_for("prod/pipeline"))
        with use_transport(FakeAzure(qa, prod), StaticToken("prod/pipeline")):
            source = AzureBackend(cfg).registry("qa")
            version = source.resolve(f"models:/{NAME}@champion")
            files = source.download(version, tmp_path / "as-is")
            assert (files / "artifacts" / "model.onnx").read_bytes() == b"onnx weights"
            assert not qa.denied

            identity = infra / "identity.tf"  # the fix reverted: the cross-env role without the artifacts' read
            identity.write_text(identity.read_text().replace(f'      "{ML}/metadata/artifacts/read",\n', ""))
            with pytest.raises(MnistopsError) as err:
                source.download(version, tmp_path / "reverted")
        message = str(err.value)  # one line that says why (MLflow's own says "ensure that the path is correct")
        assert message.startswith(f"cannot download runs:/{run.info.run_id}/model (models:/{NAME}/3) from the qa registry")
        assert "403" in message and "AuthorizationFailed" in message and "'prod/pipeline'" in message
        assert f"{ML}/metadata/artifacts/read" in message
    finally:
        guard.stop()


@pytest.mark.integration  # starts an MLflow server
def test_the_hand_over_to_qa_refused_by_qas_roles_is_one_line_naming_the_store_and_the_action(tmp_path, home,
                                                                                            monkeypatch):
    """stage=monitor's hand-over writes a run in QA's MLflow as PROD's identity: with the cross-env role,
    it is there; without runs/write (the role reverted), one line names QA's store and the action
    (before: MLflow's RestException traceback out of stage=monitor)."""
    import numpy as np
    from mlflow.tracking import MlflowClient

    from mnistops.monitoring import production_data

    qa = FakeWorkspace(subscription="11111111-0000-0000-0000-000000000000", resource_group="rg-qa", workspace="mlw-qa")
    prod = FakeWorkspace(subscription="22222222-0000-0000-0000-000000000000", resource_group="rg-prod",
                         workspace="mlw-prod")
    infra = infra_copy(tmp_path)
    guard = GuardedMlflow(tmp_path, qa, infra)
    try:
        cfg = compose(settings(prod, "prod"), home)
        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", token_for("prod/pipeline"))
        images, labels = np.zeros((3, 28, 28), np.uint8), np.array([1, 2, 3])
        run_id = production_data.hand_over(cfg, images, labels, to_env="qa", uri=guard.url, monitor_run_id="m-1")
        assert MlflowClient(guard.url).get_run(run_id).data.tags[T.SOURCE_MONITOR_RUN] == "m-1"

        identity = infra / "identity.tf"
        identity.write_text(identity.read_text().replace(f'      "{ML}/experiments/runs/write",\n', ""))
        with pytest.raises(MnistopsError) as err:
            production_data.hand_over(cfg, images + 1, labels, to_env="qa", uri=guard.url, monitor_run_id="m-2")
    finally:
        guard.stop()
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"cannot hand the labelled images over to qa's tracking store "
                                                      f"({guard.url}): PERMISSION_DENIED")
    assert "'prod/pipeline'" in message and f"{ML}/experiments/runs/write" in message


@pytest.mark.integration  # starts an MLflow server
def test_a_store_that_refuses_the_identity_is_one_line_naming_the_store_and_the_action(tmp_path, home, monkeypatch):
    """Every stage's first call on its store (tracking.ensure_experiment), as the cluster's identity
    inside a job: with infra/'s role it is allowed; without it (issue 17 (4) reverted) one line names the
    store, the principal and the action (before: MLflow's RestException traceback in the job's log)."""
    from mlflow.tracking import MlflowClient

    from mnistops import tracking

    qa = FakeWorkspace(subscription="11111111-0000-0000-0000-000000000000", resource_group="rg-qa", workspace="mlw-qa")
    infra = infra_copy(tmp_path)
    guard = GuardedMlflow(tmp_path, qa, infra)
    try:
        cfg = compose(settings(qa), home)
        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", token_for("qa/cluster:cpu"))
        assert tracking.ensure_experiment(MlflowClient(guard.url), cfg, "qa", guard.url)
        without_resource(infra / "identity.tf", "azurerm_role_assignment", "cluster_workspace")
        with pytest.raises(MnistopsError) as err:
            tracking.ensure_experiment(MlflowClient(guard.url), cfg, "qa", guard.url)
    finally:
        guard.stop()
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"cannot use env qa's tracking store ({guard.url}): "
                                                      f"PERMISSION_DENIED"), message
    assert "'qa/cluster:cpu'" in message and f"{ML}/experiments/read" in message, message


# --------------------------------------------------------------------------- stage=monitor's blob reads

def test_the_monitor_reads_the_collectors_blobs_with_the_pipelines_own_blob_role(tmp_path):
    """stage=monitor reads what the endpoint's data collector wrote with the pipeline identity's own
    token: AzureML Data Scientist reads the datastore but no blob; infra/'s Storage Blob Data Reader
    on that one container does."""
    import numpy as np
    from test_azure_data_collector_reader import T0, read, served

    images = np.random.default_rng(0).integers(0, 256, size=(2, 28, 28), dtype=np.uint8)
    ws = FakeWorkspace(workspace="mlw-prod")
    served(ws, "blue", "r-1", T0 + 300, images[0:1], [3], "4")
    window, _, _ = read(ws, T0, T0 + 3600)
    assert len(window.digits) == 1 and not ws.denied

    reverted = infra_copy(tmp_path)
    without_resource(reverted / "identity.tf", "azurerm_role_assignment", "pipeline_collected_read")
    ws = FakeWorkspace(workspace="mlw-prod", infra=reverted)
    served(ws, "blue", "r-1", T0 + 300, images[0:1], [3], "4")
    with pytest.raises(MnistopsError, match="reading the collected data in .*: This request is not authorized to "
                                            "perform this operation using this permission"):
        read(ws, T0, T0 + 3600)
    assert ws.denied[0][:2] == ("prod/pipeline", "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read")
