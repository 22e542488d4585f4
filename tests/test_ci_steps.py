"""stage=ci's first steps: the tests step runs the unit tier and never itself, and a failing
`validate` stops the pipeline before anything is trained or registered."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import QUICK, REPO, compose, fresh_home, mirror_url, mlflow_client, mnist_split, run_cli, runs_of
from mnistops.errors import MnistopsError
from mnistops.stages import tests as tests_step


def test_the_tests_step_runs_the_unit_tier_by_default():
    args = list(compose([]).ci.pytest_args)
    assert args[args.index("-m") + 1] == "unit"


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


@pytest.mark.integration  # the one run of stage=ci with the default ci.pytest_args: the whole unit tier inside
def test_stage_ci_passes_on_a_fresh_agent_clone_with_the_default_tests(tmp_path, data_cache):
    """What a GitHub or Azure DevOps agent does: a clone of the committed HEAD with nothing beside it (no
    ../shared/), CI=true, `python -m mnistops env=qa stage=ci` with the default ci.pytest_args (the unit
    tier, in which a missing tool fails instead of skipping); only training is shortened. The MNIST files
    come through the data mirror, as .ci/run points it at a mirror of its own."""
    agent = tmp_path / "agent"
    agent.mkdir()
    clone = agent / "mnistops"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, timeout=300,
                   capture_output=True)
    assert sorted(p.name for p in agent.iterdir()) == ["mnistops"]  # no shared/ beside the checkout
    home = tmp_path / "home"
    shutil.copytree(data_cache, home / "data")
    (tmp_path / "tmp").mkdir()
    # (bytecode written: the clone's __pycache__ shows whose code ran)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE", tests_step.INSIDE)}
    env.update(CI="true", MNISTOPS_HOME=str(home), MNISTOPS_DATA_MIRROR=mirror_url(), PYTHONUNBUFFERED="1",
               TMPDIR=str(tmp_path / "tmp"))  # the inner pytest's tmp dirs stay apart from this session's
    proc = subprocess.run([sys.executable, "-m", "mnistops", "env=qa", "stage=ci", *QUICK, "gate.min_accuracy=0.8"],
                          cwd=clone, env=env,
                          capture_output=True, text=True, timeout=2400)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"stage=ci failed in a fresh clone ({proc.returncode}):\n{out[-8000:]}"
    assert f"ci: running pytest {' '.join(compose([]).ci.pytest_args)}" in proc.stdout
    summary = re.search(r"^(\d+) passed(.*) in [\d.]+s", proc.stdout, re.M)
    assert summary and int(summary.group(1)) >= 100, proc.stdout[-4000:]
    assert "failed" not in summary.group(2) and "error" not in summary.group(2), summary.group(0)
    # the clone's own code and tests ran (not this checkout's): Python compiled them there
    assert list((clone / "mnistops" / "stages" / "__pycache__").glob("tests.*.pyc"))
    assert list((clone / "tests" / "__pycache__").glob("test_pipeline_tools*.pyc"))
    client = mlflow_client(home, "qa")
    (ci,) = runs_of(client, "ci")
    assert ci.info.status == "FINISHED" and ci.data.metrics["ci/tests_passed"] == 1.0
    assert runs_of(client, "train"), "stage=ci stopped after its tests step"
