"""The deploy, cd, rollback, endpoint and monitor stages on the azure flavour: their one body each
(stages/*.py) drives a managed online endpoint through the SDK. What the SDK would send is
recorded at its HTTP transport and answered as Azure ML answers (tests/azure_workspace.py); the
endpoint's scoring URI is Azure's own inference server running the deployments' score.py on a
real registered model, so the pinned request before traffic moves and the smoke test are real
HTTP."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from conftest import needs_module  # a missing extra fails in CI, skips elsewhere
needs_module("azure.ai.ml", "pip install -e '.[azure]'")
needs_module("azureml_inference_server_http", "pip install -e '.[test]'")

from azure_mlflow_server import azure_mlflow  # noqa: E402,F401  (the module's MLflow server)
from azure_workspace import FakeWorkspace, StaticToken  # noqa: E402

from mnistops import tags as T  # noqa: E402
from mnistops.errors import MnistopsError  # noqa: E402

pytestmark = pytest.mark.integration

NAME = "mnist-classifier"
SERVED: dict = {}  # the registered model's MLflow directory the scoring server serves


@pytest.fixture(scope="module")
def scoring_server(tmp_path_factory, data_cache):
    """azmlinfsrv (the server managed online deployments run) serving score.py on a registered model."""
    from serving_fixtures import azure_inference_server, registered_model

    root = tmp_path_factory.mktemp("azureml-model-dir")
    SERVED["model"] = registered_model(tmp_path_factory, data_cache)
    shutil.copytree(registered_model(tmp_path_factory, data_cache), root / "model")
    with azure_inference_server(root, root / "server.log", cwd=root) as url:
        yield url

def version(ws: FakeWorkspace, number: str, run_id: str, **tags):
    ws.seed(f"models/{NAME}/versions/{number}",
            {"modelType": "mlflow_model", "modelUri": f"runs:/{run_id}/model", "flavors": {},
             "tags": {T.GATE_DECISION: T.APPROVED, **tags}, "properties": {T.FILES_RUN_ID: run_id}})


@pytest.fixture
def qa(scoring_server, home, tmp_path, azure_mlflow):
    """QA's workspace: versions 1 (@champion) and 2 (their files in a run of its MLflow: stage=monitor
    embeds with them), the source snapshot, the scoring server; its MLflow is reached through the
    workspace's azureml:// URI (tests/azure_mlflow_server.py)."""
    from mlflow.tracking import MlflowClient

    from mnistops.backends.azure import code_snapshot

    ws = azure_mlflow.attach(FakeWorkspace(scoring_base=scoring_server))
    client = MlflowClient(ws.mlflow_uri)
    run = client.create_run(client.create_experiment("registered"))
    client.log_artifacts(run.info.run_id, str(SERVED["model"]), "model")
    version(ws, "1", run.info.run_id, **{T.alias("champion"): "2026-01-01T00:00:00.000000Z"})
    version(ws, "2", run.info.run_id, **{T.alias("candidate"): "2026-01-02T00:00:00.000000Z"})
    ws.seed(f"codes/mnistops-code/versions/{code_snapshot.digest(code_snapshot.root())}", {"codeUri": "https://x/y"})
    return ws


def args_for(ws: FakeWorkspace, *extra):
    return ["env=qa", "env.backend=azure", "endpoint=azure_managed", f"env.azure.subscription_id={ws.subscription}",
            f"env.azure.resource_group={ws.resource_group}", f"env.azure.workspace={ws.workspace}", *extra]


def run(stage, ws, *extra):
    import mnistops
    from mnistops.backends.azure.workspace import use_transport

    with use_transport(ws, StaticToken()):
        return mnistops.run(stage, args_for(ws, *extra))


def endpoint_name(ws: FakeWorkspace) -> str:
    """What infra/main.tf names the env's endpoint: mnist-<env>-<sha1("<subscription>/<env>")[:6]>."""
    return f"mnist-qa-{hashlib.sha1(f'{ws.subscription}/qa'.encode()).hexdigest()[:6]}"


def move_champion(ws: FakeWorkspace, to: str) -> None:
    from conftest import compose
    from mnistops.backends.azure.model_registry import AzureModelRegistry
    from mnistops.backends.azure.workspace import Connection, use_transport

    with use_transport(ws, StaticToken()):
        AzureModelRegistry("qa", Connection(compose(args_for(ws))), lambda: ws.mlflow_uri).set_alias(NAME, "champion", to)


def test_deploy_is_blue_green_and_the_schedule_follows_the_live_deployment(qa, scoring_server):
    ep = endpoint_name(qa)
    result = run("deploy", qa, f"deploy.model=models:/{NAME}@champion", "endpoint.instance_type=Standard_F4s_v2",
                 "endpoint.instance_count=2", "endpoint.readiness_probe.failure_threshold=5",
                 "endpoint.collect.sampling_rate=0.5")
    assert result.model_uri == f"models:/{NAME}/1" and result.endpoint_url == scoring_server

    created, updated = qa.sent("PUT", f"onlineendpoints/{ep}")  # made without traffic, then traffic moved
    assert created.body["properties"]["authMode"] == "Key" and not created.body["properties"].get("traffic")
    assert updated.body["properties"]["traffic"] == {"blue": 100}
    (blue,) = qa.sent("PUT", f"onlineendpoints/{ep}/deployments/blue")
    props = blue.body["properties"]
    assert props["model"].lower().endswith(f"/models/{NAME}/versions/1") and blue.body["sku"]["capacity"] == 2
    assert props["instanceType"] == "Standard_F4s_v2" and props["readinessProbe"]["failureThreshold"] == 5
    assert props["codeConfiguration"]["scoringScript"] == "mnistops/backends/azure/score.py"
    assert props["codeConfiguration"]["codeId"].lower().endswith("/codes/mnistops-code/versions/"
                                                                 + qa.sent("GET", "codes/.*")[0].path.split("/")[-1])
    collections = props["dataCollector"]["collections"]
    assert set(collections) == {"model_inputs", "model_outputs", "ground_truth"}
    assert {c["samplingRate"] for c in collections.values()} == {0.5}
    assert props["dataCollector"]["rollingRate"].lower() == "hour"
    assert collections["ground_truth"]["dataId"].lower().endswith(f"/data/{ep}-ground-truth/versions/1")
    assert qa.resource(f"data/{ep}-ground-truth/versions/1")["properties"]["dataUri"].endswith(f"/{ep}/ground_truth")
    assert qa.sent("PUT", f"data/{ep}-blue-model_inputs/versions/1")  # the collections Azure monitors
    env = [r for r in qa.sent("PUT", "environments/mnistops-inference/versions/.*")]
    assert env and props["environmentId"].lower().endswith(env[0].path.split("/", 1)[1].split("workspaces/", 1)[1]
                                                           .split("/", 1)[1])

    # the same version again: nothing moves
    before = len(qa.requests)
    assert run("deploy", qa, f"deploy.model=models:/{NAME}@champion").metrics["deploy/changed"] == 0.0
    assert not [r for r in qa.requests[before:] if r.method == "PUT"]

    # the monitoring schedule watches the live deployment ...
    monitor = run("monitor", qa, "monitor.thresholds.data_drift=0.2", "monitor.schedule=*/30 * * * *",
                  "monitor.reference_size=500")
    assert monitor.artifacts["deployment"] == "blue"
    assert monitor.metrics["monitor/requests"] == 0.0  # judged here too: this scoring server collects nothing
    (schedule,) = qa.sent("PUT", f"schedules/{ep}-monitor")
    definition = schedule.body["properties"]["action"]["monitorDefinition"]
    assert definition["monitoringTarget"]["deploymentId"].endswith(f"{ep}:blue") \
        or definition["monitoringTarget"]["deploymentId"].lower().endswith(f"/onlineendpoints/{ep}/deployments/blue")
    performance = definition["signals"]["model_performance"]
    assert performance["referenceData"]["columns"] == {"target_column": "label", "join_column": "correlation_id"}
    assert f"{ep}-ground-truth" in json.dumps(performance["referenceData"])

    # ... and follows a blue/green swap: @champion moves, deploy puts v2 into green
    move_champion(qa, "2")
    swapped = run("deploy", qa, f"deploy.model=models:/{NAME}@champion")
    assert swapped.model_uri == f"models:/{NAME}/2"
    green = qa.sent("PUT", f"onlineendpoints/{ep}/deployments/green")
    assert green and green[0].body["properties"]["model"].lower().endswith(f"/models/{NAME}/versions/2")
    last = qa.sent("PUT", f"onlineendpoints/{ep}")[-1].body
    assert last["properties"]["traffic"] == {"green": 100}
    assert json.loads(last["tags"][T.PREVIOUS_TRAFFIC]) == {"mirror_traffic": {}, "traffic": {"blue": 100}}
    followed = qa.sent("PUT", f"schedules/{ep}-monitor")[-1].body["properties"]["action"]["monitorDefinition"]
    assert "deployments/green" in followed["monitoringTarget"]["deploymentId"].lower() \
        or followed["monitoringTarget"]["deploymentId"].endswith(":green")
    assert followed["signals"]["data_drift"]["metricThresholds"][0]["threshold"]["value"] == 0.2  # kept
    inputs = json.dumps(followed["signals"])
    assert f"{ep}-green-model_inputs" in inputs and f"{ep}-blue-" not in inputs

    # rollback: the split before, and the schedule back on blue
    rolled = run("rollback", qa)
    assert rolled.model_uri == f"models:/{NAME}/1"
    assert qa.sent("PUT", f"onlineendpoints/{ep}")[-1].body["properties"]["traffic"] == {"blue": 100}
    back = qa.sent("PUT", f"schedules/{ep}-monitor")[-1].body["properties"]["action"]["monitorDefinition"]
    assert f"{ep}-blue-model_inputs" in json.dumps(back["signals"])


def test_cd_smoke_tests_through_the_scoring_route_tags_the_version_and_rolls_back_on_failure(qa, scoring_server):
    ep = endpoint_name(qa)
    run("deploy", qa, f"deploy.model=models:/{NAME}/1")
    move_champion(qa, "2")
    done = run("cd", qa, "smoke.samples=20", "smoke.min_accuracy=0.5", "smoke.max_p95_ms=10000")
    assert done.model_uri == f"models:/{NAME}/2" and done.metrics["smoke/errors"] == 0.0
    assert qa.resource(f"models/{NAME}/versions/2")["properties"]["tags"][T.smoke("qa")] == "passed"
    assert qa.sent("GET", f"onlineendpoints/{ep}")  # the key came from the endpoint ...
    assert qa.sent("POST", f"onlineendpoints/{ep}/listkeys")

    move_champion(qa, "1")
    with pytest.raises(MnistopsError, match="smoke test failed.*rolled back"):
        run("cd", qa, "smoke.samples=20", "smoke.min_accuracy=1.01")
    assert qa.resource(f"models/{NAME}/versions/1")["properties"]["tags"][T.smoke("qa")] == "failed"
    assert qa.sent("PUT", f"onlineendpoints/{ep}")[-1].body["properties"]["traffic"] == {"green": 100}


def test_endpoint_status_keys_and_stop_on_a_managed_endpoint(qa, capsys):
    ep = endpoint_name(qa)
    with pytest.raises(MnistopsError, match=f"endpoint {ep} .* is not there: run stage=deploy first"):
        run("smoke", qa)
    run("deploy", qa, f"deploy.model=models:/{NAME}/1")
    capsys.readouterr()
    status = run("endpoint", qa)
    out = capsys.readouterr().out
    assert status.metrics["endpoint/running"] == 1.0 and f"endpoint {ep} (qa): Succeeded" in out
    assert f"models:/{NAME}/1" in out and "traffic {'blue': 100}" in out
    run("endpoint", qa, "endpoint.action=regenerate-keys")  # endpoint.key: primary
    (regen,) = qa.sent("POST", f"onlineendpoints/{ep}/regeneratekeys")
    assert regen.body["keyType"] == "Primary"
    before = len(qa.requests)
    run("endpoint", qa, "endpoint.action=stop")
    assert "az ml online-endpoint delete" in capsys.readouterr().out
    assert not [r for r in qa.requests[before:] if r.method in ("PUT", "DELETE")]
