"""The `tests` step of stage=ci: the project's fast pytest suite (ci.pytest_args), run from the
source checkout. A failing test stops the pipeline before anything is trained."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from omegaconf import DictConfig

from mnistops.errors import MnistopsError
from mnistops.stages import StageResult


def run(cfg: DictConfig) -> StageResult:
    repo = Path(__file__).resolve().parents[2]
    if not (repo / "tests").is_dir():
        raise MnistopsError(f"the ci tests step needs the source checkout's tests/ (not found under {repo})")
    cmd = [sys.executable, "-m", "pytest", *cfg.ci.pytest_args]
    print(f"ci: running {' '.join(cmd[2:])}")
    proc = subprocess.run(cmd, cwd=repo)
    if proc.returncode != 0:
        raise MnistopsError(f"code tests failed (pytest exit {proc.returncode}): {' '.join(cfg.ci.pytest_args)}")
    return StageResult("tests", metrics={"ci/tests_passed": 1.0})
