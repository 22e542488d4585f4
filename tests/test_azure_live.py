"""The README's QA quickstart against a real Azure ML workspace (`pytest -m azure_live`): provision,
a training job, the CI job, CD to a managed endpoint (blue/green, smoke test), the monitoring
schedule, and the endpoint's status. It creates billable resources in that workspace (a job on the
cluster, an online deployment) and takes tens of minutes.

Skipped unless the QA workspace is named (AZURE_QA_SUBSCRIPTION_ID or AZURE_SUBSCRIPTION_ID,
AZUREML_QA_RESOURCE_GROUP, AZUREML_QA_WORKSPACE), a credential works (DefaultAzureCredential:
`az login`, a service principal or a managed identity) and azureml-mlflow is installed (the
workspace's MLflow). Terraform must have created the workspace, `cpu-cluster` and the endpoint;
AZUREML_QA_ENDPOINT names the endpoint when Terraform's name_suffix was overridden."""

from __future__ import annotations

import importlib.util
import os

import pytest

from conftest import run_cli

pytestmark = pytest.mark.azure_live

SETTINGS = ("AZUREML_QA_RESOURCE_GROUP", "AZUREML_QA_WORKSPACE")
SUBSCRIPTION = os.environ.get("AZURE_QA_SUBSCRIPTION_ID") or os.environ.get("AZURE_SUBSCRIPTION_ID")


def _why_not() -> str:
    if not (SUBSCRIPTION and all(os.environ.get(v) for v in SETTINGS)):
        return f"no QA workspace: set AZURE_SUBSCRIPTION_ID, {', '.join(SETTINGS)}"
    if importlib.util.find_spec("azure.ai.ml") is None or importlib.util.find_spec("azure.identity") is None:
        return "azure-ai-ml and azure-identity are not installed"
    try:
        if importlib.util.find_spec("azureml.mlflow") is None:
            return "azureml-mlflow is not installed (the workspace's MLflow)"
    except ModuleNotFoundError:
        return "azureml-mlflow is not installed (the workspace's MLflow)"
    try:
        from azure.identity import DefaultAzureCredential

        DefaultAzureCredential().get_token("https://management.azure.com/.default")
    except Exception as err:  # noqa: BLE001 (any failure means: no usable credential here)
        return f"no working Azure credential: {str(err).splitlines()[0][:200]}"
    return ""


REASON = _why_not()  # the settings first: without them no credential is tried
QA = ["env=qa", "env.backend=azure", "compute=azure_cpu_cluster", "endpoint=azure_managed", "experiment=fast"]
if os.environ.get("AZUREML_QA_ENDPOINT"):
    QA.append(f"azure.endpoint_name={os.environ['AZUREML_QA_ENDPOINT']}")


@pytest.mark.skipif(bool(REASON), reason=REASON or "ready")
def test_the_qa_quickstart_runs_on_a_real_workspace(tmp_path):
    def step(*args: str, timeout: float = 3600):
        proc = run_cli([*QA, *args], tmp_path, timeout=timeout)
        assert proc.returncode == 0, f"mnistops {' '.join(args)}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        return proc.stdout

    step("stage=provision")
    assert "submitted Azure ML command job" in step("stage=train")
    step("stage=ci", "ci.pytest_args=[--collect-only,-q,tests/test_stage_table.py]", "gate.min_accuracy=0.9")
    deployed = step("stage=cd", "smoke.samples=50", timeout=5400)
    assert "smoke test of https://" in deployed and "passed" in deployed
    assert "monitoring schedule" in step("stage=monitor")
    status = step("stage=endpoint")
    assert "Succeeded" in status and "models:/mnist-classifier/" in status
