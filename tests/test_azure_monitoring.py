"""The monitoring loop on Azure, end to end, offline: score.py under Azure's own inference server
(azmlinfsrv) with azureml-ai-monitoring's real Collector, which sends what it collects over HTTP to
the data collector's address (AZUREML_MDC_HOST/PORT, as its config allows), here a local sink that
keeps every payload; the sidecar's part (payloads -> hourly JSON-lines files in the workspace's blob
datastore, in Azure's documented record format) is tests/azure_workspace.py's; the workspaces
answer at the SDK's HTTP transport. Then `stage=traffic` sends shifted test images with feedback
through the managed endpoint's one route, and `stage=monitor env=prod env.backend=azure` applies the
schedule, judges exactly those requests here, alerts, hands the labelled images to QA's store and
writes the request that queues QA's CI."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import needs_module  # a missing extra fails in CI, skips elsewhere
needs_module("azure.ai.ml", "pip install -e '.[azure]'")
needs_module("azureml_inference_server_http", "pip install -e '.[test]'")
needs_module("azureml.ai.monitoring", "pip install -e '.[azure]'")

from azure_mlflow_server import azure_mlflow  # noqa: E402,F401  (the module's MLflow servers)
from azure_workspace import FakeAzure, FakeWorkspace, StaticToken, sidecar_records, write_collector_files  # noqa: E402
from conftest import free_port  # noqa: E402
from serving_fixtures import mnist  # noqa: E402,F401  (fixture)

from mnistops import tags as T  # noqa: E402

pytestmark = pytest.mark.integration

NAME = "mnist-classifier"
FEATURES = ["mean_intensity", "ink_coverage", "bbox_top", "bbox_left", "bbox_height", "bbox_width",
            "centroid_row", "centroid_col", "stroke_width", "max_intensity", "min_intensity"]
PROBABILITIES = [f"p{k}" for k in range(10)]


class CollectorSink:
    """The data collector's local address: keeps what the Collector posts ({"path", "headers", "body"})."""

    def __init__(self):
        posts: list = []
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802  (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with lock:
                    posts.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                                  "body": body})
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")

            def log_message(self, *args):
                pass

        self.posts = posts
        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def of(self, collection: str) -> list:
        return [p for p in list(self.posts) if p["headers"].get("ce-type") == f"azureml.inference.{collection}"]

    def rows(self, collection: str) -> list:
        return [row for p in self.of(collection) for row in json.loads(p["body"])]

    def wait(self, ready, what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            assert time.monotonic() < deadline, f"the collector did not send {what} within {timeout} s"
            time.sleep(0.1)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def sink():
    s = CollectorSink()
    yield s
    s.close()


@pytest.fixture(scope="module")
def scoring(tmp_path_factory, data_cache, sink):
    """azmlinfsrv serving score.py on a registered model (version 1, deployment blue), its data
    collector configured with the three collections and pointed at the sink."""
    from serving_fixtures import azure_inference_server, registered_model

    root = tmp_path_factory.mktemp("azureml-deployment")
    shutil.copytree(registered_model(tmp_path_factory, data_cache), root / "model" / "model")
    config = root / "mdc.json"
    config.write_text(json.dumps({"runMode": "cloud", "collections": {
        c: {"enabled": True, "sampleRatePercentage": 100} for c in ("model_inputs", "model_outputs", "ground_truth")}}))
    with azure_inference_server(root / "model", root / "server.log", cwd=root, AZUREML_MDC_CONFIG_PATH=str(config),
                                AZUREML_MDC_HOST="127.0.0.1", AZUREML_MDC_PORT=str(sink.port)) as url:
        yield {"url": url, "model_dir": root / "model" / "model", "log": root / "server.log"}


def pixels(row: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(row["pixels"]), dtype=np.uint8).reshape(28, 28)


def test_score_py_collects_images_answers_and_feedback_by_correlation_id(scoring, sink, mnist):
    images, _ = mnist
    url = scoring["url"]
    three = httpx.post(f"{url}/score", json={"data": images[:3].tolist()}, headers={"x-request-id": "req-a"}).json()
    one = httpx.post(f"{url}/score", json={"data": images[3:4].tolist()}, headers={"x-request-id": "req-b"}).json()
    assert three["request_id"] == "req-a" and one["request_id"] == "req-b"

    fed = httpx.post(f"{url}/score", json={"request_id": "req-b", "label": 7})
    assert fed.status_code == 202 and fed.json() == {"status": "accepted", "request_id": "req-b"}
    for body, field in (({"request_id": "req-b", "label": 10}, "label"), ({"request_id": "req-b", "label": True}, "label"),
                        ({"request_id": "", "label": 1}, "request_id")):
        refused = httpx.post(f"{url}/score", json=body)
        assert refused.status_code == 422 and refused.json()["field"] == field, refused.text
    httpx.post(f"{url}/score", json={"data": images[4:5].tolist()}, headers={"x-request-id": "req-c"})
    sink.wait(lambda: any(r["request_id"] == "req-c" for r in sink.rows("model_outputs")), "req-c's answer")

    by_id = {p["headers"]["ce-x-request-id"]: p for p in sink.of("model_inputs")}
    assert {"req-a", "req-b", "req-c"} <= set(by_id) and all(p["path"] == "/modeldata/log" for p in sink.posts)
    rows_a = json.loads(by_id["req-a"]["body"])
    assert [r["correlation_id"] for r in rows_a] == ["req-a_0", "req-a_1", "req-a_2"]
    assert set(rows_a[0]) == {"correlation_id", "pixels", *FEATURES}
    assert np.array_equal(np.stack([pixels(r) for r in rows_a]), images[:3])  # the images themselves, exactly
    assert [r["mean_intensity"] for r in rows_a] == pytest.approx([img.mean() / 255 for img in images[:3]])
    assert [r["ink_coverage"] for r in rows_a] == pytest.approx([(img > 127.5).mean() for img in images[:3]])

    outputs = {r["correlation_id"]: r for r in sink.rows("model_outputs")}
    assert set(outputs["req-b"]) == {"correlation_id", "request_id", "model_version", "digit", "confidence",
                                     *PROBABILITIES, "ood_score", "ood"}
    for i, prediction in enumerate(three["predictions"]):
        row = outputs[f"req-a_{i}"]
        assert (row["request_id"], row["model_version"], row["digit"]) == ("req-a", "1", prediction["digit"])
        assert (row["ood"], row["ood_score"]) == (prediction["ood"], pytest.approx(prediction["ood_score"], abs=1e-5))
        assert [row[p] for p in PROBABILITIES] == pytest.approx(prediction["probabilities"], abs=1e-6)
        assert row["confidence"] == pytest.approx(max(prediction["probabilities"]), abs=1e-6)

    # ground truth: the one accepted answer, keyed by the scored request's id (its one image's row)
    assert sink.rows("ground_truth") == [{"correlation_id": "req-b", "label": 7}]
    assert sink.of("ground_truth")[0]["headers"]["ce-x-request-id"] == "req-b"


# --------------------------------------------------------------------------- the loop, end to end

def seed_version(ws: FakeWorkspace, model_dir: Path) -> None:
    """Version 1 in PROD's registry (@champion), its files in a run of PROD's MLflow."""
    from mlflow.tracking import MlflowClient

    from mnistops.backends.azure import code_snapshot

    client = MlflowClient(ws.mlflow_uri)
    run = client.create_run(client.create_experiment("promoted"))
    client.log_artifacts(run.info.run_id, str(model_dir), "model")
    ws.seed(f"models/{NAME}/versions/1", {
        "modelType": "mlflow_model", "modelUri": f"runs:/{run.info.run_id}/model", "flavors": {},
        "tags": {T.GATE_DECISION: T.APPROVED, T.alias("champion"): "2026-01-01T00:00:00.000000Z"},
        "properties": {T.FILES_RUN_ID: run.info.run_id}})
    ws.seed(f"codes/mnistops-code/versions/{code_snapshot.digest(code_snapshot.root())}", {"codeUri": "https://x/y"})


def test_prod_traffic_then_monitor_yml_alerts_and_queues_qas_ci_with_the_labelled_images(
        scoring, sink, home, tmp_path, data_cache, azure_mlflow):
    """Traffic through the managed endpoint here, then monitor.yml's two steps as written, each in a
    process of its own on a fresh agent signed in as PROD's pipeline identity: `stage=monitor` reads
    the last hour's collector files from Azurite, applies the schedule, alerts the webhook and hands
    the labelled images to QA's MLflow; the script step posts the run of QA's CI to Azure DevOps."""
    import subprocess

    import mnistops
    import pipeline_files as pf
    from azure_proxy import AzureStandIn, AzuriteStore, HostAuthority
    from mlflow.tracking import MlflowClient
    from test_azure_steps_as_processes import PIPELINES, agent_step, run_step, variable_group

    from mnistops.backends.azure.workspace import use_transport

    prod, qa = azure_mlflow.attach(  # each workspace's MLflow: reached through its azureml:// URI
        FakeWorkspace(subscription="22222222-0000-0000-0000-000000000000", resource_group="rg-prod",
                      workspace="mlw-prod", scoring_base=scoring["url"]),
        FakeWorkspace(subscription="11111111-0000-0000-0000-000000000000", resource_group="rg-qa", workspace="mlw-qa"))
    seed_version(prod, scoring["model_dir"])
    endpoint = "mnist-prod-e2e"
    args = ["env=prod", "env.backend=azure", f"env.azure.subscription_id={prod.subscription}",
            f"env.azure.resource_group={prod.resource_group}", f"env.azure.workspace={prod.workspace}",
            f"azure.endpoint_name={endpoint}"]
    with use_transport(FakeAzure(prod, qa), StaticToken()):
        mnistops.run("deploy", [*args, f"deploy.model=models:/{NAME}@champion"])
        traffic = mnistops.run("traffic", [*args, "traffic.shift=invert", "traffic.requests=120", "traffic.rate=0",
                                           "traffic.feedback_fraction=0.5", "traffic.concurrency=4"])
    prefix = f"traffic-{traffic.run_id}-"
    fed = int(traffic.metrics["traffic/feedback"])
    assert traffic.metrics["traffic/errors"] == 0 and traffic.metrics["traffic/feedback_failed"] == 0 and fed >= 40
    sent = lambda c: [r for r in sink.rows(c) if r["correlation_id"].startswith(prefix)]  # noqa: E731
    sink.wait(lambda: len(sent("model_inputs")) == 120 and len(sent("model_outputs")) == 120
              and len(sent("ground_truth")) == fed, "the traffic run's rows")

    hook, devops = CollectorSink(), CollectorSink()  # the alert webhook; Azure DevOps' REST API
    authority = HostAuthority(tmp_path / "tls", ca=azure_mlflow.authority.ca)
    stand_in = AzureStandIn(tmp_path / "azure", FakeAzure(prod, qa), [prod.blobstore.account],
                            authority=authority, principal="prod/pipeline")
    try:
        stand_in.relay_mlflow(prod, qa)  # the runs logged so far stay
        # the sidecar writes the hourly files of blue's collections into PROD's storage (Azurite):
        # this traffic run's requests, which the last hour holds
        ours = [p for p in list(sink.posts) if p["headers"].get("ce-x-request-id", "").startswith(prefix)]
        write_collector_files(AzuriteStore(stand_in, prod), endpoint, "blue", sidecar_records(ours, endpoint, "blue"))

        agent = tmp_path / "agent"
        values = {"Pipeline.Workspace": str(agent), "Build.ArtifactStagingDirectory": str(agent / "a"),
                  **variable_group(qa, "qa", "mnist-qa-e2e"), **variable_group(prod, "prod", endpoint),
                  "alertWebhookUrl": f"http://127.0.0.1:{hook.port}/hook",
                  "System.CollectionUri": f"http://127.0.0.1:{devops.port}/contoso/", "System.TeamProjectId": "p-1",
                  "QA_CI_PIPELINE_ID": "17", "System.AccessToken": "ado-job-token"}
        step = agent_step("monitor.yml", "monitor", values)
        assert not any(a.startswith(("env.tracking_uri", "env.azure.", "endpoint=")) for a in step.args), step.args
        (agent / "a").mkdir(parents=True)
        proc = run_step(step, stand_in, data_cache, agent / "s")
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

        (queue,) = [s for s in pf.scripts(PIPELINES / "monitor.yml", values) if "queue QA's CI" in s.name]
        base = {k: v for k, v in os.environ.items() if not k.startswith(("MNISTOPS_", "AZURE", "MLFLOW_"))}
        queued = subprocess.run(["bash", "--noprofile", "--norc", "-c", queue.text], cwd=agent / "s",
                                env={**base, **queue.env}, capture_output=True, text=True, timeout=60)
        assert queued.returncode == 0, queued.stdout + queued.stderr
    finally:
        stand_in.stop()
        hook.close()
        devops.close()

    # the platform's schedule is applied on the live deployment ...
    (schedule,) = prod.sent("PUT", f"schedules/{endpoint}-monitor")
    definition = schedule.body["properties"]["action"]["monitorDefinition"]
    assert definition["monitoringTarget"]["deploymentId"].lower().endswith(f"/onlineendpoints/{endpoint}/deployments/blue")
    drift_features = definition["signals"]["data_drift"]["features"]
    assert "pixels" not in json.dumps(drift_features) and "ink_coverage" in json.dumps(drift_features)
    # ... the signals are computed here, on the last hour's 120 requests, from a fresh agent
    client = MlflowClient(prod.mlflow_server.base_url)
    (monitor,) = client.search_runs([client.get_experiment_by_name("mnistops").experiment_id],
                                    filter_string=f"tags.`{T.STAGE}` = 'monitor'")
    assert monitor.data.metrics["monitor/requests"] == 120.0 and monitor.data.metrics["monitor/images"] == 120.0
    signals = json.loads(Path(client.download_artifacts(monitor.info.run_id, "monitoring/signals.json",
                                                        str(tmp_path / "signals"))).read_text())
    breached = {f"{s['name']}/{s['metric']}" for s in signals if s["breached"]}
    assert any(b.startswith("data_drift/") for b in breached) and monitor.data.metrics["monitor/alerts"] >= 1
    accuracy = next(s for s in signals if s["name"] == "model_performance" and s["metric"] == "accuracy"
                    and s["deployment"] is None)
    assert accuracy["value"] is not None and f"of {fed} labelled images" in accuracy["note"]
    system = [s for s in signals if s["name"] == "system"]
    assert system and all(s["value"] is None and "Azure Monitor" in s["note"] for s in system)
    assert not [r for r in prod.requests if r.path.endswith("/listsecrets")]
    (alert,) = hook.posts  # the webhook of the secret variable, once
    assert alert["path"] == "/hook" and f"prod/{endpoint}" in json.loads(alert["body"])["summary"]

    # the labelled images are in QA's store, exactly those users labelled, and QA's CI is queued with them
    client = MlflowClient(qa.mlflow_server.base_url)
    (handed,) = client.search_runs([client.get_experiment_by_name("mnistops").experiment_id],
                                   filter_string=f"tags.`{T.DATASET}` = 'production-feedback'")
    assert handed.data.tags[T.SOURCE_ENV] == "prod" and handed.data.tags[T.SOURCE_MONITOR_RUN] == monitor.info.run_id
    npz = np.load(io.BytesIO(Path(client.download_artifacts(handed.info.run_id, "data/labelled.npz",
                                                            str(tmp_path / "dl"))).read_bytes()))
    truth = {r["correlation_id"]: r["label"] for r in sent("ground_truth")}
    expected = sorted((pixels(r).tobytes(), truth[r["correlation_id"]]) for r in sent("model_inputs")
                      if r["correlation_id"] in truth)
    assert sorted((img.tobytes(), int(y)) for img, y in zip(npz["images"], npz["labels"])) == expected
    request = json.loads((agent / "a" / "retrain-request.json").read_text())
    assert request["env"] == "qa" and request["dataset_run_id"] == handed.info.run_id and request["labelled"] == fed
    assert "data.extra_train=[production-feedback]" in request["ci_overrides"]
    assert not qa.sent("PUT", ".*")  # QA's workspace is not changed: only its MLflow store got the dataset
    assert not prod.denied and not qa.denied, (prod.denied, qa.denied)

    (run,) = devops.posts  # Azure DevOps' "Runs - Run Pipeline" of QA's CI, with the overrides as ciArgs
    assert run["path"] == "/contoso/p-1/_apis/pipelines/17/runs?api-version=7.1"
    assert run["headers"]["authorization"] == "Bearer ado-job-token"
    ci_args = json.loads(run["body"])["templateParameters"]["ciArgs"]
    assert ci_args == " ".join(request["ci_overrides"])
    (ci,) = [s for s in pf.steps(PIPELINES / "ci.yml", pf.Neutral().values, parameters={"ciArgs": ci_args})
             if s.value("stage") == "ci"]  # QA's CI, queued so, trains on the handed-over images
    assert ci.value("data.extra_train") == "[production-feedback]", ci.args
