"""stage=ci's first steps: the tests step runs the unit tier and never itself, and a failing
`validate` stops the pipeline before anything is trained or registered."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import QUICK, compose, fresh_home, mlflow_client, mnist_split, run_cli, runs_of
from mnistops.errors import MnistopsError
from mnistops.stages import tests as tests_step


def test_the_tests_step_runs_the_unit_tier_by_default():
    args = list(compose([]).ci.pytest_args)
    assert args[args.index("-m") + 1] == "not integration"


def test_the_tests_step_refuses_to_run_inside_itself(tmp_path, monkeypatch):
    monkeypatch.setenv(tests_step.INSIDE, "1")  # as in the pytest that a tests step started
    with pytest.raises(MnistopsError, match="started by a test that stage=ci's tests step runs"):
        tests_step.run(compose(["stage=ci"], tmp_path))


@pytest.mark.integration
def test_a_failing_validate_stops_ci_before_training(tmp_path_factory, data_cache, tmp_path):
    home = fresh_home(tmp_path_factory, data_cache, "ci-validate-home")
    run_cli(["env=qa", "stage=baseline"], home, check=True)  # the suite new data is checked against
    images, labels = mnist_split(home, "test", 1000)
    inverted = tmp_path / "inverted.npz"
    np.savez(inverted, images=255 - images, labels=labels)

    proc = run_cli(["env=qa", "stage=ci", *QUICK, f"validate.batch={inverted}"], home, timeout=900)
    assert proc.returncode == 2 and "validation of" in proc.stderr and "mean_intensity" in proc.stderr
    assert "ci: running" not in proc.stdout, "the tests step ran after a failed validate"
    client = mlflow_client(home, "qa")
    (ci,) = runs_of(client, "ci")
    assert ci.info.status == "FAILED"
    (validate,) = runs_of(client, "validate")
    assert validate.data.tags["mlflow.parentRunId"] == ci.info.run_id
    assert validate.data.tags["mnistops.validation"] == "failed"
    assert runs_of(client, "train") == [] and client.search_registered_models() == []
