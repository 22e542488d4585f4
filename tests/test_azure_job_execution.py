"""The job venvs of the Azure stand-in (tests/azure_job_executor.py), in which a submitted Azure ML
job runs as Azure ML runs it: built only from the environment's own conda file over a local wheel cache.
The job itself (ci.yml's ci step: its job trains, registers, baselines and gates in such a venv, from the
code snapshot in Azurite, as the cluster's managed identity) runs in tests/test_azure_release_chain.py.
What these catch: an environment without what the in-job steps import (issue #17 item 3) and the job's
own mlflow and azureml-mlflow (item 11)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

from conftest import needs_module

needs_module("azure.ai.ml", "pip install -e '.[azure]'")

from azure_job_executor import WHEELS, EnvironmentSpec, JobVenvs  # noqa: E402
from azure_job_executor import job_venvs  # noqa: E402,F401  (a fixture)

pytestmark = pytest.mark.integration


def train_spec() -> EnvironmentSpec:
    """The training environment's spec as the flavour builds it (what provision PUTs)."""
    from mnistops.backends.azure import environments

    return EnvironmentSpec.from_conda(environments.conda_spec("mnistops-train", environments.train_requirements()))


def test_a_job_venv_holds_what_its_spec_resolves_to_and_no_azure_ai_ml_without_it(job_venvs):
    """The venv is built from the spec alone: pip's own resolution of the spec over the wheel cache is
    exactly what the venv holds, and the same spec without its azure-ai-ml line resolves no azure-ai-ml
    (a training environment without it fails register, baseline and gate inside the job: item 3)."""
    spec = train_spec()
    venv = job_venvs.venv(spec)
    installed = JobVenvs.installed(venv)
    resolved = resolve(venv, list(spec.pip))
    venv_own = ("pip", "setuptools")  # what `python -m venv` puts there itself
    assert {k: v for k, v in installed.items() if k not in venv_own} == \
        {k: v for k, v in resolved.items() if k not in venv_own}
    assert "azure-ai-ml" in installed and "azureml-mlflow" in installed
    from importlib import metadata

    assert installed["mlflow"] == metadata.version("mlflow")  # the job runs the agent's mlflow (item 11)
    assert "pytest" not in installed and "mnistops" not in installed  # the agent's, not the job's
    without = resolve(venv, [r for r in spec.pip if not r.startswith("azure-ai-ml")])
    assert "azure-ai-ml" not in without and "azureml-mlflow" in without


def resolve(venv: Path, requirements: List[str]) -> Dict[str, str]:
    """{name: version} pip would install into an empty venv for `requirements` from the wheel cache."""
    import re
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        report, reqs = Path(scratch) / "report.json", Path(scratch) / "requirements.txt"
        reqs.write_text("\n".join(requirements) + "\n")
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--dry-run", "--ignore-installed", "-q",
                        "--no-index", "--find-links", str(WHEELS), "--report", str(report), "-r", str(reqs)],
                       env={"PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PATH": os.defpath},
                       check=True, capture_output=True, text=True)
        items = json.loads(report.read_text())["install"]
    return {re.sub(r"[-_.]+", "-", i["metadata"]["name"]).lower(): i["metadata"]["version"] for i in items}


def test_a_spec_asking_for_a_wheel_the_cache_lacks_fails_in_one_line(tmp_path, job_venvs):
    from azure_job_executor import WheelMissing

    cache = tmp_path / "wheels"
    cache.mkdir()
    shutil.copy(next(job_venvs.wheels.glob("*.whl")), cache)  # a cache, without what the spec asks for
    spec = EnvironmentSpec(f"{sys.version_info.major}.{sys.version_info.minor}", ("no-such-distribution-mnistops==1.0",))
    with pytest.raises(WheelMissing) as err:
        JobVenvs(tmp_path / "venvs", cache).venv(spec)
    assert "\n" not in str(err.value) and "no-such-distribution-mnistops==1.0" in str(err.value), err.value
    assert not (tmp_path / "venvs" / spec.digest).exists()
