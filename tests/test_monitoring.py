"""Monitoring end to end on a real endpoint (uvicorn on 127.0.0.1, collection on) and real data:
clean traffic raises no drift alert, shifted traffic does, wrong feedback lowers the measured
accuracy and alerts, alerts reach a webhook on 127.0.0.1, a dead sink is reported, and the
retraining trigger runs the CI pipeline whose gate still decides."""

from __future__ import annotations

import json
import re
import shutil
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from conftest import QUICK, free_port, fresh_home, mlflow_client, run_cli, runs_of
from mnistops import tags

pytestmark = pytest.mark.integration

# a quick logreg reads ~0.85-0.9 of digits: judge performance against that, not production's 0.95
MONITOR = ["monitor.min_requests=100", "monitor.min_feedback=30", "monitor.thresholds.min_accuracy=0.75",
           "monitor.thresholds.min_class_recall=0.3", "monitor.thresholds.min_class_precision=0.3",
           "monitor.reference_size=3000"]


@pytest.fixture(scope="module")
def served(tmp_path_factory, data_cache):
    """An env whose champion serves on a real endpoint with collection on: the steps stage=ci leaves in a
    store (pipeline: train, evaluate, register; baseline; gate) run as stages, not as a whole CI."""
    home = fresh_home(tmp_path_factory, data_cache, "monitoring-home")
    port = f"endpoint.port={free_port()}"
    run_cli(["stage=pipeline", *QUICK], home, check=True, timeout=900)
    run_cli(["stage=baseline"], home, check=True, timeout=900)
    run_cli(["stage=gate", "gate.min_accuracy=0.75"], home, check=True)
    run_cli(["stage=deploy", port, "deploy.model=models:/mnist-classifier@champion"], home, check=True, timeout=300)
    yield home, port
    run_cli(["stage=endpoint", "endpoint.action=stop", port], home)


def traffic(home, port, *extra):
    """Run stage=traffic; (its output, the monitor override that judges exactly its requests)."""
    out = run_cli(["stage=traffic", port, "traffic.rate=0", "traffic.requests=300", *extra], home, check=True,
                  timeout=300)
    run_id = re.search(r"monitor\.traffic_run=([0-9a-f]{32})", out.stdout)[1]
    return out, f"monitor.traffic_run={run_id}"


def alerts(home) -> list:
    path = home / "dev" / "monitoring" / "alerts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def drift_alerts(new: list) -> list:
    return [a for a in new if a["signal"] in ("data_drift", "embedding_drift", "prediction_drift")]


class Hook(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):
        Hook.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_clean_shifted_and_wrong_feedback(served):
    home, port = served
    # clean traffic with true feedback: no alert of any kind
    out, sent = traffic(home, port, "traffic.feedback_fraction=0.5", "traffic.seed=1")
    assert "300 requests" in out.stdout and "0 errors" in out.stdout
    before = len(alerts(home))
    clean = run_cli(["stage=monitor", port, sent, *MONITOR], home, check=True, timeout=600)
    assert "no alerts" in clean.stdout, clean.stdout
    assert alerts(home)[before:] == []
    report = home / "dev" / "outputs"
    assert list(report.rglob("monitor_report.html"))

    # inverted images: drift alerts, and the stage still exits 0 (alerts are data)
    _, sent = traffic(home, port, "traffic.shift=invert", "traffic.severity=1.0", "traffic.seed=2")
    before = len(alerts(home))
    shifted = run_cli(["stage=monitor", port, sent, *MONITOR], home, check=True, timeout=600)
    new = alerts(home)[before:]
    assert drift_alerts(new), shifted.stdout
    a = drift_alerts(new)[0]
    assert a["value"] > a["threshold"] and a["window"]["requests"] == 300 and a["env"] == "dev"
    assert "ALERT" in shifted.stdout

    # wrong labels in the feedback: measured accuracy falls and alerts; a webhook on 127.0.0.1 gets it
    hook = HTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=hook.serve_forever, daemon=True)
    thread.start()
    try:
        _, sent = traffic(home, port, "traffic.feedback_fraction=1.0", "traffic.label_noise=0.6", "traffic.seed=3")
        wrong = run_cli(["stage=monitor", port, sent, *MONITOR,
                         f"monitor.alerts.webhook_url=http://127.0.0.1:{hook.server_port}/hook"], home, check=True,
                        timeout=600)
    finally:
        hook.shutdown()
        hook.server_close()
    perf = [a for a in alerts(home) if a["signal"] == "model_performance" and a["metric"] == "accuracy"]
    assert perf and perf[-1]["value"] < 0.6, wrong.stdout
    assert Hook.received, "the webhook got nothing"
    payload = Hook.received[-1]
    assert "accuracy" in payload["text"] and payload["alerts"][0]["threshold"] is not None
    client = mlflow_client(home)
    run = max(runs_of(client, "monitor"), key=lambda r: r.info.start_time)
    assert run.data.metrics["monitor/alerts"] >= 1
    assert any(a.path.endswith("monitor_report.html") for a in client.list_artifacts(run.info.run_id, "monitoring"))


def test_dead_sink_is_reported(served):
    home, port = served
    _, sent = traffic(home, port, "traffic.shift=invert", "traffic.seed=4", "traffic.requests=150")
    dead = f"monitor.alerts.webhook_url=http://127.0.0.1:{free_port()}/nobody-listens"
    fast = ["monitor.alerts.retries=1", "monitor.alerts.backoff_s=0.05", "monitor.alerts.timeout_s=1"]
    reported = run_cli(["stage=monitor", port, sent, *MONITOR, dead, *fast], home, check=True, timeout=600)
    assert "WARNING: alert sink webhook failed after 2 attempt(s)" in reported.stdout
    assert "nobody-listens" not in reported.stdout  # webhook URLs carry secrets: host only
    failed = run_cli(["stage=monitor", port, sent, *MONITOR, dead, *fast,
                      "monitor.alerts.fail_on_sink_error=true"], home, timeout=600)
    assert failed.returncode == 2 and "alert sink webhook failed" in failed.stderr
    strict = run_cli(["stage=monitor", port, sent, *MONITOR, "monitor.fail_on_alert=true"], home, timeout=600)
    assert strict.returncode == 2 and "monitoring alert(s)" in strict.stderr


def test_a_retraining_whose_gate_refuses_leaves_the_champion(served):
    """The local trigger when the gate refuses: the alert hands the labelled window over, the CI runs and
    registers a worse model, its gate refuses it, the monitor says so and the champion stays. The CI's
    steps are cut to register (a one-batch model trained beforehand) and gate: that a retraining trains
    on the handed-over feedback and is approved is the rehearsal's point (step 7, through the
    pipelines), so no training CI runs here."""
    home, port = served
    client = mlflow_client(home)
    champion = client.get_model_version_by_alias("mnist-classifier", "champion").version
    trains = {r.info.run_id for r in runs_of(client, "train")}
    run_cli(["stage.steps=[train,evaluate]", "model=logreg", "trainer.max_epochs=1", "trainer.limit_train_batches=1",
             "trainer.limit_val_batches=1"], home, check=True, timeout=600)
    (starved,) = [r.info.run_id for r in runs_of(client, "train") if r.info.run_id not in trains]
    _, sent = traffic(home, port, "traffic.shift=thick", "traffic.severity=1.0", "traffic.feedback_fraction=1.0",
                      "traffic.seed=5")
    ci = ["stage.steps=[register,gate]", f"register.run_id={starved}"]
    retrain = ["monitor.on_alert=retrain", "monitor.retrain.env=dev",
               "monitor.retrain.overrides=[" + ",".join(f"'{o}'" for o in ci) + "]"]
    out = run_cli(["stage=monitor", port, sent, *MONITOR, *retrain], home, check=True, timeout=900)
    assert "retraining in dev" in out.stdout and "the gate refused the retrained model" in out.stdout, out.stdout
    handed = client.search_runs([client.get_experiment_by_name("mnistops").experiment_id],
                                filter_string="tags.`mnistops.dataset` = 'production-feedback'")
    assert len(handed) == 1 and int(handed[0].data.tags["mnistops.images"]) > 0
    assert client.get_model_version_by_alias("mnist-classifier", "champion").version == champion
    newest = max(client.search_model_versions("name='mnist-classifier'"), key=lambda v: int(v.version))
    assert newest.tags["mnistops.gate.decision"] == "rejected" and newest.version != champion
    assert newest.run_id == starved
    (ci_run,) = runs_of(client, "ci")
    assert ci_run.info.status == "FAILED"


def test_a_retraining_in_qa_that_passes_hands_over_and_runs_qas_ci(served):
    """The defaults: monitor.retrain.env=qa, trigger=local. The alert hands the labelled window to QA's
    store and QA's CI runs here and now with it as data.extra_train; it passes, the monitor says so and
    exits 0, and this env's champion is untouched (it moves only through QA's CD and promote). The CI
    here runs its first steps only (data, validate); that a queued CI trains on the hand-over and is
    approved is the rehearsal's step 7 (tests/test_pipelines_rehearsal.py), so `make test` trains in
    stage=ci at most CI_TRAINING_BUDGET times."""
    home, port = served
    client = mlflow_client(home)
    champion = client.get_model_version_by_alias("mnist-classifier", "champion").version
    _, sent = traffic(home, port, "traffic.shift=thick", "traffic.severity=1.0", "traffic.feedback_fraction=1.0",
                      "traffic.seed=7")
    retrain = ["monitor.on_alert=retrain", "monitor.retrain.overrides=['stage.steps=[data,validate]']"]
    out = run_cli(["stage=monitor", port, sent, *MONITOR, *retrain], home, check=True, timeout=900)
    assert "retraining in qa" in out.stdout and "ci in qa passed" in out.stdout, out.stdout[-3000:]
    qa = mlflow_client(home, "qa")
    handed = qa.search_runs([qa.get_experiment_by_name("mnistops").experiment_id],
                            filter_string="tags.`mnistops.dataset` = 'production-feedback'")
    assert len(handed) == 1 and int(handed[0].data.tags["mnistops.images"]) > 0
    (ci_run,) = runs_of(qa, "ci")
    assert ci_run.info.status == "FINISHED"
    assert "data.extra_train=" in ci_run.data.tags[tags.OVERRIDES], ci_run.data.tags[tags.OVERRIDES]
    (data,) = runs_of(qa, "data")  # QA's CI ran its steps under its own run, in QA's store
    assert data.data.tags["mlflow.parentRunId"] == ci_run.info.run_id
    assert runs_of(qa, "train") == []
    assert mlflow_client(home).get_model_version_by_alias("mnist-classifier", "champion").version == champion


def test_a_fresh_agent_reuses_the_drift_reference_kept_in_the_store(served):
    """The reference a monitor built is kept in the env's tracking store (a run tagged
    mnistops.drift_reference); an agent without this machine's cache downloads it, builds nothing."""
    home, port = served
    client = mlflow_client(home)

    def kept():
        exp = client.get_experiment_by_name("mnistops")
        return sorted(r.info.run_id for r in client.search_runs(
            [exp.experiment_id], filter_string="tags.`mnistops.drift_reference` != ''"))

    _, sent = traffic(home, port, "traffic.seed=11")
    run_cli(["stage=monitor", port, sent, *MONITOR], home, check=True, timeout=600)  # builds it, unless done before
    stored = kept()
    assert len(stored) == 1, stored
    cache = home / "dev" / "monitoring" / "reference"
    (built,) = cache.glob("*.npz")
    content = built.read_bytes()
    shutil.rmtree(cache)  # a fresh agent: nothing cached on this machine, only the env's stores
    run_cli(["stage=monitor", port, sent, *MONITOR], home, check=True, timeout=600)
    assert kept() == stored, "the reference was built again instead of being read from the store"
    assert [f.read_bytes() for f in cache.glob("*.npz")] == [content]  # the very file the store kept
