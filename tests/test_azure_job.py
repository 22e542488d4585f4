"""Compute steps on Azure: `stage=ci` runs the agent's tests first and submits the rest as ONE job;
the job's own command line, run here as Azure ML would run it (azure.inside_job=true, the
workspace named by AZUREML_ARM_*, MLFLOW_TRACKING_URI), registers through the azure flavour's
registry and keeps the baselines in the workspace's MLflow, where a later job finds them.

Azure ML answers from tests/azure_workspace.py (the SDK's requests are recorded at its HTTP
transport); the workspace's MLflow is a real `mlflow server` reached through its azureml:// URI by
azureml-mlflow (tests/azure_mlflow_server.py); training is a real, small one."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from conftest import needs_module  # a missing extra fails in CI, skips elsewhere
needs_module("azure.ai.ml", "pip install -e '.[azure]'")

from azure_mlflow_server import azure_mlflow, unreachable  # noqa: E402,F401  (azure_mlflow: a fixture)
from azure_workspace import FakeWorkspace, StaticToken  # noqa: E402
from conftest import QUICK, compose, failing_tests  # noqa: E402

from mnistops import tags as T  # noqa: E402

pytestmark = pytest.mark.integration

QA = ["env=qa", "env.backend=azure", "compute=azure_cpu_cluster"]
FAST_TESTS = "ci.pytest_args=[--collect-only,-q,-p,no:cacheprovider,tests/test_stage_table.py]"
GATE = "gate.min_accuracy=0.5"  # QUICK trains a logreg to ~0.85-0.9


def workspace_settings(ws: FakeWorkspace):
    return [f"env.azure.subscription_id={ws.subscription}", f"env.azure.resource_group={ws.resource_group}",
            f"env.azure.workspace={ws.workspace}"]


def ready_workspace(ws: FakeWorkspace, cfg) -> FakeWorkspace:
    """What Terraform and stage=provision made: the cluster, the training environment, the data."""
    from mnistops.backends.azure import code_snapshot, environments
    from mnistops.data import mirrors

    ws.seed_cpu_cluster()
    env = environments.train_environment(cfg)
    ws.seed(f"environments/{env.name}/versions/{env.version}", {"image": env.image})
    ws.seed(f"data/{cfg.azure.data_asset}/versions/{mirrors.digest(cfg)}",
            {"dataType": "uri_folder", "dataUri": "azureml://datastores/workspaceblobstore/paths/raw/"})
    ws.seed(f"codes/{cfg.azure.code_asset}/versions/{code_snapshot.digest(code_snapshot.root())}",
            {"codeUri": "https://st.blob.core.windows.net/azureml-blobstore/LocalUpload/x"})
    return ws


def test_ci_runs_the_tests_here_then_submits_the_other_steps_as_one_job(home, monkeypatch, capfd):
    import mnistops
    from mnistops.backends.azure.workspace import use_transport

    ws = unreachable(FakeWorkspace())  # the agent submits; the job logs the runs
    args = [*QA, *workspace_settings(ws), FAST_TESTS, *QUICK]
    ready_workspace(ws, compose(args, home))
    with use_transport(ws, StaticToken()):
        result = mnistops.run("ci", args)
    assert "test_stage_table.py" in capfd.readouterr().out  # pytest ran here, before anything was sent
    (job,) = ws.sent("PUT", r"jobs/[^/]+")
    props = job.body["properties"]
    command = props["command"]
    assert "stage=ci 'stage.steps=[data,validate,train,evaluate,register,baseline,gate]'" in command
    assert "env.backend=azure azure.inside_job=true" in command and "model=logreg" in command
    assert "env.tracking_uri" not in command and "azure.dry_run" not in command
    assert props["computeId"].endswith("/computes/cpu-cluster") and props["resources"]["instanceCount"] == 1
    assert props["codeId"].lower().endswith(f"/codes/mnistops-code/versions/{ws.sent('GET', r'codes/.*')[0].path.split('/')[-1]}")
    assert props["tags"][T.STAGE] == "ci" and props["environmentVariables"]["MNISTOPS_HOME"] == ".mnistops"
    assert result.run_id == job.path.split("/")[-1]
    assert not ws.sent("PUT", r"computes/.*")  # the cluster is Terraform's


def test_a_failing_test_stops_ci_before_anything_is_submitted(home):
    import mnistops
    from mnistops.backends.azure.workspace import use_transport
    from mnistops.errors import MnistopsError

    ws = unreachable(FakeWorkspace())
    args = [*QA, *workspace_settings(ws), failing_tests(home)]
    ready_workspace(ws, compose(args, home))
    with use_transport(ws, StaticToken()), pytest.raises(MnistopsError, match=r"code tests failed \(pytest exit 1\)"):
        mnistops.run("ci", args)
    assert not ws.sent("PUT", r"jobs/.*")


def test_a_job_that_fails_fails_the_stage_and_a_missing_cluster_names_terraform(home):
    import mnistops
    from mnistops.backends.azure.workspace import use_transport
    from mnistops.errors import MnistopsError

    ws = unreachable(FakeWorkspace(job_status="Failed"))
    args = [*QA, *workspace_settings(ws), "azure.stream_logs=true", *QUICK]
    ready_workspace(ws, compose(args, home))
    with use_transport(ws, StaticToken()), pytest.raises(MnistopsError, match=r"Azure ML job \S+ ended Failed"):
        mnistops.run("train", args)
    (job,) = ws.sent("PUT", r"jobs/[^/]+")
    assert job.body["properties"]["distribution"]["distributionType"] == "PyTorch"  # 2 nodes of DDP
    assert job.body["properties"]["resources"]["instanceCount"] == 2

    empty = unreachable(FakeWorkspace())
    with use_transport(empty, StaticToken()), \
            pytest.raises(MnistopsError, match=r"compute cluster cpu-cluster is not in workspace .*terraform -chdir=infra "
                                               r"apply -var-file=qa.tfvars"):
        mnistops.run("train", [*QA, *workspace_settings(empty)])
    assert not empty.sent("PUT", r".*")


def job_command(home: Path, tmp_path: Path, stage: str, extra) -> list:
    """The overrides on the command line of the job `stage` submits (rendered by a dry run)."""
    import mnistops

    result = mnistops.run(stage, [*QA, "azure.dry_run=true", *extra])
    command = yaml.safe_load(Path(result.artifacts["job"]).read_text())["command"]
    assert command.startswith("mkdir -p .mnistops/data/mnist && cp -rT ${{inputs.dataset}} .mnistops/data/mnist && ")
    return shlex.split(command.split("python -m mnistops ", 1)[1])


def job_run(ws: FakeWorkspace, experiment: str = "mnistops") -> dict:
    """What Azure ML does before a job's command starts: the job's MLflow run, in the job's experiment
    (azure.experiment_name), and the job's token; returned as the MLFLOW_* variables it sets."""
    import time

    import jwt
    from mlflow.tracking import MlflowClient

    service = MlflowClient(ws.mlflow_server.base_url)  # Azure ML's side (plain https), not the job's
    found = service.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else service.create_experiment(experiment)
    run = service.create_run(experiment_id)
    token = jwt.encode({"exp": int(time.time()) + 3600, "appid": "cluster-identity"},
                       "a stand-in signing key: nothing here checks it", algorithm="HS256")  # azureml-mlflow reads exp
    return {"MLFLOW_TRACKING_URI": ws.mlflow_uri, "MLFLOW_TRACKING_TOKEN": token, "MLFLOW_RUN_ID": run.info.run_id,
            "MLFLOW_EXPERIMENT_NAME": experiment, "MLFLOW_EXPERIMENT_ID": experiment_id,
            "AZUREML_RUN_ID": run.info.run_id}


def run_inside_job(args: list, ws: FakeWorkspace, job_home: Path, monkeypatch):
    """`python -m mnistops ARGS` as the job runs it: Azure ML's variables (the workspace's azureml://
    MLflow URI, the job's run and token: azureml-mlflow signs with MLFLOW_TRACKING_TOKEN), a fresh
    MNISTOPS_HOME with the mounted data."""
    import mnistops
    from mnistops.backends.azure.workspace import use_transport

    for key, value in job_run(ws).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AZUREML_ARM_SUBSCRIPTION", ws.subscription)
    monkeypatch.setenv("AZUREML_ARM_RESOURCEGROUP", ws.resource_group)
    monkeypatch.setenv("AZUREML_ARM_WORKSPACE_NAME", ws.workspace)
    monkeypatch.setenv("AZURE_SUBSCRIPTION_ID", "")  # nothing from the agent reaches the job
    (stage,) = [a.split("=", 1)[1] for a in args if a.startswith("stage=")]
    with use_transport(ws, StaticToken("cluster:cpu")):  # a job runs as its cluster's managed identity
        return mnistops.run(stage, [a for a in args if not a.startswith("stage=")] + [f"paths.home={job_home}"])


def test_the_ci_job_registers_through_the_flavour_and_leaves_baselines_for_the_next_job(home, tmp_path, data_cache,
                                                                                         monkeypatch, azure_mlflow):
    """CI's job after training: its register, baseline and gate steps, inside the job, through the flavour.
    The model comes from an earlier job's train and evaluate steps in the same workspace (what CI's job
    trains is no different: the rehearsals train in stage=ci, CI_TRAINING_BUDGET in tests/conftest.py)."""
    import shutil

    ws = azure_mlflow.attach(FakeWorkspace())
    args = job_command(home, tmp_path, "pipeline", [*QUICK, GATE])
    assert "azure.inside_job=true" in args and "model=logreg" in args and GATE in args
    base = [a for a in args if not a.startswith("stage=")]
    trainer = tmp_path / "job-0"
    shutil.copytree(data_cache, trainer / "data")
    run_inside_job([*base, "stage=pipeline", "stage.steps=[data,train,evaluate]"], ws, trainer, monkeypatch)
    from mlflow.tracking import MlflowClient

    service = MlflowClient(ws.mlflow_server.base_url)
    (trained,) = service.search_runs([e.experiment_id for e in service.search_experiments()],
                                     filter_string=f"tags.`{T.STAGE}` = 'train'")
    first = tmp_path / "job-1"
    shutil.copytree(data_cache, first / "data")  # the mounted raw-data asset, copied by the job's command
    result = run_inside_job([*base, "stage=ci", "stage.steps=[data,validate,register,baseline,gate]",
                             f"register.run_id={trained.info.run_id}"], ws, first, monkeypatch)
    assert result.model_uri == "models:/mnist-classifier/1"

    # registration: the version comes from the train run's files, with its lineage
    put = ws.sent("PUT", r"models/mnist-classifier/versions/1")
    created = put[0].body["properties"]
    train_run = created["tags"][T.RUN_ID]
    assert created["modelType"] == "mlflow_model" and created["modelUri"] == f"runs:/{train_run}/model"
    assert created["properties"][T.FILES_RUN_ID] == train_run
    assert created["tags"][T.ENV] == "qa" and len(created["tags"][T.WEIGHTS_SHA256]) == 64
    assert not any(k.startswith(T.ALIAS_PREFIX) for k in created["tags"])
    # then @candidate (register) and @champion (gate), as alias tags on that version, and the decision
    final = ws.resource("models/mnist-classifier/versions/1")["properties"]["tags"]
    assert {T.alias("candidate"), T.alias("champion")} <= set(final) and final[T.GATE_DECISION] == T.APPROVED
    assert not ws.sent("PUT", r"(jobs|onlineendpoints|computes)/.*")  # inside the job nothing is submitted

    # a later job on another node (empty MNISTOPS_HOME) finds the baseline suite in the workspace's MLflow
    second = tmp_path / "job-2"
    shutil.copytree(data_cache, second / "data")
    validated = run_inside_job([a for a in args if not a.startswith("stage")] + ["stage=validate", "validate.batch=test"],
                               ws, second, monkeypatch)
    assert validated.metrics["validate/success"] == 1.0 and "validate/skipped" not in validated.metrics
    from mnistops.backends.azure import model_registry
    from mnistops.backends.azure.workspace import Connection, use_transport

    cfg = compose([*QA, *workspace_settings(ws)], second)
    with use_transport(ws, StaticToken()):
        registry = model_registry.AzureModelRegistry("qa", Connection(cfg), lambda: ws.mlflow_uri)
        champion = registry.resolve("models:/mnist-classifier@champion")
        files = registry.download(champion, tmp_path / "downloaded")
    assert (files / "artifacts" / "model.onnx").is_file() and champion.run_id == train_run
