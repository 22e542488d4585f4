"""Steps of jobs/azure-devops/*.yml run as an agent runs them: read from the file (tests/pipeline_files.py),
the pipeline's variables substituted, `python -m mnistops ...` as written, in a process of its own
with a fresh MNISTOPS_HOME. Only the AzureCLI@2 sign-in is replaced: a stand-in `az` on PATH.

The process talks to Azure's own host names through HTTPS_PROXY (tests/azure_proxy.py):
- real: the process, azure-ai-ml / azure-identity / azure-storage-blob / azureml-mlflow and their
  HTTP stacks, TLS verified against a local CA; blob storage is Azurite (Microsoft's emulator);
- stand-in: management.azure.com and the workspace's regional host answer from FakeWorkspace
  (tests/azure_workspace.py: REST-model validation, infra/*.tf roles), read by the test afterwards;
  the sign-in (`az account get-access-token`).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

import pipeline_files as pf
from conftest import mirror_url, needs_module

needs_module("azure.ai.ml", "pip install -e '.[azure]'")

from azure_mlflow_server import azure_mlflow  # noqa: E402,F401  (a fixture)
from azure_proxy import AzureStandIn, AzuriteStore, HostAuthority  # noqa: E402
from azure_workspace import FakeWorkspace  # noqa: E402

pytestmark = pytest.mark.integration

PIPELINES = pf.REPO / "jobs" / "azure-devops"
STEP_TIMEOUT = 300
# hosts a step may ask for that nothing here serves: azure-ai-ml fetches the MLTable JSON schema from its
# CDN to validate an mltable asset, and skips the validation when it cannot (Data.create_or_update)
UNSERVED = {"azuremlschemasprod.azureedge.net"}


def variable_group(ws: FakeWorkspace, env: str, endpoint: str) -> Dict[str, str]:
    """The variable group `mnistops-<env>` (what Terraform's outputs fill in)."""
    env = env.upper()
    return {f"AZURE_{env}_SUBSCRIPTION_ID": ws.subscription, f"AZUREML_{env}_RESOURCE_GROUP": ws.resource_group,
            f"AZUREML_{env}_WORKSPACE": ws.workspace, f"AZUREML_{env}_ENDPOINT": endpoint}


def agent_step(pipeline: str, stage: str, values: Dict[str, str]) -> pf.Step:
    (step,) = [s for s in pf.steps(PIPELINES / pipeline, values) if s.value("stage") == stage]
    return step


def run_step(step: pf.Step, stand_in: AzureStandIn, data_cache: Path, cwd: Path, timeout: float = STEP_TIMEOUT,
             **agent_env: str) -> subprocess.CompletedProcess:
    """The step's command line, as written, in its own process: the agent's environment (nothing of
    this test's MNISTOPS_/AZURE/MLFLOW_ variables), the step's, the stand-in's network and sign-in."""
    home = Path(step.env["MNISTOPS_HOME"])
    if not (home / "data").is_dir():  # a fresh agent downloads; the verified cache saves that
        shutil.copytree(data_cache, home / "data")
    cwd.mkdir(parents=True, exist_ok=True)
    base = pf.agent_environment()
    env = {**base, "MNISTOPS_DATA_MIRROR": mirror_url(), "PYTHONUNBUFFERED": "1", **step.env,
           **stand_in.environment(), **agent_env}
    return subprocess.run([sys.executable, "-m", "mnistops", *step.args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def qa(tmp_path, azure_mlflow):
    """QA's workspace as Terraform leaves it (the cluster), its MLflow, Azurite with its storage account."""
    ws = FakeWorkspace()
    ws.seed_cpu_cluster()  # Terraform's
    authority = HostAuthority(tmp_path / "tls", ca=azure_mlflow.authority.ca)  # one CA for every server
    stand_in = AzureStandIn(tmp_path / "azure", ws, [ws.blobstore.account], authority=authority)
    try:
        stand_in.attach_mlflow(azure_mlflow, ws)
        yield ws, stand_in
    finally:
        stand_in.stop()


def blobs(stand_in: AzureStandIn, ws: FakeWorkspace) -> List[str]:
    with stand_in.reached():  # the test process reaches Azurite the way the step did
        container = stand_in.azurite.container(ws.blobstore.account, ws.blobstore.container)
        return [b.name for b in container.list_blobs()]


def test_ci_provision_step_creates_environments_and_uploads_the_data_assets(qa, tmp_path, data_cache):
    ws, stand_in = qa
    blobs(stand_in, ws)  # the container: Azure ML made it with the workspace
    agent = tmp_path / "agent"
    step = agent_step("ci.yml", "provision", {"Pipeline.Workspace": str(agent), **variable_group(ws, "qa", "mnist-qa")})
    assert step.raw.startswith(".venv/bin/python -m mnistops env=qa env.backend=azure stage=provision")
    assert not any(a.startswith(("env.tracking_uri", "env.azure.", "azure.")) for a in step.args), step.args

    proc = run_step(step, stand_in, data_cache, agent / "s")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert {"management.azure.com", f"{ws.blobstore.account}.blob.core.windows.net"} <= set(stand_in.proxy.tunnels)
    assert {line.split()[1].split(":")[0] for line in stand_in.proxy.refused} <= UNSERVED, stand_in.proxy.refused

    puts = sorted(ws.relative(r.path) for r in ws.sent("PUT", ".*"))
    assert [p for p in puts if p.startswith("environments/")] == sorted(
        p for p in puts if p.startswith("environments/mnistops-train/") or p.startswith("environments/mnistops-inference/"))
    assert len([p for p in puts if p.startswith("environments/")]) == 2, puts
    data = [p for p in puts if p.startswith("data/")]
    assert len(data) == 2, puts
    # the data assets point into the workspace's blob datastore, and their files are there, in Azurite
    uploaded = blobs(stand_in, ws)
    for put in [r for r in ws.sent("PUT", r"data/.*")]:
        uri = put.body["properties"]["dataUri"]
        folder = uri.split("/paths/", 1)[1].rstrip("/")
        assert any(name.startswith(folder + "/") for name in uploaded), (uri, uploaded[:10])
    assert any(n.endswith("train-images-idx3-ubyte.gz") or "train-images" in n for n in uploaded), uploaded
    assert any(n.endswith("features.csv") for n in uploaded) and any(n.endswith("MLTable") for n in uploaded), uploaded
    assert not ws.denied and not ws.refused, (ws.denied, ws.refused)
    # with a SAS from the datastore's listSecrets (the pipeline's role allows it), not a blob data role
    assert ws.sent("POST", "datastores/workspaceblobstore/listsecrets")

    # provisioning again uploads nothing twice
    again = run_step(step, stand_in, data_cache, agent / "s2")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already there" in again.stdout and len(ws.sent("PUT", r"data/.*")) == 2


FAST_TESTS = "ci.pytest_args=[tests/test_config.py::test_default_main_job_is_the_dev_pipeline,-q,-p,no:cacheprovider]"


# ----------------------------------------------------------------------------- the data collector's files in Azurite

READ_WINDOW = """
import hashlib, json, sys
sys.path.insert(0, {tests!r})
from conftest import compose
from mnistops import backends
from mnistops.monitoring.request_log_reader import ReadStats

cfg = compose({overrides!r})
stats = ReadStats()
w = backends.get(cfg).monitoring.read_window(cfg, {start}, {end}, stats, None)
print(json.dumps({{"request_ids": list(w.request_ids), "digits": w.digits.tolist(), "labels": w.labels.tolist(),
                  "deployments": list(w.deployments), "images": hashlib.sha256(w.images.tobytes()).hexdigest(),
                  "torn": stats.torn}}))
"""


def test_the_collector_reader_reads_azurite_in_a_process_of_its_own(tmp_path):
    """The flavour's collector reader (backends/azure/data_collector_reader.py) as stage=monitor runs it:
    the datastore from ARM, the hourly JSONL files listed and downloaded from real blob storage
    (Azurite: List Blobs with a delimiter, etags, Get Blob) with the caller's Entra token."""
    import hashlib
    import json

    import numpy as np

    from azure_workspace import collector_record, write_collector_files
    from test_azure_data_collector_reader import ENDPOINT, T0, request_rows

    ws = FakeWorkspace(workspace="mlw-prod")
    stand_in = AzureStandIn(tmp_path / "azure", ws, [ws.blobstore.account], principal="prod/pipeline")
    try:
        store = AzuriteStore(stand_in, ws)
        images = np.random.default_rng(0).integers(0, 256, size=(6, 28, 28), dtype=np.uint8)
        for deployment, rid, t, part, digits, version in (
                ("blue", "r-0", T0 - 1800, images[5:6], [0], "4"),  # before the window
                ("blue", "r-1", T0 + 300, images[0:1], [3], "4"),
                ("blue", "r-2", T0 + 1200, images[1:3], [1, 2], "4"),
                ("green", "r-3", T0 + 4200, images[3:4], [6], "5")):
            inputs, outputs = request_rows(rid, part, digits, version)
            write_collector_files(store, ENDPOINT, deployment, [
                collector_record("model_inputs", inputs, t, rid, ENDPOINT, deployment),
                collector_record("model_outputs", outputs, t, rid, ENDPOINT, deployment)])
        write_collector_files(store, ENDPOINT, "blue", [
            collector_record("ground_truth", [{"correlation_id": "r-3", "label": 5}], T0 + 4300, "r-3", ENDPOINT, "blue"),
            collector_record("ground_truth", [{"correlation_id": "r-1", "label": 3}], T0 + 5 * 3600, "r-1", ENDPOINT,
                             "blue")])

        overrides = ["env=prod", "env.backend=azure", f"azure.endpoint_name={ENDPOINT}"]
        script = READ_WINDOW.format(tests=str(pf.REPO / "tests"), overrides=overrides, start=T0, end=T0 + 2 * 3600)
        base = pf.agent_environment()
        env = {**base, "MNISTOPS_HOME": str(tmp_path / "home"), "AZURE_PROD_SUBSCRIPTION_ID": ws.subscription,
               "AZUREML_PROD_RESOURCE_GROUP": ws.resource_group, "AZUREML_PROD_WORKSPACE": ws.workspace,
               **stand_in.environment()}
        proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=STEP_TIMEOUT)
        assert proc.returncode == 0, proc.stderr[-5000:]
        window = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        stand_in.stop()
    assert window["request_ids"] == ["r-1", "r-2", "r-2", "r-3"]
    assert window["digits"] == [3, 1, 2, 6] and window["labels"] == [3, -1, -1, 5]
    assert window["deployments"] == ["blue", "blue", "blue", "green"] and window["torn"] == 0
    assert window["images"] == hashlib.sha256(images[[0, 1, 2, 3]].tobytes()).hexdigest()
    assert f"{ws.blobstore.account}.blob.core.windows.net" in stand_in.proxy.tunnels
    assert ws.sent("GET", "datastores/workspaceblobstore") and not ws.sent("POST", ".*listsecrets")
    assert not ws.denied, ws.denied


# ----------------------------------------------------------------------------- CD to QA

def test_cd_qa_status_step_reads_the_endpoint_terraform_made(qa, tmp_path, data_cache):
    """cd-qa.yml's `endpoint status` step (condition: always()) as written, before anything was deployed."""
    ws, stand_in = qa
    name = "mnist-qa-0a1b2c"
    ws.seed(f"onlineendpoints/{name}", {"authMode": "Key", "traffic": {}, "properties": {},
                                        "scoringUri": f"https://{name}.{ws.location}.inference.ml.azure.com/score"},
            location=ws.location, kind="Managed", identity={"type": "SystemAssigned"})
    step = agent_step("cd-qa.yml", "endpoint", {"Pipeline.Workspace": str(tmp_path / "agent"),
                                                **variable_group(ws, "qa", name)})
    assert step.condition == "always()" and step.value("endpoint.action") == "status"
    proc = run_step(step, stand_in, data_cache, tmp_path / "agent" / "s")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert f"endpoint {name} (qa): Succeeded, https://{name}.{ws.location}.inference.ml.azure.com/score" in proc.stdout
    assert ws.sent("GET", f"onlineendpoints/{name}") and not ws.sent("PUT", ".*") and not ws.denied
