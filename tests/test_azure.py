"""The azure flavour without Azure: every entity a stage would create is rendered offline
(azure.dry_run=true) by the real CLI and read back through the SDK's own loaders; provisioning
creates what Terraform does not own and never a cluster; missing settings and credentials fail in
one line; the scoring script serves a real registered model through its init()/run() contract.
Nothing here talks to Azure: live calls go through tests/azure_workspace.py's recorded answers."""

from __future__ import annotations

import hashlib
import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import QUICK, REPO, compose, run_cli

from conftest import needs_module  # a missing extra fails in CI, skips elsewhere
needs_module("azure.ai.ml", "pip install -e '.[azure]'")
pytestmark = pytest.mark.integration  # CLI subprocesses, MLflow stores, a trained model

from azure_mlflow_server import unreachable  # noqa: E402
from azure_workspace import FakeWorkspace, StaticToken  # noqa: E402

NO_WORKSPACE = {"AZURE_SUBSCRIPTION_ID": "", "AZURE_QA_SUBSCRIPTION_ID": "", "AZURE_PROD_SUBSCRIPTION_ID": "",
                "AZUREML_QA_RESOURCE_GROUP": "", "AZUREML_QA_WORKSPACE": "",
                "AZUREML_PROD_RESOURCE_GROUP": "", "AZUREML_PROD_WORKSPACE": ""}
SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
WORKSPACE = {**NO_WORKSPACE, "AZURE_SUBSCRIPTION_ID": SUBSCRIPTION, "AZURE_QA_SUBSCRIPTION_ID": SUBSCRIPTION,
             "AZUREML_QA_RESOURCE_GROUP": "rg-mnistops-qa", "AZUREML_QA_WORKSPACE": "mlw-mnistops-qa",
             # DefaultAzureCredential limited to its environment credential, left unconfigured: no login
             # anywhere on this machine can be found, and no token endpoint is called
             "AZURE_TOKEN_CREDENTIALS": "EnvironmentCredential"}
QA_ENDPOINT = f"mnist-qa-{hashlib.sha1(f'{SUBSCRIPTION}/qa'.encode()).hexdigest()[:6]}"  # infra/main.tf's rule


def dry_run(tmp_path: Path, *args: str, env: dict = NO_WORKSPACE) -> dict:
    """Run the CLI with azure.dry_run=true; {file stem: path} of what it wrote."""
    proc = run_cli(["env.backend=azure", "azure.dry_run=true", *args], tmp_path, env=env, timeout=180, check=True)
    written = [Path(line.split(" -f ", 1)[1]) for line in proc.stdout.splitlines() if line.strip().startswith("az ml ")]
    assert written and all(p.is_file() for p in written), proc.stdout
    assert "nothing was sent" in proc.stdout
    return {p.stem: p for p in written}


def test_provision_renders_environments_and_data_assets_and_no_cluster(tmp_path):
    from azure.ai.ml import load_data, load_environment

    from mnistops.data import mirrors

    files = dry_run(tmp_path, "env=qa", "stage=provision", "compute=azure_gpu_cluster")
    assert set(files) == {"environment-mnistops-train", "environment-mnistops-inference", "data-mnist-raw",
                          "data-mnist-reference-features"}  # the cluster is Terraform's
    train_env = load_environment(files["environment-mnistops-train"])
    pip = train_env.conda_file["dependencies"][-1]["pip"]
    assert any(p.startswith("lightning") for p in pip) and any(p.startswith("azureml-mlflow") for p in pip)
    infer_env = load_environment(files["environment-mnistops-inference"])
    infer_pip = infer_env.conda_file["dependencies"][-1]["pip"]
    assert all("==" in p for p in infer_pip) and any(p.startswith("onnxruntime==") for p in infer_pip)
    assert not any(p.startswith(("torch", "mlflow")) for p in infer_pip)  # a small, pinned scoring image
    digest = mirrors.digest(compose(["env=qa"], tmp_path))
    raw, reference = load_data(files["data-mnist-raw"]), load_data(files["data-mnist-reference-features"])
    assert (raw.type, raw.version, reference.type, reference.version) == ("uri_folder", digest, "mltable", digest)


def test_train_becomes_a_multi_node_ddp_command_job_of_the_same_entrypoint(tmp_path):
    from azure.ai.ml import load_job

    files = dry_run(tmp_path, "env=qa", "stage=train", "compute=azure_cpu_cluster", "compute.instance_count=3",
                    "compute.process_count_per_instance=2", "model=logreg", "trainer.max_epochs=2", "paths.home=/x")
    job = load_job(files["job-train"])
    assert job.type == "command" and job.compute == "cpu-cluster"
    assert job.resources.instance_count == 3
    assert job.distribution.type == "pytorch" and job.distribution.process_count_per_instance == 2
    assert "python -m mnistops env=qa compute=azure_cpu_cluster" in job.command
    assert "model=logreg trainer.max_epochs=2 stage=train env.backend=azure azure.inside_job=true" in job.command
    assert "compute.num_nodes=3 compute.devices=2 compute.strategy=ddp" in job.command
    assert "azure.dry_run" not in job.command and "paths.home" not in job.command and "tracking_uri" not in job.command
    assert job.inputs["dataset"].path.split(":")[-2] == "mnist-raw" and Path(job.code) == REPO
    assert job.environment.removeprefix("azureml:").startswith("mnistops-train:") and job.experiment_name == "mnistops"


def test_the_api_passes_its_overrides_to_the_job(home):
    import mnistops

    result = mnistops.run("pipeline", ["env=qa", "env.backend=azure", "azure.dry_run=true", "compute=azure_cpu_cluster",
                                       *QUICK])
    command = Path(result.artifacts["job"]).read_text()
    assert "model=logreg" in command and "trainer.limit_train_batches=60" in command and "stage=pipeline" in command


def test_hparams_search_becomes_a_sweep_job_with_the_same_space(tmp_path):
    import math

    from azure.ai.ml import load_job

    files = dry_run(tmp_path, "env=qa", "hparams_search=optuna", "compute=azure_cpu_cluster", "hydra.sweeper.n_trials=7")
    job = load_job(files["job-train"])
    assert job.type == "sweep" and job.limits.max_total_trials == 7
    assert (job.objective.primary_metric, job.objective.goal) == ("best_val/acc", "maximize")
    space = job.search_space
    assert space["model_lr"].type == "loguniform"
    assert math.isclose(space["model_lr"].min_value, math.log(3e-4)) and math.isclose(space["model_lr"].max_value, math.log(1e-2))
    assert (space["model_label_smoothing"].type, space["model_label_smoothing"].max_value) == ("uniform", 0.15)
    assert space["data_batch_size"].values == [64, 128, 256]
    assert job.sampling_algorithm.lower() == "random"  # Bayesian sampling takes no loguniform
    assert "model.lr=${{search_space.model_lr}}" in job.trial.command and "hparams_search" not in job.trial.command
    assert "stage=train env.backend=azure azure.inside_job=true" in job.trial.command


def test_deploy_renders_the_endpoint_its_unique_name_and_a_blue_green_deployment(tmp_path):
    from azure.ai.ml import load_online_deployment, load_online_endpoint

    files = dry_run(tmp_path, "env=qa", "stage=deploy", "endpoint=azure_managed", "deploy.model=models:/mnist-classifier/4",
                    "deploy.deployment=green", "endpoint.traffic={blue:100,green:0}", "endpoint.mirror_traffic={green:20}",
                    "endpoint.instance_count=2", "endpoint.instance_type=Standard_F4s_v2",
                    "endpoint.readiness_probe.failure_threshold=5", "endpoint.collect.sampling_rate=0.5",
                    env={**NO_WORKSPACE, "AZURE_SUBSCRIPTION_ID": SUBSCRIPTION, "AZURE_QA_SUBSCRIPTION_ID": SUBSCRIPTION})
    endpoint = load_online_endpoint(files[f"online-endpoint-{QA_ENDPOINT}"])
    assert (endpoint.auth_mode, endpoint.traffic, endpoint.mirror_traffic) == ("key", {"blue": 100, "green": 0}, {"green": 20})
    dep = load_online_deployment(files["online-deployment-green"])
    assert (dep.name, dep.endpoint_name, dep.model.removeprefix("azureml:")) == ("green", QA_ENDPOINT, "mnist-classifier:4")
    assert (dep.instance_type, dep.instance_count) == ("Standard_F4s_v2", 2)
    assert dep.readiness_probe.failure_threshold == 5 and dep.liveness_probe.failure_threshold == 30
    assert dep.request_settings.request_timeout_ms == 2000 and dep.request_settings.max_concurrent_requests_per_instance == 4
    collections = dep.data_collector.collections
    assert set(collections) == {"model_inputs", "model_outputs", "ground_truth"} and dep.data_collector.sampling_rate == 0.5
    assert collections["ground_truth"].data.name == f"{QA_ENDPOINT}-ground-truth"
    assert collections["ground_truth"].data.path.endswith(f"/modelDataCollector/{QA_ENDPOINT}/ground_truth")
    assert dep.data_collector.rolling_rate.lower() == "hour"  # the hour folders stage=monitor reads a window from
    assert (Path(dep.code_configuration.code) / dep.code_configuration.scoring_script).is_file()
    assert dep.environment.removeprefix("azureml:").startswith("mnistops-inference:")

    files = dry_run(tmp_path, "env=qa", "stage=deploy", "endpoint=azure_managed", "deploy.model=models:/mnist-classifier/4",
                    "azure.endpoint_name=mnist-qa-from-terraform")
    assert "online-endpoint-mnist-qa-from-terraform" in files


def test_a_dry_run_cannot_say_what_an_alias_means_and_renders_a_registered_model(tmp_path):
    from azure.ai.ml import load_model

    from mnistops.backends.azure.model_registry import PreviewRegistry
    from mnistops.errors import MnistopsError

    proc = run_cli(["env=qa", "env.backend=azure", "azure.dry_run=true", "stage=deploy", "endpoint=azure_managed"],
                   tmp_path, env=NO_WORKSPACE, timeout=180)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == (
        "mnistops: error: deploy.model=models:/mnist-classifier@candidate: a dry run cannot ask the workspace which "
        "version that is; preview with deploy.model=models:/mnist-classifier/<version>")

    proc = run_cli(["env=prod", "env.backend=azure", "azure.dry_run=true", "stage=promote"], tmp_path, env=NO_WORKSPACE,
                   timeout=180)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == (
        "mnistops: error: azure.dry_run=true reads nothing from the qa workspace (dry run): "
        "promote.model=models:/mnist-classifier@champion and its decisions cannot be previewed")

    cfg = compose(["env=qa", "env.backend=azure", "azure.dry_run=true", "stage=register"], tmp_path)
    (tmp_path / "model" / "artifacts").mkdir(parents=True)
    (tmp_path / "model" / "MLmodel").write_text("flavors: {}\n")
    registry = PreviewRegistry(cfg, "qa")
    registry.register("mnist-classifier", tmp_path / "model", run_id="abc", tags={"mnistops.env": "qa"}, description="d")
    (rendered,) = (p for p in (tmp_path / "qa" / "outputs").rglob("model-mnist-classifier.yaml"))
    model = load_model(rendered)
    assert (model.type, model.tags, model.properties) == ("mlflow_model", {"mnistops.env": "qa"},
                                                          {"mnistops.files_run_id": "abc"})
    with pytest.raises(MnistopsError, match="is not downloaded"):
        registry.download(registry.resolve("models:/mnist-classifier/3"), tmp_path)


def test_monitoring_schedule_carries_the_local_monitor_thresholds(tmp_path):
    from azure.ai.ml.entities._load_functions import load_schedule

    import mnistops

    result = mnistops.run("monitor", ["env=qa", "env.backend=azure", "azure.dry_run=true", "endpoint=azure_managed",
                                      "monitor.thresholds.data_drift=0.2", "monitor.schedule=*/30 * * * *",
                                      "monitor.window=7d", "azure.monitoring.emails=[ops@example.com]",
                                      "endpoint.traffic={green:100}", "azure.endpoint_name=mnist-qa-x1",
                                      f"paths.home={tmp_path}"])
    schedule = load_schedule(result.artifacts["schedule"])
    assert schedule.trigger.expression == "*/30 * * * *" and schedule.name == "mnist-qa-x1-monitor"
    monitor = schedule.create_monitor
    assert monitor.monitoring_target.endpoint_deployment_id == "azureml:mnist-qa-x1:green"
    assert monitor.alert_notification.emails == ["ops@example.com"]
    signals = monitor.monitoring_signals
    assert signals["data_drift"].metric_thresholds.numerical.normalized_wasserstein_distance == 0.2
    assert signals["data_drift"].production_data.data_window.lookback_window_size == "P7D"
    assert signals["data_drift"].production_data.input_data.path.endswith("mnist-qa-x1-green-model_inputs:1")
    # drift and quality on the image features score.py collects, never on its pixels or ids
    assert signals["data_drift"].features == ["mean_intensity", "ink_coverage", "bbox_top", "bbox_left", "bbox_height",
                                              "bbox_width", "centroid_row", "centroid_col", "stroke_width"]
    assert "pixels" not in signals["data_quality"].features and "stroke_width" in signals["data_quality"].features
    assert signals["prediction_drift"].metric_thresholds.categorical.jensen_shannon_distance == 0.1
    assert signals["data_quality"].metric_thresholds.numerical.out_of_bounds_rate == 0.05
    performance = signals["model_performance"]
    assert performance.metric_thresholds.classification.accuracy == 0.95
    assert performance.reference_data.input_data.path.endswith("mnist-qa-x1-ground-truth:1")
    assert performance.reference_data.data_column_names == {"target_column": "label", "join_column": "correlation_id"}
    assert performance.production_data.data_column_names == {"target_column": "digit", "join_column": "correlation_id"}


def test_provision_creates_what_terraform_does_not_and_never_a_cluster(home):
    import mnistops
    from mnistops.backends.azure import environments
    from mnistops.backends.azure.workspace import use_transport
    from mnistops.data import mirrors
    from mnistops.errors import MnistopsError

    ws = unreachable(FakeWorkspace())  # provisioning logs no run: nothing may reach the workspace's MLflow
    args = ["env=qa", "env.backend=azure", "compute=azure_cpu_cluster", f"env.azure.subscription_id={ws.subscription}",
            f"env.azure.resource_group={ws.resource_group}", f"env.azure.workspace={ws.workspace}"]
    with use_transport(ws, StaticToken()), pytest.raises(MnistopsError, match=(
            r"compute cluster cpu-cluster is not in workspace mlw-mnistops-qa: Terraform owns the clusters, apply it "
            r"first \(terraform -chdir=infra apply -var-file=qa.tfvars\); stage=provision never creates one")):
        mnistops.run("provision", args)
    assert not ws.sent("PUT", ".*")

    cfg = compose(args, home)
    ws.seed("computes/cpu-cluster", {"computeType": "AmlCompute", "properties": {
        "scaleSettings": {"minNodeCount": 0, "maxNodeCount": 4}}}, location="westeurope")
    for asset in (cfg.azure.data_asset, cfg.azure.reference_asset):  # uploaded earlier: not again
        ws.seed(f"data/{asset}/versions/{mirrors.digest(cfg)}", {"dataType": "uri_folder", "dataUri": "azureml://x/"})
    with use_transport(ws, StaticToken()):
        mnistops.run("provision", args)
    puts = sorted(ws.relative(r.path) for r in ws.sent("PUT", ".*"))
    envs = [environments.train_environment(cfg), environments.inference_environment(cfg)]
    assert puts == sorted(f"environments/{e.name}/versions/{e.version}".lower() for e in envs)
    assert ws.sent("GET", "computes/cpu-cluster")
    conda = ws.resource(f"environments/mnistops-inference/versions/{envs[1].version}")["properties"]["condaFile"]
    assert "onnxruntime==" in conda


def test_missing_workspace_setting_fails_in_one_line(tmp_path):
    proc = run_cli(["env=qa", "env.backend=azure", "stage=provision", "compute=azure_cpu_cluster"], tmp_path,
                   env=NO_WORKSPACE, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "mnistops: error: env.azure.subscription_id is not set for env=qa: export AZURE_QA_SUBSCRIPTION_ID or "
        "AZURE_SUBSCRIPTION_ID (or pass env.azure.subscription_id=...), and no workspace config.json in "
        f"{REPO} or its parents (.azureml/, aml_config/) nor in {Path.home() / '.azureml'}")


def test_missing_credential_fails_in_one_line(tmp_path):
    proc = run_cli(["env=qa", "env.backend=azure", "stage=train", "compute=azure_cpu_cluster"], tmp_path,
                   env=WORKSPACE, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert errors == [errors[0]] and errors[0].startswith("mnistops: error: no Azure credential: DefaultAzureCredential")


def test_a_job_on_a_local_compute_is_refused_before_anything_is_sent(home):
    import mnistops
    from mnistops.backends.azure.workspace import use_transport
    from mnistops.errors import MnistopsError

    ws = unreachable(FakeWorkspace())
    with use_transport(ws, StaticToken()), pytest.raises(MnistopsError, match="compute=cpu is not an Azure ML cluster"):
        mnistops.run("train", ["env=qa", "env.backend=azure", "compute=cpu",
                               f"env.azure.subscription_id={ws.subscription}",
                               f"env.azure.resource_group={ws.resource_group}", f"env.azure.workspace={ws.workspace}"])
    assert not ws.sent("PUT", ".*")


def test_the_cli_does_not_import_the_azure_sdk():
    code = ("import sys, mnistops.config, mnistops.stages, mnistops.backends.azure; "
            "from mnistops import backends, compose; backends.get(compose(['env.backend=azure', 'azure.dry_run=true'])); "
            "assert not [m for m in sys.modules if m.startswith('azure.ai')], 'azure SDK imported'")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)



@pytest.fixture(scope="module")
def azure_model_dir(tmp_path_factory, data_cache):
    """A registered model laid out as Azure mounts it: AZUREML_MODEL_DIR/<model folder>/{MLmodel, artifacts/}."""
    from serving_fixtures import registered_model

    root = tmp_path_factory.mktemp("azureml-model-dir")
    shutil.copytree(registered_model(tmp_path_factory, data_cache), root / "model")
    return root


@pytest.fixture
def score(azure_model_dir, monkeypatch):
    monkeypatch.setenv("AZUREML_MODEL_DIR", str(azure_model_dir))
    monkeypatch.setenv("MNISTOPS_MODEL_NAME", "mnist-classifier")
    monkeypatch.setenv("MNISTOPS_MODEL_VERSION", "7")
    monkeypatch.setenv("MNISTOPS_DEPLOYMENT", "green")
    module = importlib.reload(importlib.import_module("mnistops.backends.azure.score"))
    module.init()
    return module


def test_scoring_script_serves_real_images_like_the_local_endpoint(score, data_cache):
    from mnistops.data.idx import read_idx
    from mnistops.serving.deployments import OnnxModel
    from mnistops.serving.protocol import to_batch

    images = read_idx(data_cache / "mnist" / "t10k-images-idx3-ubyte")[:64]
    labels = read_idx(data_cache / "mnist" / "t10k-labels-idx1-ubyte")[:64]
    answer = score.run(json.dumps({"data": images.tolist()}))
    digits = np.array([p["digit"] for p in answer["predictions"]])
    assert (answer["model"], answer["version"], answer["deployment"]) == ("mnist-classifier", "7", "green")
    assert answer["request_id"] and (digits == labels).mean() >= 0.8
    local = OnnxModel(score.find_model_dir(Path(score.os.environ["AZUREML_MODEL_DIR"]))).predict(to_batch(images))
    assert np.array_equal(digits, local.argmax(axis=1))  # the same predictor as the local endpoint
    flat = score.run(json.dumps({"input_data": (images[:3].reshape(3, 784) / 255.0).tolist()}).encode())
    assert [p["digit"] for p in flat["predictions"]] == digits[:3].tolist()


def test_scoring_script_refuses_bad_payloads_with_the_field(score):
    answer = score.run('{"data": [[1, 2, 3]]}')
    assert answer["field"] == "data" and "28x28" in answer["error"]
    assert score.run("not json")["field"] == "body"
    assert score.run('{"request_id": "r-1", "label": "7"}')["field"] == "label"  # feedback, checked like /feedback
    # feedback where no data collector takes ground truth (off Azure): said, not silently dropped
    assert "does not collect ground truth" in score.run('{"request_id": "r-1", "label": 7}')["error"]
