"""The README's QA quickstart against a real Azure ML workspace (`pytest -m azure_live`): provision,
the CI job, CD to the managed endpoint (blue/green, smoke test), the monitoring schedule and the
endpoint's status, exactly the commands of README "First run on Azure" after `terraform apply`. It
creates billable resources in that workspace (jobs on the cluster, an online deployment) and takes
tens of minutes; at the end it deletes what it created: the deployments it added (the endpoint is
Terraform's), the monitoring schedules it added, and it archives the model versions and jobs it
made. Environments, data assets and the code snapshot stay: they are versioned by content and the
next run reuses them.

Marked `integration` as well (it runs the CLI), so the unit tier never selects it. Nothing here asks
for a credential while pytest collects: the checks run when the test itself starts, and without the
QA workspace's settings (AZURE_QA_SUBSCRIPTION_ID or AZURE_SUBSCRIPTION_ID, AZUREML_QA_RESOURCE_GROUP,
AZUREML_QA_WORKSPACE) or a working credential (`az login`, a service principal, a managed identity)
it skips in one line. AZUREML_QA_ENDPOINT names the endpoint when Terraform's name_suffix was set."""

from __future__ import annotations

import importlib.util
import os
import time

import pytest

from conftest import run_cli

pytestmark = [pytest.mark.azure_live, pytest.mark.integration]

SETTINGS = ("AZUREML_QA_RESOURCE_GROUP", "AZUREML_QA_WORKSPACE")
MODEL = "mnist-classifier"


def why_not() -> str:
    """'' when the QA workspace is named and a credential works; else the one-line reason."""
    subscription = os.environ.get("AZURE_QA_SUBSCRIPTION_ID") or os.environ.get("AZURE_SUBSCRIPTION_ID")
    if not (subscription and all(os.environ.get(v) for v in SETTINGS)):
        return f"no QA workspace: set AZURE_QA_SUBSCRIPTION_ID (or AZURE_SUBSCRIPTION_ID), {', '.join(SETTINGS)}"
    for module, extra in (("azure.ai.ml", "azure-ai-ml"), ("azure.identity", "azure-identity")):
        if importlib.util.find_spec(module.split(".")[0]) is None or importlib.util.find_spec(module) is None:
            return f"{extra} is not installed: pip install -e '.[azure]'"
    from mnistops.backends.azure import workspace
    from mnistops.errors import MnistopsError

    try:
        workspace.credential()
    except MnistopsError as err:
        return str(err).splitlines()[0][:400]
    try:
        plugin = importlib.util.find_spec("azureml.mlflow") is not None
    except ModuleNotFoundError:
        plugin = False
    if not plugin:
        return "azureml-mlflow is not installed (the workspace's MLflow): pip install -e '.[azure]'"
    return ""


@pytest.fixture
def qa():
    """The QA workspace's MLClient, or a one-line skip."""
    reason = why_not()
    if reason:
        pytest.skip(reason)
    from mnistops.backends.azure import workspace

    ws = workspace.Workspace(os.environ.get("AZURE_QA_SUBSCRIPTION_ID") or os.environ["AZURE_SUBSCRIPTION_ID"],
                             os.environ["AZUREML_QA_RESOURCE_GROUP"], os.environ["AZUREML_QA_WORKSPACE"])
    return workspace.client(ws)


def snapshot(ml, endpoint: str) -> dict:
    """What exists now, to delete afterwards only what the test added."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        deployments = {d.name for d in ml.online_deployments.list(endpoint)}
    except ResourceNotFoundError:
        deployments = set()
    return {"deployments": deployments,
            "schedules": {s.name for s in ml.schedules.list()},
            "models": {m.version for m in ml.models.list(name=MODEL)} if _has_model(ml) else set()}


def _has_model(ml) -> bool:
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return bool(list(ml.models.list(name=MODEL)))
    except ResourceNotFoundError:
        return False


def clean_up(ml, endpoint: str, before: dict, started: float) -> None:
    """Delete the deployments and schedules the test added; archive its model versions and jobs."""
    after = snapshot(ml, endpoint)
    for name in sorted(after["schedules"] - before["schedules"]):
        ml.schedules.begin_disable(name).result()
        ml.schedules.begin_delete(name).result()
    added = after["deployments"] - before["deployments"]
    if added:
        ep = ml.online_endpoints.get(endpoint)
        ep.traffic = {k: v for k, v in (ep.traffic or {}).items() if k not in added}
        ep.mirror_traffic = {k: v for k, v in (ep.mirror_traffic or {}).items() if k not in added}
        ml.online_endpoints.begin_create_or_update(ep).result()
        for name in sorted(added):
            ml.online_deployments.begin_delete(name=name, endpoint_name=endpoint).result()
    for version in sorted(after["models"] - before["models"]):
        ml.models.archive(name=MODEL, version=version)
    for job in ml.jobs.list():
        created = getattr(job, "creation_context", None)
        if created and created.created_at and created.created_at.timestamp() >= started \
                and (job.tags or {}).get("mnistops.env") == "qa":
            ml.jobs.archive(job.name)


def test_the_qa_quickstart_runs_on_a_real_workspace(qa, tmp_path):
    from mnistops.backends.azure import naming
    from conftest import compose

    args = ["env=qa", "env.backend=azure", "compute=azure_cpu_cluster", "experiment=fast"]
    if os.environ.get("AZUREML_QA_ENDPOINT"):
        args.append(f"azure.endpoint_name={os.environ['AZUREML_QA_ENDPOINT']}")
    cfg = compose(args, tmp_path)
    endpoint = cfg.azure.endpoint_name or naming.endpoint_name(cfg, qa.subscription_id)
    started, before = time.time(), snapshot(qa, endpoint)

    def step(*more: str, timeout: float = 3600):
        proc = run_cli([*args, *more], tmp_path, timeout=timeout)
        assert proc.returncode == 0, f"mnistops {' '.join(more)}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        return proc.stdout

    try:
        step("stage=provision")
        step("stage=ci", "ci.pytest_args=[--collect-only,-q,tests/test_stage_table.py]", "gate.min_accuracy=0.9")
        deployed = step("stage=cd", "smoke.samples=50", timeout=5400)
        assert "smoke test of https://" in deployed and "passed" in deployed
        assert "monitoring schedule" in step("stage=monitor")
        status = step("stage=endpoint")
        assert "Succeeded" in status and f"models:/{MODEL}/" in status
    finally:
        clean_up(qa, endpoint, before, started)
