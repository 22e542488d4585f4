"""ci.yml's provision step and the README's Azure quickstart job run as an agent runs them, and the
Azure ML job submitted run as Azure ML runs it
(tests/azure_job_executor.py): a fresh virtualenv from the training environment's own conda file, the
uploaded code snapshot from Azurite, the command line as submitted, Azure ML's job variables and the
cluster's managed identity. Issue #17 item 2; what it catches: an environment without what the
in-job steps import (item 3), a snapshot without what the job runs (item 10), the job's own mlflow
and azureml-mlflow (item 11), the cluster identity's roles (item 4)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

import pipeline_files as pf
from conftest import QUICK, needs_module

needs_module("azure.ai.ml", "pip install -e '.[azure]'")

from azure_job_executor import WHEELS, EnvironmentSpec, JobExecutor, JobVenvs  # noqa: E402
from azure_job_executor import job_venvs  # noqa: E402,F401  (a fixture)
from azure_mlflow_server import azure_mlflow  # noqa: E402,F401  (a fixture)
from test_azure_steps_as_processes import STEP_TIMEOUT, blobs, qa, run_step, variable_group  # noqa: E402,F401

pytestmark = pytest.mark.integration



def train_spec() -> EnvironmentSpec:
    """The training environment's spec as the flavour builds it (what provision PUTs)."""
    from mnistops.backends.azure import environments

    return EnvironmentSpec.from_conda(environments.conda_spec("mnistops-train", environments.train_requirements()))


def run_agent_step(step: pf.Step, stand_in, data_cache: Path, cwd: Path) -> subprocess.CompletedProcess:
    """tests/test_azure_steps_as_processes.py's run_step, with azure-ai-ml's own polling cap
    (AZUREML_RUN_POLLING_INTERVAL_MAX, seconds) lowered so that `ml.jobs.stream` sees the job's end
    within seconds instead of up to a minute: the agent's environment, not the pipeline's."""
    return run_step(step, stand_in, data_cache, cwd, STEP_TIMEOUT + 600, AZUREML_RUN_POLLING_INTERVAL_MAX="3")


def test_a_pipeline_job_runs_in_a_fresh_venv_from_its_environment_and_registers_a_model(qa, tmp_path, data_cache,
                                                                                       job_venvs):
    """ci.yml's provision step as written, then the README's Azure quickstart job (`stage=pipeline`: data,
    train, evaluate, register in one job) on the same agent. (Not ci.yml's ci step: its job trains in
    stage=ci, which CI_TRAINING_BUDGET in tests/conftest.py keeps to the rehearsal and the notebook.)"""
    import dataclasses

    from mlflow.tracking import MlflowClient

    from mnistops.backends.azure import code_snapshot
    from test_azure_registry import NAME
    from test_azure_steps_as_processes import agent_step

    ws, stand_in = qa
    blobs(stand_in, ws)
    stand_in.serve_pending_uploads(ws)
    executor = JobExecutor(stand_in, ws, job_venvs, tmp_path / "compute")
    agent = tmp_path / "agent"
    provision = agent_step("ci.yml", "provision", {"Pipeline.Workspace": str(agent), **variable_group(ws, "qa", "mnist-qa")})
    quickstart = dataclasses.replace(provision, raw="python -m mnistops $A stage=pipeline", args=[
        "env=qa", "env.backend=azure", "compute=azure_cpu_cluster", "stage=pipeline", *QUICK])
    try:
        done = []
        for number, step in enumerate((provision, quickstart)):
            done.append((step, run_agent_step(step, stand_in, data_cache, agent / f"step-{number}")))
            if done[-1][1].returncode:
                break
        executor.wait(120)  # the agent followed the job to its end already
    finally:
        executor.stop()
    (name, job), = executor.jobs.items()
    report = (f"\n--- job {name}: {job.error or ''} statuses {job.statuses}\n--- job stdout\n{job.stdout[-4000:]}"
              f"\n--- job stderr\n{job.stderr[-6000:]}")
    assert [s.value("stage") for s, _ in done] == ["provision", "pipeline"], report
    for step, proc in done:
        assert proc.returncode == 0, f"{step.raw}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}{report}"
    assert job.returncode == 0 and job.statuses == ["Queued", "Preparing", "Running", "Completed"], report
    agent = done[1][1].stdout
    assert f"job {name} completed" in agent  # the agent followed it through run history, and printed its log
    assert "registered models:/mnist-classifier/1" in agent and "registered models:/" in job.stdout, agent[-3000:]

    # it ran as submitted, in the venv built from the environment version provision created
    (put,) = ws.sent("PUT", r"jobs/[^/]+")
    assert put.body["properties"]["command"] == job.command and "python -m mnistops" in job.command
    (env_put,) = [r for r in ws.sent("PUT", r"environments/mnistops-train/versions/[^/]+")]
    spec = EnvironmentSpec.from_conda(env_put.body["properties"]["condaFile"])
    assert job.venv == job_venvs.root / spec.digest and spec == train_spec()
    assert shutil.which("python", path=job.env["PATH"]) == str(job.venv / "bin" / "python")
    assert not any(k.startswith(("MNISTOPS_DATA", "AZURE_QA", "AZUREML_QA")) for k in job.env), sorted(job.env)
    assert job.env["MLFLOW_TRACKING_URI"].startswith(f"azureml://{ws.location}.api.azureml.ms/mlflow/v1.0/")
    # from the snapshot Azurite holds, without what .amlignore leaves out
    assert (job.workdir / "mnistops" / "__main__.py").is_file() and not (job.workdir / "tests").exists()
    # the snapshot azure-ai-ml uploaded into the workspace's blob container is the checkout without .git,
    # tests, benchmarks, the virtualenv or the tools' caches (.amlignore; the first run found .hypothesis/
    # uploaded: a new code version per test run), and the job names that code version
    (code,) = ws.sent("PUT", r"codes/mnistops-code/versions/[^/]+")
    assert put.body["properties"]["codeId"].lower().endswith(ws.relative(code.path))
    code_uri = code.body["properties"]["codeUri"]  # https://<account>.blob.core.windows.net/<container>/<folder>
    container, folder = code_uri.split(".blob.core.windows.net/", 1)[1].split("/", 1)
    with stand_in.reached():
        stored = [b.name for b in stand_in.azurite.container(ws.blobstore.account, container, create=False).list_blobs()]
    files = [n[len(folder) + 1:] for n in stored if n.startswith(folder + "/")]
    assert {code_snapshot.SCORING_SCRIPT, "pyproject.toml", "mnistops/__main__.py"} <= set(files), (code_uri, stored[:5])
    assert len(files) == len(stored)
    tops = {f.split("/")[0] for f in files}
    assert not tops & {".git", "tests", "benchmarks", ".venv", ".tools", ".hypothesis", ".pytest_cache", ".ruff_cache",
                       ".grimp_cache", ".import_linter_cache"}, sorted(tops)
    # as the cluster's managed identity (MSI_ENDPOINT), with no role refused
    assert job.env["MSI_ENDPOINT"] and executor.msi.asked, "the job never asked the managed identity for a token"
    assert not ws.denied and not ws.refused, (ws.denied, ws.refused)

    # it trained and registered: the job's run (its id the job's name, as on Azure) in QA's MLflow holds the
    # metrics and the model's files, and the version names that run
    service = MlflowClient(ws.mlflow_server.base_url)
    runs = service.search_runs([service.get_experiment_by_name(put.body["properties"]["experimentName"]).experiment_id])
    assert any(r.data.metrics for r in runs), [(r.info.run_id, r.data.metrics) for r in runs]
    model = ws.sent("PUT", f"models/{NAME}/versions/1")[0]  # then tag updates (aliases)
    source = model.body["properties"]["modelUri"]  # runs:/<run>/model
    run_id = source.split("/")[1]
    assert run_id in {r.info.run_id for r in runs}, (source, [r.info.run_id for r in runs])
    assert "MLmodel" in {Path(f.path).name for f in service.list_artifacts(run_id, "model")}
    # the steps' runs nest under the job's own run (MLFLOW_RUN_ID; azureml-mlflow leaves its status to run
    # history, which the executor plays)
    steps = {r.info.run_name: r.data.tags.get("mlflow.parentRunId") for r in runs if r.info.run_id != name}
    assert {"data", "train"} <= set(steps) and set(steps.values()) == {name}, steps
    assert run_id == next(r.info.run_id for r in runs if r.info.run_name == "train")  # evaluated and registered
    assert service.get_run(name).info.status == "FINISHED"


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
