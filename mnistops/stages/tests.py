"""The `tests` step of stage=ci: the project's unit tier of tests by default (`ci.pytest_args`:
`-m unit`, the tests marked neither integration nor azure_live: nothing trains, no server starts), run from the source checkout. A failing
test stops the pipeline before anything is trained. A test run by this step may not run stage=ci's
tests step again (it would test itself without end): that is refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from omegaconf import DictConfig

from mnistops.errors import MnistopsError
from mnistops.stages import StageResult

INSIDE = "MNISTOPS_INSIDE_CI_TESTS"  # set for the pytest this step runs


def run(cfg: DictConfig) -> StageResult:
    if os.environ.get(INSIDE):
        raise MnistopsError("stage=ci's tests step was started by a test that stage=ci's tests step runs; "
                            "mark that test integration (the default ci.pytest_args leave integration tests out)")
    repo = Path(__file__).resolve().parents[2]
    if not (repo / "tests").is_dir():
        raise MnistopsError(f"the ci tests step needs the source checkout's tests/ (not found under {repo})")
    cmd = [sys.executable, "-m", "pytest", *cfg.ci.pytest_args]
    print(f"ci: running {' '.join(cmd[2:])}")
    proc = subprocess.run(cmd, cwd=repo, env={**os.environ, INSIDE: "1"})
    if proc.returncode != 0:
        raise MnistopsError(f"code tests failed (pytest exit {proc.returncode}): {' '.join(cfg.ci.pytest_args)}")
    return StageResult("tests", metrics={"ci/tests_passed": 1.0})
