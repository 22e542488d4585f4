"""stage=canary: a challenger in the idle deployment on mirrored live traffic, judged against the
champion on the same requests. Integration: real trained versions, a real supervised endpoint on
127.0.0.1, live traffic from a client thread throughout; unit: the decision rule's statistics."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from conftest import compose, free_port, fresh_home, mlflow_client, run_cli
from mnistops.config import CanaryStageConfig
from mnistops.quality import canary as C

MODEL = "mnist-classifier"
# the champion's recipe (experiment=fast, cut short): ~97 % in a few seconds of training
RECIPE = ["experiment=fast", "trainer.max_epochs=1", "trainer.limit_train_batches=120", "trainer.limit_val_batches=1",
          "trainer.limit_test_batches=1", "data.eval_batch_size=500"]
# a tiny logistic regression: three batches of training, far from the champion's answers
WORSE = ["model=logreg", "trainer.max_epochs=1", "trainer.limit_train_batches=3", "trainer.limit_val_batches=1",
         "trainer.limit_test_batches=1", "data.eval_batch_size=500", "data.augment.enabled=false"]
# a much bigger net, barely trained: ~37 ms an image on one thread, ~75x the champion's cnn_small
# (cnn_large itself, ~40x the multiply-adds, measured only 2.7x the champion's p99 on a loaded 2-core
# machine, and a ~10 ms net 2.4x in one CI run: there the champion's p99 was 12 ms, mostly waiting for a
# core; the judged time has to be the challenger's own work, far above what waiting adds)
SLOW = ["model=cnn_large", "model.net.stages=[[256,256],[512,512],[1024]]", "model.net.hidden=512",
        "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1", "data.batch_size=32", "data.eval_batch_size=125",
        # its calibration on fewer images: every image through this net costs ~37 ms
        "data.val_size=250", "train.ood_fit_images=150"]
# judged on 200 requests (after 50 of warm-up), half the live traffic mirrored; thresholds fit models
# trained for seconds; the latency ratio allowed (3) leaves equal models room on a busy machine (~1x
# once the warm-up is left out); the slow version is judged at the default (1.5)
KNOBS = ["canary.mirror=50", "canary.requests=200", "canary.min_agreement=0.85", "canary.max_latency_ratio=3",
         "canary.max_error_rate=0.05", "canary.poll_s=0.5", "canary.timeout_s=300", "canary.no_traffic_s=60"]


# ------------------------------------------------------------------------------------ unit: the rule

def _answers(n, agree, challenger_ms=1.0, failed=0, ood=None):
    rows = []
    for i in range(n):
        d = i % 10
        rows.append({"id": f"r{i}", "deployment": "blue", "status": 200, "latency_ms": 1.0 + (i % 7) / 10,
                     "digits": [d], "top": [0.9], "ood": ood and [False], "label": d, "t": 100.0 + i})
        other = d if i < agree else (d + 1) % 10
        rows.append({"id": f"r{i}", "deployment": "green", "status": 500 if i < failed else 200,
                     "latency_ms": challenger_ms * (1.0 + (i % 7) / 10), "digits": [] if i < failed else [other],
                     "top": [0.8], "ood": ood and [i % 5 == 0], "t": 100.0 + i})
    return C.answers_frame(rows)


def test_the_warm_up_is_not_judged():
    answers = _answers(300, 300)
    answers.loc[(answers["deployment"] == "green") & (answers["t"] < 110), "latency_ms"] = 500.0  # cold start
    assert C.judge(answers, "blue", "green", C.Rules(requests=250, warmup=0)).checks["latency"].verdict == C.FAIL
    judged = C.judge(answers, "blue", "green", C.Rules(requests=250, warmup=10, max_error_rate=0.02))
    assert judged.decision == C.PROMOTE and judged.joined == 290


def test_same_answers_promote_with_the_evidence_stated():
    v = C.judge(_answers(500, 500), "blue", "green", C.Rules(requests=500, warmup=0))
    assert v.decision == C.PROMOTE, v.reasons
    assert v.checks["agreement"].low > 0.99 and v.checks["latency"].verdict == C.PASS
    assert v.checks["ood"].verdict == C.SKIPPED and v.checks["accuracy"].value == 0.0
    assert "Wilson" in v.checks["agreement"].statement and v.joined == 500


def test_too_few_requests_hold_and_a_near_threshold_agreement_holds():
    assert C.judge(_answers(100, 100), "blue", "green", C.Rules(requests=500)).decision == C.HOLD
    near = C.judge(_answers(500, 487), "blue", "green", C.Rules(requests=500, warmup=0, min_agreement=0.97))
    assert near.decision == C.HOLD and near.checks["agreement"].verdict == C.INCONCLUSIVE


def test_disagreement_slowness_errors_and_more_not_a_digit_reject():
    rules = C.Rules(requests=200, warmup=0)
    assert C.judge(_answers(200, 150), "blue", "green", rules).checks["agreement"].verdict == C.FAIL
    slow = C.judge(_answers(200, 200, challenger_ms=5.0), "blue", "green", rules)
    assert slow.decision == C.REJECT and slow.checks["latency"].verdict == C.FAIL
    assert slow.checks["latency"].value == pytest.approx(5.0)
    failing = C.judge(_answers(300, 300, failed=30), "blue", "green", rules)
    assert failing.decision == C.REJECT and failing.checks["errors"].verdict == C.FAIL
    ood = C.judge(_answers(300, 300, ood=True), "blue", "green", rules)  # 20 % more "not a digit"
    assert ood.decision == C.REJECT and ood.checks["ood"].value == pytest.approx(0.2) and ood.checks["ood"].low > 0.1


def test_a_replaced_versions_late_failures_in_the_slot_are_not_the_next_versions():
    """A rejected version's queued mirrored copies fail after its removal, under its slot's name; the
    next version loaded into that slot is judged on its own answers only (CI once saw a promotion turn
    into "challenger failed 3188/3506 copies")."""
    answers = _answers(300, 300)
    late = C.answers_frame({"id": f"r{i}", "deployment": "green", "status": 500, "latency_ms": 0.0, "t": 101.0 + i,
                            "version": "4"} for i in range(1000))
    mixed = pd.concat([answers, late], ignore_index=True)
    rules = C.Rules(requests=200, warmup=0, max_error_rate=0.02)
    assert C.judge(mixed, "blue", "green", rules).checks["errors"].verdict == C.FAIL  # counted by slot name alone
    mine = C.of_versions(mixed, {"blue": "1", "green": "2"})
    assert len(mine) == len(answers)  # the rows that name no version stay (this frame's own)
    judged = C.judge(mine, "blue", "green", rules)
    assert judged.decision == C.PROMOTE and judged.checks["errors"].value == 0.0
    assert len(C.of_versions(mixed, {"blue": "1", "green": ""})) == len(mixed)  # a version not known: all kept


def test_wilson_bounds():
    lo, hi = C.wilson(0, 200, 1.959964)
    assert lo == 0.0 and hi == pytest.approx(0.0188, abs=1e-4)
    lo, hi = C.wilson(199, 200, 1.959964)
    assert lo == pytest.approx(0.9722, abs=1e-4) and hi > 0.999
    lo, hi = C.newcombe(4, 0, 256, 1.959964)  # 4 of 256 "not a digit" against none: not clearly more
    assert lo < 0.02 < hi and lo < 0 < 4 / 256 < hi


# ------------------------------------------------------------------------------------ integration

@pytest.fixture(scope="module")
def canary_home(tmp_path_factory, data_cache):
    """A prod registry with v1 (the champion), v2 (its recipe, another seed), v3 (a tiny logistic
    regression) and v4 (a big slow net); v1 serves 100 % on a fresh endpoint."""
    home = fresh_home(tmp_path_factory, data_cache, "canary-home")
    for seed, recipe in ((1, RECIPE), (2, RECIPE), (3, WORSE), (4, SLOW)):
        run_cli(["env=prod", "stage=pipeline", f"seed={seed}", *recipe], home, check=True, timeout=900)
    overrides = ["env=prod", f"paths.home={home}", "endpoint.name=canary", f"endpoint.port={free_port()}"]
    run_cli(["stage=deploy", f"deploy.model=models:/{MODEL}/1", *overrides], home, check=True)
    yield home, overrides
    run_cli(["stage=endpoint", "endpoint.action=stop", *overrides], home)


class Traffic:
    """Live requests from two client threads (real test images, feedback on every 4th) until stopped;
    counts every answer by deployment and every failure."""

    def __init__(self, home: Path, overrides):
        from mnistops.backends.local.server import EndpointServer
        from mnistops.data.idx import read_idx

        ep = EndpointServer(compose(overrides, home))
        self.url, self.key = ep.url, ep.key()
        self.images = np.array(read_idx(home / "data" / "mnist" / "t10k-images-idx3-ubyte")[:2000])
        self.labels = np.array(read_idx(home / "data" / "mnist" / "t10k-labels-idx1-ubyte")[:2000])
        self.stop = threading.Event()
        self.by_deployment: dict = {}
        self.failures: list = []
        self.lock = threading.Lock()
        self.counter = itertools.count()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(2)]

    def _run(self):
        from mnistops.serving_client import feedback, score

        with httpx.Client() as client:
            while not self.stop.is_set():
                i = next(self.counter) % len(self.images)
                try:
                    status, body = score(client, self.url, self.key, self.images[i:i + 1], timeout=30)
                    if status == 200 and i % 4 == 0:
                        feedback(client, self.url, self.key, body["request_id"], int(self.labels[i]))
                except httpx.HTTPError as err:
                    status, body = -1, {"error": repr(err)}
                with self.lock:
                    if status != 200:
                        self.failures.append((status, body))
                    else:
                        dep = body["deployment"]
                        self.by_deployment[dep] = self.by_deployment.get(dep, 0) + 1

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)


def _state(home, overrides):
    from mnistops.backends.local.server import EndpointServer

    return EndpointServer(compose(overrides, home)).state()


def _tags(home, version):
    return mlflow_client(home, "prod").get_model_version(MODEL, str(version)).tags


def _canary(home, overrides, version, *extra):
    with Traffic(home, overrides) as traffic:
        proc = run_cli(["stage=canary", f"deploy.model=models:/{MODEL}/{version}", *overrides, *KNOBS, *extra],
                       home, timeout=600)
    return proc, traffic


@pytest.mark.integration
def test_a_clearly_worse_version_is_rejected_and_the_champion_keeps_all_traffic(canary_home):
    home, overrides = canary_home
    proc, traffic = _canary(home, overrides, 3)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "canary REJECT models:/mnist-classifier/3" in proc.stdout
    assert traffic.failures == [], traffic.failures[:5]
    assert set(traffic.by_deployment) == {"blue"} and traffic.by_deployment["blue"] >= 400  # clients: champion only
    state = _state(home, overrides)
    assert state["traffic"] == {"blue": 100} and not state["mirror_traffic"]
    assert set(state["deployments"]) == {"blue"}  # the challenger was removed
    tags = _tags(home, 3)
    assert tags["mnistops.canary.decision"] == "reject" and "agreement" in tags["mnistops.canary.reasons"]
    assert tags["mnistops.canary.compared_to"] == f"models:/{MODEL}/1"
    run = mlflow_client(home, "prod").get_run(tags["mnistops.canary.run_id"])
    assert run.data.metrics["canary/joined_requests"] >= 200 and run.data.metrics["canary/agreement"] < 0.85
    assert Path(proc.stdout.split("report: ")[-1].split()[0]).read_text().count("REJECT") == 1


@pytest.mark.integration
def test_the_same_recipe_with_another_seed_is_promoted(canary_home):
    home, overrides = canary_home
    proc, traffic = _canary(home, overrides, 2)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "canary PROMOTE models:/mnist-classifier/2" in proc.stdout
    assert traffic.failures == [], traffic.failures[:5]
    state = _state(home, overrides)
    slot = next(d for d, info in state["deployments"].items() if info["model_uri"] == f"models:/{MODEL}/2")
    assert state["traffic"] == {slot: 100} and not state["mirror_traffic"]
    tags = _tags(home, 2)
    assert tags["mnistops.canary.decision"] == "promote"
    assert "agreement" in tags["mnistops.canary.evidence"]
    # a second canary of the version now serving has nothing to do
    proc = run_cli(["stage=canary", f"deploy.model=models:/{MODEL}/2", *overrides, *KNOBS], home)
    assert proc.returncode == 2 and "already serves" in proc.stderr


@pytest.mark.integration
def test_a_slow_version_is_rejected_on_latency(canary_home):
    home, overrides = canary_home
    # after the promotion (a rejected slow challenger's queued copies drain and fail for up to 10 s after
    # its removal, logged under its slot's name: a canary in that slot right after would count them)
    serving = _state(home, overrides)["traffic"]
    # agreement is not asked for here (min_agreement ~0): the decision rests on latency alone, at the
    # default threshold (1.5x the champion's p99)
    default = CanaryStageConfig().max_latency_ratio
    proc, traffic = _canary(home, overrides, 4, "canary.min_agreement=0.001", f"canary.max_latency_ratio={default}")
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert traffic.failures == [], traffic.failures[:5]
    line = next(ln for ln in proc.stdout.splitlines() if ln.strip().startswith("latency"))
    assert " fail " in f" {line} ", line
    tags = _tags(home, 4)
    assert tags["mnistops.canary.decision"] == "reject" and "latency: p99" in tags["mnistops.canary.reasons"]
    run = mlflow_client(home, "prod").get_run(tags["mnistops.canary.run_id"])
    assert run.data.metrics["canary/latency"] > default
    assert _state(home, overrides)["traffic"] == serving


@pytest.mark.integration
def test_without_live_traffic_canary_holds_and_cd_lets_the_smoke_test_decide(canary_home):
    home, overrides = canary_home
    proc = run_cli(["stage=canary", f"deploy.model=models:/{MODEL}/1", *overrides, *KNOBS, "canary.no_traffic_s=2"],
                   home)
    assert proc.returncode == 3, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "no live traffic" in proc.stderr
    # stage=cd in prod (cd.canary=true by default): the champion alias moves to v1; no traffic, so the smoke test decides
    mlflow_client(home, "prod").set_registered_model_alias(MODEL, "champion", "1")
    proc = run_cli(["stage=cd", *overrides, *KNOBS, "canary.no_traffic_s=2", "smoke.samples=50",
                    "smoke.min_accuracy=0.5", "smoke.max_p95_ms=10000"], home)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "no live traffic" in proc.stdout and "the deploy and smoke test decide" in proc.stdout
    state = _state(home, overrides)
    slot = next(d for d, info in state["deployments"].items() if info["model_uri"] == f"models:/{MODEL}/1")
    assert state["traffic"] == {slot: 100}
    assert _tags(home, 1)["mnistops.smoke.prod"] == "passed"


# ------------------------------------------------------------------------------------ azure: the same judge

def test_azure_evidence_from_the_collected_outputs_of_both_deployments():
    """On Azure the mirrored deployment's answers exist only as what its score.py collected: read back
    through the flavour (the blob service answers from tests/azure_workspace.py at the SDK's transport),
    they are judged by the same code; latency and failures are not collected there, so skipped."""
    import calendar

    from conftest import needs_module

    needs_module("azure.ai.ml", "pip install -e '.[azure]'")
    needs_module("azure.storage.blob", "pip install -e '.[azure]'")
    from azure_workspace import FakeWorkspace, StaticToken, collector_record, write_collector_files

    from mnistops import backends
    from mnistops.backends.azure.workspace import use_transport

    endpoint, t0 = "mnist-prod-abc123", float(calendar.timegm((2026, 3, 1, 10, 0, 0)))
    ws = FakeWorkspace(workspace="mlw-prod")

    def outputs(rid, digits, version, ood=False):
        ids = [rid] if len(digits) == 1 else [f"{rid}_{i}" for i in range(len(digits))]
        rows = []
        for cid, d in zip(ids, digits):
            p = [0.02] * 10
            p[d] = 0.82
            rows.append({"correlation_id": cid, "request_id": rid, "model_version": version, "digit": d,
                         "confidence": 0.82, **{f"p{k}": p[k] for k in range(10)}, "ood_score": 0.1, "ood": ood})
        return rows

    for i in range(40):
        digits = [i % 10] if i % 8 else [i % 10, (i + 1) % 10]  # some requests hold two images
        other = digits if i % 10 else [(d + 3) % 10 for d in digits]  # the challenger differs on 1 in 10
        for deployment, answer, version in (("blue", digits, "4"), ("green", other, "5")):
            write_collector_files(ws.blobstore, endpoint, deployment, [collector_record(
                "model_outputs", outputs(f"r-{i}", answer, version), t0 + 60 + i, f"r-{i}", endpoint, deployment)])
    write_collector_files(ws.blobstore, endpoint, "blue", [collector_record(
        "ground_truth", [{"correlation_id": "r-1", "label": 1}], t0 + 200, "r-1", endpoint, "blue")])
    cfg = compose(["env=prod", "env.backend=azure", f"env.azure.subscription_id={ws.subscription}",
                   f"env.azure.resource_group={ws.resource_group}", f"env.azure.workspace={ws.workspace}",
                   f"azure.endpoint_name={endpoint}"])
    with use_transport(ws, StaticToken()):
        answers = backends.get(cfg).monitoring.answers(cfg, t0, t0 + 3600, ["blue", "green"])
    assert len(answers) == 80 and set(answers["deployment"]) == {"blue", "green"}
    assert answers.set_index(["deployment", "id"]).loc[("blue", "r-8"), "digits"] == (8, 9)  # image order kept
    v = C.judge(answers, "blue", "green", C.Rules(requests=40, warmup=0, min_agreement=0.98))
    assert v.joined == 40 and v.images == 45 and v.checks["agreement"].value == pytest.approx(40 / 45)
    assert v.decision == C.REJECT and v.checks["agreement"].verdict == C.FAIL
    assert v.checks["latency"].verdict == C.SKIPPED and v.checks["errors"].verdict == C.SKIPPED
    assert v.checks["ood"].verdict == C.PASS and v.checks["accuracy"].statement.startswith("on 1 requests")
