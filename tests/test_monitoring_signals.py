"""Monitoring signals on real MNIST images: drift, data quality, model performance (measured and
estimated without labels) and system signals of a window, the noise-aware distances, the synthetic
shifts, the signal table, the drift-reference cache and the HTML report.

The model is a real ONNX graph written by the real exporter (``mnistops.models.export``): the
``logreg`` network with weights fitted in closed form (ridge regression on 20,000 training images,
~85 % test accuracy, a second instead of a training run), laid out as a registered model dir.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import compose

from mnistops.monitoring.drift import (DRIFT_FEATURES, build_reference, class_distribution, js_distance,
                                       load_reference, noise_floor, normalised_wasserstein, save_reference)
from mnistops.monitoring.shifts import SHIFTS, apply_shift
from mnistops.monitoring.signals import NAMES, evaluate_window, metrics, summary
from mnistops.monitoring.window import make_window, requests_frame

# an embedder, a drift reference and a suite built over 60,000 real images: ~40 s before the first test
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def mnist(data_cache):
    from mnistops.data.idx import read_idx

    d = data_cache / "mnist"
    return {"train_x": read_idx(d / "train-images-idx3-ubyte"),
            "train_y": read_idx(d / "train-labels-idx1-ubyte").astype(np.int64),
            "test_x": read_idx(d / "t10k-images-idx3-ubyte"),
            "test_y": read_idx(d / "t10k-labels-idx1-ubyte").astype(np.int64)}


def export_model(net, root: Path) -> Path:
    from mnistops.models.export import export_onnx

    (root / "artifacts").mkdir(parents=True)
    export_onnx(net, root / "artifacts" / "model.onnx")
    (root / "MLmodel").write_text("flavors: {}\n")
    (root / "registered_model_meta").write_text("model_name: mnist-classifier\nmodel_version: 7\n")
    return root


@pytest.fixture(scope="module")
def model_dir(mnist, tmp_path_factory) -> Path:
    import torch

    from mnistops.models.nets import MNIST_MEAN, MNIST_STD, LogisticRegression

    x = (mnist["train_x"][:20000].reshape(-1, 784) / 255.0 - MNIST_MEAN) / MNIST_STD
    x1 = np.hstack([x, np.ones((len(x), 1))])
    y = np.eye(10)[mnist["train_y"][:20000]]
    w = np.linalg.solve(x1.T @ x1 + 10.0 * np.eye(785), x1.T @ y)
    net = LogisticRegression()
    with torch.no_grad():
        net.net[2].weight.copy_(torch.tensor(w[:784].T, dtype=torch.float32))
        net.net[2].bias.copy_(torch.tensor(w[784], dtype=torch.float32))
    return export_model(net, tmp_path_factory.mktemp("ridge-model"))


@pytest.fixture(scope="module")
def embedder(model_dir):
    from mnistops.monitoring.embedding import Embedder

    return Embedder(model_dir)


@pytest.fixture(scope="module")
def reference(mnist, embedder):
    # the ridge model was fitted on the first 20,000 training images: the last 5,000 are its hold-out
    return build_reference(mnist["train_x"], embedder, 8, size=10000, seed=0,
                           holdout=(mnist["train_x"][-5000:], mnist["train_y"][-5000:]))


@pytest.fixture(scope="module")
def suite(mnist):
    from mnistops.quality import build_suite

    return build_suite(mnist["train_x"], mnist["train_y"], name="mnist-test", dataset_digest="test")[0]


@pytest.fixture(scope="module")
def mcfg():
    return compose([]).monitor


def window_of(x, embedder, labels=None, **kw):
    probs, _ = embedder(x)
    return make_window(x, probs, labels=labels, **kw)


def test_distances_on_known_inputs():
    assert normalised_wasserstein([0, 1], [1, 2]) == pytest.approx(2.0)  # W=1, reference std 0.5
    rng = np.random.default_rng(0)
    ref = rng.normal(5, 2, 200_000)
    assert normalised_wasserstein(ref, ref + 0.2) == pytest.approx(0.2 / ref.std())  # ~0.1 std shift
    assert normalised_wasserstein([3, 3, 3], [4, 4]) == pytest.approx(1000.0)  # std 0: floored at 1e-3
    assert js_distance([1, 0], [1, 0]) == 0.0
    assert js_distance([1, 0], [0, 1]) == pytest.approx(1.0)
    m = np.array([0.75, 0.25])  # JS divergence by hand, base 2
    kl = lambda p: float(np.sum(np.where(p > 0, p * np.log2(np.where(p > 0, p, 1) / m), 0)))  # noqa: E731
    assert js_distance([1, 0], [0.5, 0.5]) == pytest.approx(np.sqrt(0.5 * kl(np.array([1.0, 0])) + 0.5 * kl(np.array([0.5, 0.5]))))
    assert js_distance([10, 0], [5, 5]) == js_distance([1, 0], [0.5, 0.5])  # counts are normalised
    assert np.isnan(js_distance([0, 0], [1, 0]))
    assert class_distribution([0, 0, 1, 9]).tolist() == [0.5, 0.25] + [0.0] * 7 + [0.25]
    # the noise floor: what clean windows of that size show; shrinks like 1/sqrt(n)
    col = ref[:10000, None]
    f100, f1000 = noise_floor(col, 100)[0], noise_floor(col, 1000)[0]
    assert 0.12 < f100 < 0.3 and 0.04 < f1000 < 0.1 and f100 / f1000 == pytest.approx(np.sqrt(10), rel=0.3)


def test_embedder_logreg_and_cnn(embedder, mnist, tmp_path):
    import onnxruntime as ort
    import torch

    from mnistops.models.nets import ConvNet

    x = mnist["test_x"][:300]
    probs, emb = embedder(x)
    assert probs.shape == (300, 10) and emb.shape == (300, 784) and probs.dtype == np.float32
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    assert (probs.argmax(1) == mnist["test_y"][:300]).mean() > 0.8
    assert embedder.version == "7" and embedder.model_name == "mnist-classifier"
    torch.manual_seed(0)
    cnn_dir = export_model(ConvNet(stages=[[8], [16]], hidden=32).eval(), tmp_path / "cnn")
    from mnistops.monitoring.embedding import Embedder

    p, e = Embedder(cnn_dir)(x)
    assert e.shape == (300, 32) and (e >= 0).all()  # the ReLU before the classifier layer
    plain = ort.InferenceSession(str(cnn_dir / "artifacts" / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = plain.run(None, {"images": x[:, None].astype(np.float32) / 255})[0]
    assert np.allclose(p.argmax(1), logits.argmax(1)) and np.allclose(p, np.exp(logits) / np.exp(logits).sum(1, keepdims=True), atol=1e-5)


def test_clean_window_has_no_drift_or_quality_breach(mnist, embedder, reference, suite, mcfg):
    rng = np.random.default_rng(1)
    idx = rng.choice(10000, 500, replace=False)
    x, y = mnist["test_x"][idx], mnist["test_y"][idx]
    signals = evaluate_window(window_of(x, embedder, labels=y), reference, embedder, mcfg, suite)
    names = {s.name for s in signals}
    assert names == set(NAMES) >= {"data_drift", "embedding_drift", "prediction_drift", "data_quality",
                                   "model_performance", "estimated_performance", "ood", "system"}
    assert len([s for s in signals if s.name == "data_drift"]) == len(DRIFT_FEATURES)
    assert len([s for s in signals if s.name == "embedding_drift"]) == mcfg.embedding_components
    # the ridge model (~85 %) is below production's min_accuracy, measured or estimated
    breached = [s.key for s in signals if s.breached and s.name not in ("model_performance", "estimated_performance")]
    assert breached == [], summary(signals)
    oob = next(s for s in signals if s.metric == "out_of_bounds_rate")
    assert oob.value < 0.05
    acc = next(s for s in signals if s.metric == "accuracy")
    assert acc.value == pytest.approx(float((window_of(x, embedder).digits == y).mean()))


@pytest.mark.parametrize("shift, expected", [
    ("invert", {"data_drift/mean_intensity", "data_quality/out_of_bounds_rate"}),
    ("noise", {"data_drift/mean_intensity", "data_quality/failed_expectations"}),
    ("blur", {"data_drift/ink_coverage"}),
    ("thick", {"data_drift/stroke_width"}),
    ("rotate", {"embedding_drift"}),
    ("imbalance", {"prediction_drift/js_distance"}),
])
def test_strong_shift_breaches_the_expected_signal(shift, expected, mnist, embedder, reference, suite, mcfg):
    rng = np.random.default_rng(2)
    idx = rng.choice(10000, 500, replace=False)
    x, y = apply_shift(mnist["test_x"][idx], mnist["test_y"][idx], shift, 1.0, rng)
    signals = evaluate_window(window_of(x, embedder), reference, embedder, mcfg, suite)
    hit = {s.key for s in signals if s.breached} | {s.name for s in signals if s.breached}
    assert expected <= hit, summary(signals)


def test_model_performance_from_feedback(mnist, embedder, reference, mcfg):
    x, y = mnist["test_x"][:400], mnist["test_y"][:400]
    good = evaluate_window(window_of(x, embedder, labels=y), reference, None, mcfg)
    bad_labels = (y + 1) % 10  # every label wrong
    bad = evaluate_window(window_of(x, embedder, labels=bad_labels), reference, None, mcfg)
    g = {s.key: s for s in good}
    b = {s.key: s for s in bad}
    assert g["model_performance/accuracy"].value > b["model_performance/accuracy"].value + 0.5
    assert b["model_performance/accuracy"].breached and b["model_performance/recall/3"].breached
    assert b["model_performance/accuracy"].direction == "below"
    assert g["model_performance/recall/1"].value > 0.9 and not g["model_performance/recall/1"].breached
    # feedback on a few requests only: performance is not judged
    few = np.full(400, -1)
    few[:10] = y[:10]
    s = {s.key: s for s in evaluate_window(window_of(x, embedder, labels=few), reference, None, mcfg)}
    acc = s["model_performance/accuracy"]
    assert acc.value is None and not acc.breached and "10 labelled images < monitor.min_feedback=30" in acc.note
    # without an embedder, embedding drift is not computed (and not an alert)
    assert s["embedding_drift/pc1"].value is None and "no model" in s["embedding_drift/pc1"].note


def test_system_signals_per_deployment(mnist, embedder, reference, mcfg):
    n_blue, n_green = 200, 100
    lat_blue = np.tile(np.arange(1, 101, dtype=float), 2)  # 1..100 ms twice
    status_green = np.full(n_green, 200)
    status_green[:3] = [500, 503, 408]
    status_green[3:5] = 422  # malformed: not an error
    req = pd.concat([
        requests_frame(np.linspace(0, 99, n_blue), np.full(n_blue, 200), lat_blue, deployment="blue"),
        requests_frame(np.linspace(0, 99, n_green), status_green, np.full(n_green, 900.0), deployment="green"),
        requests_frame([50.0] * 10, [415] * 10, [1.0] * 10, deployment=""),  # refused before routing
    ], ignore_index=True)
    x = mnist["test_x"][:150]
    w = window_of(x, embedder, requests=req, start=0.0, end=100.0)
    s = {s.key: s for s in evaluate_window(w, reference, None, mcfg)}
    assert s["system/blue/p50_ms"].value == pytest.approx(50.5)
    assert s["system/blue/p99_ms"].value == pytest.approx(np.percentile(lat_blue, 99))
    assert not s["system/blue/p99_ms"].breached and s["system/green/p99_ms"].breached
    assert s["system/blue/error_rate"].value == 0.0
    assert s["system/green/error_rate"].value == pytest.approx(0.03) and s["system/green/error_rate"].breached
    assert s["system/error_rate"].value == pytest.approx(3 / 310)  # the whole endpoint
    assert s["system/blue/throughput_rps"].value == pytest.approx(2.0)
    assert s["data_quality/malformed_rate"].value == pytest.approx(12 / 310) and not s["data_quality/malformed_rate"].breached
    assert "system/p50_ms" in s and np.isnan(s["system/p50_ms"].threshold)
    m = metrics(list(s.values()))
    assert m["monitor/system/green/error_rate"] == pytest.approx(0.03) and "monitor/breached" in m


def test_too_few_images_are_not_computed(mnist, embedder, reference, suite, mcfg):
    x = apply_shift(mnist["test_x"][:40], mnist["test_y"][:40], "invert", 1.0, np.random.default_rng(0))[0]
    signals = evaluate_window(window_of(x, embedder), reference, embedder, mcfg, suite)
    drift = [s for s in signals if s.name in ("data_drift", "embedding_drift", "prediction_drift", "data_quality")]
    assert drift and all(s.value is None and not s.breached for s in drift)
    assert "not computed: 40 images < monitor.min_requests=100" in drift[0].note
    assert "not computed" in summary(signals)


def test_shifts(mnist):
    x, y = mnist["test_x"][:300], mnist["test_y"][:300]
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="rotate, noise, blur"):
        apply_shift(x, y, "zoom", 0.5, rng)
    for shift in SHIFTS:
        x0, y0 = apply_shift(x, y, shift, 0.0, rng)
        assert np.array_equal(x0, x) and np.array_equal(y0, y)
        x1, y1 = apply_shift(x, y, shift, 1.0, rng)
        assert x1.dtype == np.uint8 and x1.shape == x.shape and y1.shape == y.shape
        assert (shift == "none") == np.array_equal(x1, x), shift
    assert np.array_equal(apply_shift(x, y, "invert", 1.0, rng)[0], 255 - x)
    _, yi = apply_shift(x, y, "imbalance", 1.0, rng)
    assert len(np.unique(yi)) == 3


def test_reference_round_trip(reference, tmp_path):
    path = save_reference(reference, tmp_path / "ref" / "reference.npz")
    back = load_reference(path)
    assert back.n_images == reference.n_images == 10000 and back.components == 8
    assert np.allclose(back.projected, reference.projected) and np.allclose(back.class_distribution, reference.class_distribution)
    assert list(back.features.columns) == list(DRIFT_FEATURES) and back.meta["model_version"] == "7"
    assert np.array_equal(back.holdout_labels, reference.holdout_labels)  # the estimator's hold-out travels too
    assert np.allclose(back.holdout_probabilities, reference.holdout_probabilities)
    from mnistops.errors import MnistopsError

    with pytest.raises(MnistopsError, match="does not exist"):
        load_reference(tmp_path / "nope.npz")


def test_report_is_self_contained(mnist, embedder, reference, suite, mcfg, tmp_path):
    from mnistops.monitoring.report import write_report

    rng = np.random.default_rng(3)
    idx = rng.choice(10000, 600, replace=False)
    x, y = apply_shift(mnist["test_x"][idx], mnist["test_y"][idx], "thick", 1.0, rng)
    dep = np.where(np.arange(600) % 4 == 0, "green", "blue")
    w = window_of(x, embedder, labels=np.where(np.arange(600) % 2 == 0, y, -1), deployments=dep,
                  latency_ms=rng.gamma(2, 10, 600), start=1.7e9, end=1.7e9 + 3600)
    signals = evaluate_window(w, reference, embedder, mcfg, suite)
    alerts = [{"signal": "data_drift/stroke_width", "value": 1.2, "threshold": 0.1}]
    path = write_report(tmp_path / "reports" / "r.html", w, reference, signals, alerts,
                        {"env": "dev", "endpoint": "mnist", "window": "1h", "model": "mnist-classifier/7"})
    text = path.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I)
    assert text.count("data:image/png;base64,") == 5  # features, classes, components, confusion, system
    assert "BREACHED" in text and "stroke_width" in text and "mnist-classifier/7" in text and "green" in text
    assert not list(path.parent.glob(".*part"))


def test_bad_monitoring_knobs_fail_with_one_clear_message(tmp_path):
    """A typo in a window, a shift or an action names the key and what it accepts."""
    from mnistops.errors import MnistopsError
    from mnistops.monitoring.request_log_reader import window_bounds
    from mnistops.stages import monitor, traffic

    assert window_bounds("90m", now=10_000.0) == (10_000.0 - 5400, 10_000.0)
    assert window_bounds("all", now=5.0) == (0.0, 5.0)
    for bad in ("1 hour", "-5m", "0h", "h"):
        with pytest.raises(MnistopsError, match="monitor.window"):
            window_bounds(bad)
    with pytest.raises(MnistopsError, match=r"traffic.shift='rotat'.*rotate"):
        traffic.check(compose(["stage=traffic", "traffic.shift=rotat"], tmp_path))
    with pytest.raises(MnistopsError, match=r"traffic.severity=1.5 must be in 0..1"):
        traffic.check(compose(["stage=traffic", "traffic.severity=1.5"], tmp_path))
    with pytest.raises(MnistopsError, match=r"monitor.on_alert='retrian'.*retrain"):
        monitor.run(compose(["stage=monitor", "monitor.on_alert=retrian"], tmp_path))
    with pytest.raises(MnistopsError, match=r"monitor.estimator='atx': expected one of atc, atc_ne, ac, doc"):
        monitor.run(compose(["stage=monitor", "monitor.estimator=atx"], tmp_path))


# ---------------------------------------------------------------------------------------------
# accuracy estimated without labels, the signal table, the reference cache


@pytest.fixture(scope="module")
def softmax_embedder(mnist, tmp_path_factory):
    """A logistic regression fitted by cross-entropy (L-BFGS, 10,000 training images, ~90 % test
    accuracy): unlike the ridge model its probabilities mean something, which the estimator reads."""
    import torch

    from mnistops.models.nets import LogisticRegression
    from mnistops.monitoring.embedding import Embedder

    torch.manual_seed(0)
    net = LogisticRegression()
    x = torch.tensor(mnist["train_x"][:10000], dtype=torch.float32)[:, None] / 255.0
    y = torch.tensor(mnist["train_y"][:10000])
    opt = torch.optim.LBFGS(net.parameters(), max_iter=40, history_size=10)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), y) + 1e-4 * sum((p ** 2).sum() for p in net.parameters())
        loss.backward()
        return loss

    opt.step(closure)
    return Embedder(export_model(net.eval(), tmp_path_factory.mktemp("softmax-model")))


@pytest.fixture(scope="module")
def softmax_reference(mnist, softmax_embedder):
    return build_reference(mnist["train_x"], softmax_embedder, 8, size=2000, seed=0,
                           holdout=(mnist["train_x"][-5000:], mnist["train_y"][-5000:]))


def _estimate_of(signals):
    return {s.key: s for s in signals if s.name == "estimated_performance"}


def test_estimate_follows_a_shifted_windows_true_accuracy(mnist, softmax_embedder, softmax_reference):
    """Clean and strongly noised windows of 1,000 test images, no labels: each estimate is within 5
    points of the accuracy measured on the same window; a noised and a rotated window read lower
    than the clean one."""
    mcfg = compose(["monitor.thresholds.min_accuracy=0.85"]).monitor
    rng = np.random.default_rng(5)
    got = {}
    for shift in ("none", "noise", "rotate"):
        idx = rng.choice(10000, 1000, replace=False)
        x, y = apply_shift(mnist["test_x"][idx], mnist["test_y"][idx], shift, 1.0, rng)
        w = window_of(x, softmax_embedder)
        est = _estimate_of(evaluate_window(w, softmax_reference, None, mcfg))
        truth = float((w.digits == y).mean())
        got[shift] = (est["estimated_performance/accuracy"], truth)
        low, high = est["estimated_performance/accuracy_low"].value, est["estimated_performance/accuracy_high"].value
        assert low <= est["estimated_performance/accuracy"].value <= high
    for shift in ("none", "noise"):
        s, truth = got[shift]
        assert s.value == pytest.approx(truth, abs=0.05), (shift, s.note)
    assert got["noise"][0].value < got["none"][0].value - 0.03 and got["rotate"][0].value < got["none"][0].value - 0.03
    # the clean window's interval holds its truth; no label was read
    clean, truth = got["none"]
    assert "no labels" in clean.note and clean.value > 0.85 and not clean.breached


def test_estimated_accuracy_alerts_before_any_label(mnist, softmax_embedder, softmax_reference):
    from mnistops.monitoring.alerts import alerts_from

    mcfg = compose(["monitor.thresholds.min_accuracy=0.85"]).monitor
    rng = np.random.default_rng(6)
    idx = rng.choice(10000, 600, replace=False)
    x, y = apply_shift(mnist["test_x"][idx], mnist["test_y"][idx], "rotate", 1.0, rng)
    w = window_of(x, softmax_embedder)
    assert w.n_labelled == 0
    signals = evaluate_window(w, softmax_reference, None, mcfg)
    s = {s.key: s for s in signals}
    assert s["model_performance/accuracy"].value is None  # nothing measured: no feedback yet
    est = s["estimated_performance/accuracy"]
    assert est.breached and est.value < 0.85 and est.direction == "below"
    raised = alerts_from(signals, window={"spec": "test"}, env="dev", endpoint="mnist")
    assert any(a.signal == "estimated_performance" and a.metric == "accuracy" for a in raised)
    assert "monitor/estimated_performance/accuracy" in metrics(signals)
    # per predicted class estimates are informational, never alerts
    per_class = [v for k, v in s.items() if k.startswith("estimated_performance/precision/") and v.computed]
    assert per_class and not any(v.breached for v in per_class)


def test_estimate_next_to_actual_where_feedback_exists(mnist, softmax_embedder, softmax_reference, tmp_path):
    from mnistops.monitoring.report import write_report

    mcfg = compose([]).monitor
    x, y = mnist["test_x"][:800], mnist["test_y"][:800]
    labels = np.where(np.arange(800) % 2 == 0, y, -1)  # feedback on half the requests
    w = window_of(x, softmax_embedder, labels=labels)
    signals = evaluate_window(w, softmax_reference, None, mcfg)
    s = {s.key: s for s in signals}
    has = labels >= 0
    actual = float((w.digits[has] == y[has]).mean())
    on_labelled = softmax_reference.estimator("atc").estimate(w.probabilities[has]).accuracy
    assert s["estimated_performance/abs_error"].value == pytest.approx(abs(on_labelled - actual))
    assert s["estimated_performance/abs_error"].value < 0.05
    text = write_report(tmp_path / "r.html", w, softmax_reference, signals, [], {"env": "dev"}).read_text()
    assert "Model performance estimated without labels" in text and "measured on feedback" in text
    assert f"{s['model_performance/accuracy'].value:.4f}" in text and f"{s['estimated_performance/accuracy'].value:.4f}" in text


def test_the_signal_table_drives_evaluation_summary_and_report(mnist, embedder, reference, mcfg, tmp_path):
    """A new signal family is one row (with its compute function): it is evaluated, summarised,
    alerted on and gets its own report section without touching the monitor or the report."""
    from mnistops.monitoring.report import write_report
    from mnistops.monitoring.signals import SIGNALS, SignalKind, signal

    ink = SignalKind("ink", "mean pixel value", "none", ("ink",), "Ink", "here",
                     lambda i: [signal("ink", "mean", float(i.window.images.mean()), 1.0)])
    kinds = (*SIGNALS, ink)
    assert len({k.name for k in SIGNALS}) == len(SIGNALS) and all(k.section and k.azure for k in SIGNALS)
    w = window_of(mnist["test_x"][:200], embedder)
    signals = evaluate_window(w, reference, None, mcfg, kinds=kinds)
    assert signals[-1].key == "ink/mean" and signals[-1].breached  # mean pixel ~33 > 1
    assert "ink: 1/1 breached" in summary(signals, kinds)
    text = write_report(tmp_path / "r.html", w, reference, signals, [], {"env": "dev"}, kinds=kinds).read_text()
    assert "<h2>Ink</h2>" in text and "ink/mean = " in text
    order = [text.index(f"<h2>{k.section}</h2>") for k in kinds if k.section not in ("Ink",)]
    assert order == sorted(order)  # the sections follow the table
    without = write_report(tmp_path / "r2.html", w, reference, signals, [], {"env": "dev"}).read_text()
    assert "<h2>Ink</h2>" not in without


def test_ood_rate_from_the_collected_flags(mnist, embedder, reference, mcfg):
    x = mnist["test_x"][:300]
    flags = np.zeros(300, bool)
    flags[:45] = True  # 15 % answered "not a digit"
    s = {s.key: s for s in evaluate_window(window_of(x, embedder, ood=flags), reference, None, mcfg)}
    assert s["ood/rate"].value == pytest.approx(0.15) and s["ood/rate"].breached
    none = {s.key: s for s in evaluate_window(window_of(x, embedder), reference, None, mcfg)}
    assert none["ood/rate"].value is None and "no `ood` flag" in none["ood/rate"].note


def test_reference_cache_rebuilds_on_a_format_change(home, mnist, embedder):
    """The cache key carries the reference format; a file of another format under the key is
    rebuilt, never an error; an unchanged one is read back, not rebuilt."""
    import json

    from mnistops.monitoring import drift, reference_cache

    cfg = compose(["stage=monitor", "monitor.reference_size=300"], home)
    uri = "models:/mnist-classifier/7"
    assert reference_cache.key(cfg, uri).endswith(f"-f{drift.REFERENCE_FORMAT}")
    ref, built = reference_cache.load_or_build(cfg, embedder, uri)
    path = built[0]
    assert path.is_file() and ref.n_images == 300 and len(ref.holdout_labels) == cfg.data.val_size
    again, built_again = reference_cache.load_or_build(cfg, embedder, uri)
    assert built_again is None and np.allclose(again.projected, ref.projected)
    with np.load(path) as z:  # the same file as an older release wrote it
        old = {k: z[k] for k in z.files if not k.startswith("holdout")}
    meta = json.loads(str(old["meta"]))
    old["meta"] = np.array(json.dumps({**meta, "format": 1}))
    np.savez(path, **old)
    with pytest.raises(drift.ReferenceFormatError):
        load_reference(path)
    rebuilt, built = reference_cache.load_or_build(cfg, embedder, uri)
    assert built is not None and rebuilt.holdout_labels is not None and load_reference(path).n_images == 300
