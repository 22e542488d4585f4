"""The `tests` step of stage=ci: the project's unit tier of tests by default (`ci.pytest_args`:
`-m unit`, the tests marked neither integration nor azure_live: nothing trains, no server starts), run from the source checkout. A failing
test stops the pipeline before anything is trained. A test run by this step may not run stage=ci's
tests step again (it would test itself without end): that is refused. The tests run without the
agent's store and workspace settings (an agent of `mnistops-qa` has MNISTOPS_QA_TRACKING_URI set for
its pipeline's steps): a code test that composed env=qa would otherwise reach QA's tracking server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from omegaconf import DictConfig

from mnistops.errors import MnistopsError
from mnistops.stages import StageResult

INSIDE = "MNISTOPS_INSIDE_CI_TESTS"  # set for the pytest this step runs
# what points a run at a real store or workspace: conf/env/*.yaml's settings, MLflow's, Azure's
AGENT_SETTINGS = re.compile(r"MNISTOPS_\w+_TRACKING_URI|MLFLOW_TRACKING_URI|MLFLOW_REGISTRY_URI|AZURE_\w+|AZUREML_\w+")


def code_tests_environment(environ) -> dict:
    """The environment of the pytest this step starts: the agent's, less its store and workspace settings."""
    return {**{k: v for k, v in environ.items() if not AGENT_SETTINGS.fullmatch(k)}, INSIDE: "1"}


def run(cfg: DictConfig) -> StageResult:
    if os.environ.get(INSIDE):
        raise MnistopsError("stage=ci's tests step was started by a test that stage=ci's tests step runs; "
                            "mark that test integration (the default ci.pytest_args leave integration tests out)")
    repo = Path(__file__).resolve().parents[2]
    if not (repo / "tests").is_dir():
        raise MnistopsError(f"the ci tests step needs the source checkout's tests/ (not found under {repo})")
    cmd = [sys.executable, "-m", "pytest", *cfg.ci.pytest_args]
    print(f"ci: running {' '.join(cmd[2:])}")
    proc = subprocess.run(cmd, cwd=repo, env=code_tests_environment(os.environ))
    if proc.returncode != 0:
        raise MnistopsError(f"code tests failed (pytest exit {proc.returncode}): {' '.join(cfg.ci.pytest_args)}")
    return StageResult("tests", metrics={"ci/tests_passed": 1.0})
