"""CD with its automatic rollback, and promotion between the default local stores (one MNISTOPS_HOME,
a sqlite store per env, no tracking server), on a QA champion made by the stages stage=ci runs
(pipeline: data -> train -> evaluate -> register, then gate). What tests/test_pipelines_rehearsal.py
already checks of the chain is not repeated here: stage=ci itself (its steps under one run, the tests
step, the baselines kept in the store), CD to QA that stops the chain, promotion's refusals and
idempotence, the lineage tags, PROD serving exactly QA's weights."""

from __future__ import annotations

import hashlib

import pytest

from conftest import QUICK, free_port, fresh_home, mlflow_client, run_cli

pytestmark = pytest.mark.integration  # qa -> prod through the CLI: trains, deploys, serves

MODEL = "mnist-classifier"
# smoke's limits explicit: its 250 ms p95 default is a production bar, not what this chain checks on a busy CI
SMOKE = ["smoke.min_accuracy=0.8", "smoke.samples=100", "smoke.max_p95_ms=10000"]


@pytest.fixture(scope="module")
def flow(tmp_path_factory, data_cache):
    """A QA store with an approved champion (v1), no stage=ci: the quick recipe through stage=pipeline
    and the real gate."""
    home = fresh_home(tmp_path_factory, data_cache, "cicd-home")
    ports = {env: f"endpoint.port={free_port()}" for env in ("qa", "prod")}
    run_cli(["env=qa", "stage=pipeline", *QUICK], home, check=True, timeout=900)
    run_cli(["env=qa", "stage=gate", "gate.min_accuracy=0.8"], home, check=True)
    yield home, ports
    for env in ("qa", "prod"):
        run_cli([f"env={env}", "stage=endpoint", "endpoint.action=stop", ports[env]], home)


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cd_rolls_back_a_failing_version_and_promotion_copies_between_local_stores(flow):
    home, ports = flow
    qa = ["env=qa", ports["qa"], "gate.min_accuracy=0.8", *SMOKE]
    assert not (home / "dev").exists() and not (home / "prod").exists(), "env=qa writes to QA's store only"
    client = mlflow_client(home, "qa")
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"

    # CD in QA: deploy the champion, smoke test
    cd = run_cli(["stage=cd", *qa], home, check=True)
    assert f"deployed models:/{MODEL}/1" in cd.stdout and "passed" in cd.stdout

    # a new champion (same run re-registered: v2) whose smoke test fails is rolled back to v1 serving
    train_run = client.get_model_version(MODEL, "1").run_id
    run_cli(["stage=register", *qa, f"register.run_id={train_run}"], home, check=True)
    run_cli(["stage=gate", *qa], home, check=True)
    bad_cd = run_cli(["stage=cd", *qa, "smoke.min_accuracy=0.9999"], home)
    assert bad_cd.returncode == 2 and "rolled back" in bad_cd.stderr, bad_cd.stderr[-3000:]
    status = run_cli(["stage=endpoint", *qa], home, check=True).stdout
    assert "traffic {'blue': 100}" in status, status
    assert client.get_model_version(MODEL, "2").tags["mnistops.smoke.qa"] == "failed"

    # once its smoke test passes, promotion copies it from QA's sqlite store into PROD's
    run_cli(["stage=cd", *qa], home, check=True)
    promoted = run_cli(["env=prod", "stage=promote"], home, check=True)
    assert f"promoted qa {MODEL}/2 -> prod models:/{MODEL}/1 (@champion)" in promoted.stdout
    pv = mlflow_client(home, "prod").get_model_version_by_alias(MODEL, "champion")
    assert pv.tags["mnistops.source_env"] == "qa" and pv.tags["mnistops.source_version"] == "2"

    # CD in PROD serves exactly the QA-approved weights, read from its own store
    run_cli(["env=prod", "stage=cd", ports["prod"], *SMOKE], home, check=True)
    served = home / "prod" / "endpoints" / "mnist" / "models" / f"{MODEL}-v1" / "artifacts" / "model.onnx"
    qa_served = home / "qa" / "endpoints" / "mnist" / "models" / f"{MODEL}-v2" / "artifacts" / "model.onnx"
    assert sha256(served) == sha256(qa_served) == client.get_model_version(MODEL, "2").tags["mnistops.weights_sha256"]
