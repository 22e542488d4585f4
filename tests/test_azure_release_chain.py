"""The release on Azure, pipeline after pipeline, as agents run them (issue #17 item 3): CI in QA → CD
to QA → the README's first prediction → promotion → CD to PROD → users' traffic → monitoring →
hand-over → QA's CI queued with the handed-over data. Every step is read from jobs/azure-devops/*.yml
and runs in a process of its own on a fresh agent (an empty MNISTOPS_HOME, no override the YAML
lacks: small training comes in through the pipelines' MNISTOPS_ARGS variable), signed in as its
pipeline's identity (QA's service connection, then PROD's); the pipelines share nothing but the two
stand-in subscriptions: QA's and PROD's workspaces (REST models, infra/'s roles on ARM and MLflow
calls), their MLflow servers, their storage in Azurite (every run's files too, written and read through
run history's artifact routes as on Azure: tests/azure_run_artifacts.py), the command job CI submits, which runs as
Azure ML runs it (tests/azure_job_executor.py: a venv built from the training environment's own spec,
the code snapshot from Azurite, the cluster's managed identity), and the managed deployments, which
run as Azure runs them (tests/azure_online_host.py: azmlinfsrv in a venv built from the inference
environment's own spec, the data collector's files written to the workspace's storage). The CI that
the hand-over queues is composed from what monitoring posted, not run: it trains (a 5th `stage=ci` with
training per `make test`, over CI_TRAINING_BUDGET, and ~70 s more of this test), and the local
rehearsal runs the queued retraining."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import httpx
import numpy as np
import pytest

import pipeline_files as pf
from conftest import QUICK, REPO, needs_module

needs_module("azure.ai.ml", "pip install -e '.[azure]'")
needs_module("azureml.ai.monitoring", "pip install -e '.[azure]'")

from azure_job_executor import EnvironmentSpec, JobExecutor, job_venvs  # noqa: E402,F401  (job_venvs: a fixture)
from azure_mlflow_server import azure_mlflow  # noqa: E402,F401  (a fixture)
from azure_online_host import CollectorSink, OnlineHost  # noqa: E402
from azure_proxy import AzureStandIn, HostAuthority  # noqa: E402
from azure_workspace import FakeAzure, FakeWorkspace  # noqa: E402
from test_azure_monitoring import pixels  # noqa: E402
from test_azure_job_execution import train_spec  # noqa: E402
from test_azure_registry import NAME  # noqa: E402
from test_azure_steps_as_processes import (FAST_TESTS, PIPELINES, STEP_TIMEOUT, agent_step, blobs,  # noqa: E402
                                           run_step, variable_group)

from mnistops import tags as T  # noqa: E402

pytestmark = pytest.mark.integration

QA_ENDPOINT, PROD_ENDPOINT = "mnist-qa-0a1b2c", "mnist-prod-0a1b2c"
# the pipelines' MNISTOPS_ARGS: a small logreg (~0.85-0.9 test accuracy) and bars it can meet; CI's tests
# step runs one test (the local rehearsal's first CI runs the default unit tier on a fresh clone)
CI_ARGS = " ".join([*QUICK, "gate.min_accuracy=0.8", "monitor.reference_size=1000", FAST_TESTS])
SMOKE_BARS = "smoke.samples=20 smoke.min_accuracy=0.5 smoke.max_p95_ms=10000"


# `az ml online-endpoint invoke`: the ml extension's command is azure-ai-ml's own (it vendors the SDK):
# GET the endpoint, its keys (listKeys), POST the request file to the scoring URI with the primary key.
# az itself is not installed here (its ml extension comes from Azure's extension index, unreachable):
# the same SDK call, signed in through az as the extension is.
AZ_ML_INVOKE = """import sys
from azure.ai.ml import MLClient
from azure.identity import AzureCliCredential
subscription, group, workspace, name, request_file = sys.argv[1:]
print(MLClient(AzureCliCredential(), subscription, group, workspace).online_endpoints.invoke(
    name, request_file=request_file))
"""


def readme_first_prediction() -> Tuple[str, List[str], str]:
    """The README's "First run on Azure" step 7, as written: the command that makes request.json, the
    words of its `az ml online-endpoint invoke`, and the answer it shows."""
    block = (REPO / "README.md").read_text().split("# 7. the first prediction", 1)[1].split("```", 1)[0]
    lines = [line.strip() for line in block.replace("\\\n", " ").splitlines()[1:]]
    make_request = next(line for line in lines if line.startswith(".venv/bin/python") and "request.json" in line)
    invoke = next(line for line in lines if line.startswith("az ml online-endpoint invoke")).split()
    shown = next(line for line in lines if line.startswith("# {"))
    return make_request, invoke, shown


def first_prediction(stand_in: AzureStandIn, values: Dict[str, str], workdir: Path, identity: str) -> dict:
    """Step 7 run in a folder of its own (the README runs it in the checkout: postman/ is there)."""
    make_request, invoke, _ = readme_first_prediction()
    (workdir / "postman").mkdir(parents=True)
    shutil.copy(REPO / "postman" / "digit-7.png", workdir / "postman")
    env = {**pf.agent_environment(), **stand_in.environment(), "STANDIN_AZ_PRINCIPAL": identity}
    made = subprocess.run(["bash", "-c", make_request.replace(".venv/bin/python", shlex.quote(sys.executable), 1)],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    flags = {flag: re.sub(r"\$(\w+)", lambda m: values[m.group(1)], word)  # the variable group's values
             for flag, word in zip(invoke[4::2], invoke[5::2])}
    assert set(flags) == {"-n", "-g", "-w", "--request-file"}, invoke
    answer = subprocess.run([sys.executable, "-c", AZ_ML_INVOKE, values["AZURE_QA_SUBSCRIPTION_ID"], flags["-g"],
                             flags["-w"], flags["-n"], flags["--request-file"]],
                            cwd=workdir, env=env, capture_output=True, text=True, timeout=120)
    assert answer.returncode == 0, answer.stdout[-2000:] + answer.stderr[-3000:]
    return json.loads(answer.stdout)


def check_the_ci_job(ws: FakeWorkspace, stand_in: AzureStandIn, executor: JobExecutor, job_venvs, agent_out: str):
    """CI's one job ran as Azure ML runs it and left what CD and promotion read: in the venv built from the
    environment version provision created, from the snapshot in Azurite without what .amlignore leaves out,
    as the cluster's managed identity, its steps' runs nested under the job's run in QA's MLflow, and
    version 1 registered from its train run, approved by the gate, @champion."""
    from mlflow.tracking import MlflowClient

    from mnistops.backends.azure import code_snapshot

    (name, job), = executor.jobs.items()
    assert job.returncode == 0 and job.statuses == ["Queued", "Preparing", "Running", "Completed"], executor.report()
    assert "gate approved models:/mnist-classifier/1" in job.stdout, executor.report()
    assert f"job {name} completed" in agent_out, agent_out[-3000:]  # followed through run history, its log printed
    (put,) = ws.sent("PUT", r"jobs/[^/]+")
    assert put.body["properties"]["command"] == job.command and "python -m mnistops" in job.command
    (env_put,) = ws.sent("PUT", r"environments/mnistops-train/versions/[^/]+")
    spec = EnvironmentSpec.from_conda(env_put.body["properties"]["condaFile"])
    assert job.venv == job_venvs.root / spec.digest and spec == train_spec()
    assert shutil.which("python", path=job.env["PATH"]) == str(job.venv / "bin" / "python")
    assert not any(k.startswith(("MNISTOPS_DATA", "AZURE_QA", "AZUREML_QA")) for k in job.env), sorted(job.env)
    assert job.env["MLFLOW_TRACKING_URI"].startswith(f"azureml://{ws.location}.api.azureml.ms/mlflow/v1.0/")
    assert (job.workdir / "mnistops" / "__main__.py").is_file() and not (job.workdir / "tests").exists()
    # the snapshot azure-ai-ml uploaded is the checkout without .git, tests, benchmarks, the virtualenv or
    # the tools' caches (.amlignore; .hypothesis/ once made a new code version per test run)
    (code,) = ws.sent("PUT", r"codes/mnistops-code/versions/[^/]+")
    assert put.body["properties"]["codeId"].lower().endswith(ws.relative(code.path))
    code_uri = code.body["properties"]["codeUri"]  # https://<account>.blob.core.windows.net/<container>/<folder>
    container, folder = code_uri.split(".blob.core.windows.net/", 1)[1].split("/", 1)
    with stand_in.reached():
        stored = [b.name for b in stand_in.azurite.container(ws.blobstore.account, container, create=False).list_blobs()]
    files = [n[len(folder) + 1:] for n in stored if n.startswith(folder + "/")]
    assert {code_snapshot.SCORING_SCRIPT, "pyproject.toml", "mnistops/__main__.py"} <= set(files), (code_uri, stored[:5])
    tops = {f.split("/")[0] for f in files}
    assert not tops & {".git", "tests", "benchmarks", ".venv", ".tools", ".hypothesis", ".pytest_cache", ".ruff_cache",
                       ".grimp_cache", ".import_linter_cache"}, sorted(tops)
    assert job.env["MSI_ENDPOINT"] and executor.msi.asked, "the job never asked the managed identity for a token"

    service = MlflowClient(ws.mlflow_server.base_url)
    experiment = service.get_experiment_by_name(put.body["properties"]["experimentName"]).experiment_id
    runs = service.search_runs([experiment])
    steps = {r.info.run_name: r.data.tags.get("mlflow.parentRunId") for r in runs if r.info.run_id != name}
    assert {"data", "train", "baseline", "gate"} <= set(steps) and set(steps.values()) == {name}, steps
    assert service.get_run(name).info.status == "FINISHED"
    version = ws.resource(f"models/{NAME}/versions/1")["properties"]
    train_run = next(r.info.run_id for r in runs if r.info.run_name == "train")
    assert version["modelUri"].split("/")[1] == train_run and version["tags"][T.RUN_ID] == train_run, version
    assert version["tags"][T.GATE_DECISION] == T.APPROVED and T.alias("champion") in version["tags"], version["tags"]
    # the run's files as Azure keeps them: its artifact URI is Azure's, the job wrote them through run
    # history's artifact routes into the workspace's storage, and nothing of them is on the MLflow server's disk
    assert service.get_run(train_run).info.artifact_uri == (f"azureml://{ws.location}.api.azureml.ms/mlflow/v2.0"
                                                            f"{ws.mlflow_server.scope}/experiments/{experiment}/runs/"
                                                            f"{train_run}/artifacts")
    assert ws.sent("POST", rf".*/runs/{train_run}/artifacts/batch/metadata")
    assert executor.run_files(train_run, "model/MLmodel", executor.root / "files").is_file()
    assert not [f for f in (ws.mlflow_server.root / "artifacts").rglob("*") if f.is_file()]
    return version["tags"][T.WEIGHTS_SHA256]


@pytest.mark.ci_training  # ci.yml's ci step: its job trains
def test_ci_qa_cd_qa_promotion_cd_prod_traffic_monitor_and_hand_over_run_as_the_pipelines_are_written(
        tmp_path, data_cache, azure_mlflow, job_venvs):
    from mlflow.tracking import MlflowClient

    qa = FakeWorkspace(subscription="11111111-0000-0000-0000-000000000000", resource_group="rg-qa", workspace="mlw-qa")
    qa.seed_cpu_cluster()  # Terraform's
    prod = FakeWorkspace(subscription="22222222-0000-0000-0000-000000000000", resource_group="rg-prod",
                         workspace="mlw-prod")
    authority = HostAuthority(tmp_path / "tls", ca=azure_mlflow.authority.ca)
    stand_in = AzureStandIn(tmp_path / "azure", FakeAzure(qa, prod), [qa.blobstore.account, prod.blobstore.account],
                            authority=authority)
    executor = JobExecutor(stand_in, qa, job_venvs, tmp_path / "qa-compute")  # QA's cpu-cluster
    hosts = {"qa": OnlineHost(stand_in, qa, job_venvs, tmp_path / "qa-deployments"),
             "prod": OnlineHost(stand_in, prod, job_venvs, tmp_path / "prod-deployments")}
    hook, devops = CollectorSink(), CollectorSink()  # the alert webhook; Azure DevOps' REST API
    groups = {**variable_group(qa, "qa", QA_ENDPOINT), **variable_group(prod, "prod", PROD_ENDPOINT)}
    agents = iter(range(100))

    def agent_values() -> dict:  # a fresh agent: its own Pipeline.Workspace, hence an empty MNISTOPS_HOME
        root = tmp_path / f"agent{next(agents)}"
        (root / "a").mkdir(parents=True)
        return {"Pipeline.Workspace": str(root), "Build.ArtifactStagingDirectory": str(root / "a"), **groups}

    def run(pipeline: str, stage: str, identity: str, values: Dict[str, str], workspace: Path = None,
            timeout: float = STEP_TIMEOUT, **agent_env: str) -> str:
        """One step of `pipeline` on an agent (a fresh one unless `workspace`, an earlier step's agent)."""
        where = {"Pipeline.Workspace": str(workspace), **groups} if workspace else agent_values()
        step = agent_step(pipeline, stage, {**where, **values})
        assert not any(a.startswith(("env.tracking_uri", "env.azure.", "endpoint=")) for a in step.args), step.args
        proc = run_step(step, stand_in, data_cache, Path(step.env["MNISTOPS_HOME"]).parent / "s", timeout,
                        STANDIN_AZ_PRINCIPAL=identity, **agent_env)  # the AzureCLI@2 sign-in of its service connection
        assert proc.returncode == 0, f"{pipeline} {stage}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}{executor.report()}"
        return proc.stdout

    try:
        stand_in.attach_mlflow(azure_mlflow, qa, prod)
        stand_in.serve_pending_uploads(qa, prod)

        # CI in QA (the README's First run on Azure, steps 4 and 5): provision, then the unit tests here and
        # one job on QA's cluster that trains, registers, baselines and gates into QA's workspace
        blobs(stand_in, qa)  # the blob container Azure ML made with the workspace
        ci_agent = agent_values()
        run("ci.yml", "provision", "qa/pipeline", {}, Path(ci_agent["Pipeline.Workspace"]))
        said = run("ci.yml", "ci", "qa/pipeline", {"MNISTOPS_ARGS": CI_ARGS}, Path(ci_agent["Pipeline.Workspace"]),
                   STEP_TIMEOUT + 600, AZUREML_RUN_POLLING_INTERVAL_MAX="3")  # azure-ai-ml's polling cap: the
        executor.wait(120)  # agent's environment (it sees the job's end in seconds, not up to a minute)
        weights = check_the_ci_job(qa, stand_in, executor, job_venvs, said)

        # CD to QA: QA's champion on QA's endpoint, smoke-tested through its scoring URI
        run("cd-qa.yml", "cd", "qa/pipeline", {"MNISTOPS_ARGS": SMOKE_BARS})
        (qa_deployment,) = hosts["qa"].running.values()
        environment = qa.sent("PUT", r"environments/mnistops-inference/versions/[^/]+")[-1]
        spec = EnvironmentSpec.from_conda(environment.body["properties"]["condaFile"])
        assert qa_deployment.venv == job_venvs.root / spec.digest  # the container's python is the spec's alone
        assert qa.resource(f"models/{NAME}/versions/1")["properties"]["tags"][T.smoke("qa")] == "passed"
        scoring = qa.resource(f"onlineendpoints/{QA_ENDPOINT}")["properties"]["scoringUri"]
        image = {"data": [[[0] * 28] * 28]}
        assert httpx.post(scoring, json=image).status_code == 401  # key auth
        keyed = {"Authorization": "Bearer primary-key-1"}
        pinned = httpx.post(scoring, json=image, headers={**keyed, "azureml-model-deployment": qa_deployment.name})
        assert pinned.status_code == 200 and pinned.headers["azureml-model-deployment"] == qa_deployment.name
        assert httpx.post(scoring, json=image, headers={**keyed, "azureml-model-deployment": "nope"}).status_code == 404

        # the README's first prediction (First run on Azure, step 7), on QA's endpoint as CD left it
        answer = first_prediction(stand_in, groups, tmp_path / "step7", "qa/pipeline")
        shown = readme_first_prediction()[2]  # the answer the README shows
        assert answer["predictions"][0]["digit"] == int(re.search(r'"digit": (\d+)', shown).group(1)), answer
        assert len(answer["predictions"][0]["probabilities"]) == 10
        assert (answer["model"], answer["version"]) == tuple(re.findall(r'"(?:model|version)": "([^"]+)"', shown))

        # promotion and CD to PROD, as PROD's pipeline identity (QA read through QA's cross-env role)
        qa_writes = len(qa.sent("PUT", ".*"))
        run("cd-prod.yml", "promote", "prod/pipeline", {})
        assert len(qa.sent("PUT", ".*")) == qa_writes  # promotion only reads QA
        promoted = prod.resource(f"models/{NAME}/versions/1")["properties"]
        assert (promoted["tags"][T.SOURCE_ENV], promoted["tags"][T.SOURCE_VERSION]) == ("qa", "1")
        copied = hosts["prod"].run_files(promoted["properties"][T.FILES_RUN_ID], "model/artifacts/model.onnx",
                                         tmp_path / "dl")
        assert hashlib.sha256(Path(copied).read_bytes()).hexdigest() == weights  # PROD's own copy of QA's files
        said = run("cd-prod.yml", "cd", "prod/pipeline", {"MNISTOPS_ARGS": SMOKE_BARS})
        assert "serves nothing yet" in said  # the canary (PROD's default) has no champion to judge: smoke decides
        assert prod.resource(f"models/{NAME}/versions/1")["properties"]["tags"][T.smoke("prod")] == "passed"

        # users' traffic on PROD's endpoint (shifted: inverted digits), half of it labelled through feedback
        users = pf.Step(PIPELINES / "users", "users", "traffic", [
            "env=prod", "env.backend=azure", "stage=traffic", f"azure.endpoint_name={PROD_ENDPOINT}",
            "traffic.shift=invert", "traffic.requests=120", "traffic.rate=0", "traffic.feedback_fraction=0.5",
            "traffic.concurrency=4"], {"MNISTOPS_HOME": str(tmp_path / "users" / "home"), **groups}, None, "")
        traffic = run_step(users, stand_in, data_cache, tmp_path / "users" / "s", STANDIN_AZ_PRINCIPAL="prod/pipeline")
        assert traffic.returncode == 0, traffic.stdout[-3000:] + traffic.stderr[-3000:]
        traffic_run = re.search(r"traffic run (\w+):", traffic.stdout).group(1)
        fed = int(re.search(r"feedback (\d+)", traffic.stdout).group(1))
        assert ", 0 errors," in traffic.stdout and fed >= 40, traffic.stdout
        (prod_deployment,) = hosts["prod"].running.values()
        prefix = f"traffic-{traffic_run}-"
        sent = lambda c: [r for r in prod_deployment.sink.rows(c) if r["correlation_id"].startswith(prefix)]  # noqa: E731
        prod_deployment.sink.wait(lambda: len(sent("model_inputs")) == 120 and len(sent("model_outputs")) == 120
                                  and len(sent("ground_truth")) == fed, "the traffic's rows")
        assert hosts["prod"].flush_collected() > 0  # the collector sidecar writes the hourly files into Azurite

        # monitoring in PROD: monitor.yml's two steps as written
        values = {**agent_values(), "alertWebhookUrl": f"http://127.0.0.1:{hook.port}/hook",
                  "System.CollectionUri": f"http://127.0.0.1:{devops.port}/contoso/", "System.TeamProjectId": "p-1",
                  "QA_CI_PIPELINE_ID": "17", "System.AccessToken": "ado-job-token"}
        step = agent_step("monitor.yml", "monitor", values)
        proc = run_step(step, stand_in, data_cache, Path(values["Pipeline.Workspace"]) / "s",
                        STANDIN_AZ_PRINCIPAL="prod/pipeline")
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        (queue,) = [s for s in pf.scripts(PIPELINES / "monitor.yml", values) if "queue QA's CI" in s.name]
        base = pf.agent_environment()
        queued = subprocess.run(["bash", "--noprofile", "--norc", "-c", queue.text],
                                cwd=Path(values["Pipeline.Workspace"]) / "s", env={**base, **queue.env},
                                capture_output=True, text=True, timeout=60)
        assert queued.returncode == 0, queued.stdout + queued.stderr

        # the platform's schedule on PROD's live deployment; the signals judged here on the last hour's traffic
        (schedule,) = prod.sent("PUT", f"schedules/{PROD_ENDPOINT}-monitor")
        definition = schedule.body["properties"]["action"]["monitorDefinition"]
        assert definition["monitoringTarget"]["deploymentId"].lower().endswith(
            f"/onlineendpoints/{PROD_ENDPOINT}/deployments/{prod_deployment.name}")
        client = MlflowClient(prod.mlflow_server.base_url)
        (monitor,) = client.search_runs([client.get_experiment_by_name("mnistops").experiment_id],
                                        filter_string=f"tags.`{T.STAGE}` = 'monitor'")
        assert monitor.data.metrics["monitor/requests"] >= 120.0  # the smoke test's requests are in the hour too
        signals = json.loads(hosts["prod"].run_files(monitor.info.run_id, "monitoring/signals.json",
                                                     tmp_path / "signals").read_text())
        assert any(s["breached"] and s["name"] == "data_drift" for s in signals)
        accuracy = next(s for s in signals if s["name"] == "model_performance" and s["metric"] == "accuracy"
                        and s["deployment"] is None)
        assert accuracy["value"] is not None and f"of {fed} labelled images" in accuracy["note"]
        (alert,) = hook.posts
        assert f"prod/{PROD_ENDPOINT}" in json.loads(alert["body"])["summary"]

        # the labelled images reach QA's store, exactly those users labelled, and QA's CI is queued with them
        client = MlflowClient(qa.mlflow_server.base_url)
        (handed,) = client.search_runs([client.get_experiment_by_name("mnistops").experiment_id],
                                       filter_string=f"tags.`{T.DATASET}` = 'production-feedback'")
        assert handed.data.tags[T.SOURCE_ENV] == "prod" and handed.data.tags[T.SOURCE_MONITOR_RUN] == monitor.info.run_id
        npz = np.load(hosts["qa"].run_files(handed.info.run_id, "data/labelled.npz", tmp_path / "handed"))
        truth = {r["correlation_id"]: r["label"] for r in sent("ground_truth")}
        expected = sorted((pixels(r).tobytes(), truth[r["correlation_id"]]) for r in sent("model_inputs")
                          if r["correlation_id"] in truth)
        assert sorted((img.tobytes(), int(y)) for img, y in zip(npz["images"], npz["labels"])) == expected
        (ado,) = devops.posts  # Azure DevOps' "Runs - Run Pipeline" of QA's CI, with the overrides as ciArgs
        assert ado["path"] == "/contoso/p-1/_apis/pipelines/17/runs?api-version=7.1"
        assert ado["headers"]["authorization"] == "Bearer ado-job-token"
        ci_args = json.loads(ado["body"])["templateParameters"]["ciArgs"]
        assert "data.extra_train=[production-feedback]" in ci_args.split()
        (ci,) = [s for s in pf.steps(PIPELINES / "ci.yml", pf.Neutral().values, parameters={"ciArgs": ci_args})
                 if s.value("stage") == "ci"]  # QA's CI, queued so, trains on the handed-over images
        assert ci.value("data.extra_train") == "[production-feedback]", ci.args
        assert not qa.denied and not prod.denied and not qa.refused and not prod.refused, (qa.denied, prod.denied)
    finally:
        executor.stop()
        for host in hosts.values():
            host.stop()
        stand_in.stop()
        hook.close()
        devops.close()
