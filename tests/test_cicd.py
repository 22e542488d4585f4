"""dev -> qa -> prod end to end on small real data, each env with its own store: CI in QA with real
quality gates, CD with smoke test and automatic rollback, promotion of exactly the approved
version into PROD's registry, and PROD serving the same weights."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from conftest import QUICK, free_port, fresh_home, mlflow_client, run_cli, runs_of
from mnistops.data.idx import read_idx

pytestmark = pytest.mark.integration  # dev -> qa -> prod through the CLI: trains, deploys, serves

FAST_TESTS = "ci.pytest_args=[tests/test_config.py::test_default_main_job_is_the_dev_pipeline,-q,-p,no:cacheprovider]"


@pytest.fixture(scope="module")
def flow(tmp_path_factory, data_cache):
    home = fresh_home(tmp_path_factory, data_cache, "cicd-home")
    ports = {env: f"endpoint.port={free_port()}" for env in ("qa", "prod")}
    yield home, ports
    for env in ("qa", "prod"):
        run_cli([f"env={env}", "stage=endpoint", "endpoint.action=stop", ports[env]], home)


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_dev_qa_prod(flow, tmp_path):
    home, ports = flow
    # smoke's limits explicit: its 250 ms p95 default is a production bar, not what this chain checks on a busy CI
    smoke = ["smoke.min_accuracy=0.8", "smoke.samples=100", "smoke.max_p95_ms=10000"]
    qa = ["env=qa", ports["qa"], "gate.min_accuracy=0.8", *smoke]

    # (a failing code-test step, refused data and a worse candidate stopping CI: test_api.py,
    # test_ci_steps.py and test_gate.py; here the whole chain across the envs' stores)
    # CI in QA: data -> validate -> tests -> train -> evaluate -> register -> baseline -> gate
    ci = run_cli(["stage=ci", *qa, *QUICK, FAST_TESTS], home, check=True, timeout=900)
    assert not (home / "dev").exists(), "env=qa writes to QA's store only"
    client = mlflow_client(home, "qa")
    assert "no baseline suite in env 'qa' yet" in ci.stdout and "1 passed" in ci.stdout
    assert "gate approved models:/mnist-classifier/1" in ci.stdout
    (parent,) = runs_of(client, "ci")
    assert parent.info.status == "FINISHED"
    for stage in ("data", "train", "baseline", "gate"):
        assert runs_of(client, stage)[0].data.tags["mlflow.parentRunId"] == parent.info.run_id
    v1 = client.get_model_version_by_alias("mnist-classifier", "champion")
    assert str(v1.version) == "1" and v1.tags["mnistops.gate.decision"] == "approved"
    baseline_run = runs_of(client, "baseline")[0]
    names = {a.path for a in client.list_artifacts(baseline_run.info.run_id, "quality")}
    assert {"quality/data_docs", "quality/suite.json"} <= names  # the baseline lives in the env's store
    assert not (home / "qa" / "quality").exists(), "no baseline only in a local folder"

    # a second CI run validates the new training data against the first run's suite
    baseline = run_cli(["stage=baseline", *qa], home, check=True)
    assert "model-quality baseline: models:/mnist-classifier/1" in baseline.stdout
    ok = run_cli(["stage=validate", *qa, "validate.batch=test"], home, check=True)
    assert "PASSED" in ok.stdout

    # a corrupted dataset is refused by validate, naming what failed
    images = read_idx(home / "data" / "mnist" / "t10k-images-idx3-ubyte")[:1000]
    labels = read_idx(home / "data" / "mnist" / "t10k-labels-idx1-ubyte")[:1000]
    bad = tmp_path / "inverted.npz"
    np.savez(bad, images=255 - images, labels=labels)
    refused = run_cli(["stage=validate", *qa, f"validate.batch={bad}"], home, timeout=300)
    assert refused.returncode == 2 and "validation of" in refused.stderr and "mean_intensity" in refused.stderr
    assert "FAILED" in refused.stdout

    # CD in QA: deploy the champion, smoke test
    cd = run_cli(["stage=cd", *qa], home, check=True)
    assert "deployed models:/mnist-classifier/1" in cd.stdout and "passed" in cd.stdout

    # a new champion (same run re-registered: v2) whose smoke test fails is rolled back
    train_run = client.get_model_version("mnist-classifier", "1").run_id
    run_cli(["stage=register", *qa, f"register.run_id={train_run}"], home, check=True)
    run_cli(["stage=gate", *qa], home, check=True)
    bad_cd = run_cli(["stage=cd", *qa, "smoke.min_accuracy=0.9999"], home)
    assert bad_cd.returncode == 2 and "rolled back" in bad_cd.stderr
    status = run_cli(["stage=endpoint", *qa], home, check=True).stdout
    assert "traffic {'blue': 100}" in status
    assert client.get_model_version("mnist-classifier", "2").tags["mnistops.smoke.qa"] == "failed"

    # promotion refuses what QA has not approved (v2 failed its smoke test) ...
    refused = run_cli(["env=prod", "stage=promote"], home)
    assert refused.returncode == 2 and "has not passed a smoke test in qa" in refused.stderr
    # ... and copies it once it passes
    run_cli(["stage=cd", *qa], home, check=True)
    promoted = run_cli(["env=prod", "stage=promote"], home, check=True)
    assert "promoted qa mnist-classifier/2 -> prod models:/mnist-classifier/1 (@champion)" in promoted.stdout
    again = run_cli(["env=prod", "stage=promote"], home, check=True)
    assert "no change" in again.stdout
    prod = mlflow_client(home, "prod")
    pv = prod.get_model_version_by_alias("mnist-classifier", "champion")
    qv = mlflow_client(home, "qa").get_model_version("mnist-classifier", "2")
    for tag in ("mnistops.weights_sha256", "mnistops.dataset_digest", "mnistops.run_id"):
        assert pv.tags[tag] == qv.tags[tag]
    assert pv.tags["mnistops.source_env"] == "qa" and pv.tags["mnistops.source_version"] == "2"
    assert pv.tags["mnistops.gate.decision"] == "approved"
    assert runs_of(prod, "train") == [], "promotion never retrains"

    # CD in PROD serves exactly the QA-approved weights
    run_cli(["env=prod", "stage=cd", ports["prod"], *smoke], home, check=True)
    served = home / "prod" / "endpoints" / "mnist" / "models" / "mnist-classifier-v1" / "artifacts" / "model.onnx"
    qa_served = home / "qa" / "endpoints" / "mnist" / "models" / "mnist-classifier-v2" / "artifacts" / "model.onnx"
    assert sha256(served) == sha256(qa_served) == qv.tags["mnistops.weights_sha256"]
