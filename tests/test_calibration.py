"""Calibrated probabilities and "not a digit" (issue #18 parts 1 and 4), unit tier: the temperature
fit, ECE, the OOD threshold and AUROC against known answers; the protocol's one rule from graph
outputs to answers; the exported graph carrying temperature, Mahalanobis head and metadata."""

from __future__ import annotations

import numpy as np
import pytest

from mnistops.models.calibration import (auroc, calibrate, ece, fit_mahalanobis, fit_temperature, mahalanobis, nll,
                                         ood_threshold)
from mnistops.serving import protocol
from mnistops.serving.protocol import Calibration, Scored, read_outputs


def overconfident(n=6000, true_t=2.5, seed=0):
    """Logits whose labels are drawn from softmax(z), shown as z * true_t (too sharp for true_t > 1,
    too flat below): the fitted temperature must come back near true_t."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.5, (n, 10))
    p = protocol.softmax(z)
    labels = (p.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return z * true_t, labels


def test_fit_temperature_recovers_the_temperature_that_made_the_logits():
    logits, labels = overconfident(true_t=2.5)
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(2.5, rel=0.05)
    assert nll(logits, labels, t) < nll(logits, labels) - 0.1
    under, labels2 = overconfident(true_t=0.4, seed=1)
    assert fit_temperature(under, labels2) == pytest.approx(0.4, rel=0.05)


def test_calibration_lowers_ece_on_held_back_data():
    logits, labels = overconfident(n=12000, true_t=2.5, seed=2)
    cal, report, head = calibrate(logits[:6000], labels[:6000], "energy", 0.01)
    assert head is None and cal.ood_method == "energy"
    held_back, y = logits[6000:], labels[6000:]
    before = ece(protocol.softmax(held_back), y)
    after = ece(protocol.softmax(held_back / cal.temperature), y)
    assert after < 0.03 < before
    assert report["calibration/val_ece_after"] < report["calibration/val_ece_before"]


def test_ece_is_zero_for_perfect_confidence_and_the_gap_otherwise():
    probs = np.tile(np.eye(10)[[3]], (100, 1)) * 0.9 + 0.01
    labels = np.full(100, 3)
    assert ece(probs, labels) == pytest.approx(0.09, abs=1e-9)  # confident 0.91, always right
    labels[:9] = 0  # 91 % right at 0.91 confidence
    assert ece(probs, labels) == pytest.approx(0.0, abs=1e-9)


def test_threshold_flags_at_most_the_rate_and_auroc_matches_the_definition():
    rng = np.random.default_rng(3)
    scores = rng.normal(size=5000)
    thr = ood_threshold(scores, 0.01)
    assert (scores > thr).mean() <= 0.01 and (scores >= thr).mean() >= 0.01
    with pytest.raises(ValueError, match="rate"):
        ood_threshold(scores, 1.5)
    a, b = np.array([0.0, 1.0, 2.0]), np.array([1.5, 3.0, 4.0])
    pairs = [(x < y) + 0.5 * (x == y) for x in a for y in b]
    assert auroc(a, b) == pytest.approx(np.mean(pairs))
    assert auroc(b, a) == pytest.approx(1 - np.mean(pairs))
    assert auroc(np.ones(4), np.ones(3)) == pytest.approx(0.5)  # ties count half


def test_mahalanobis_scores_far_points_higher_and_is_scaled_per_dimension():
    rng = np.random.default_rng(4)
    means = rng.normal(0, 5, (10, 16))
    labels = rng.integers(0, 10, 4000)
    emb = means[labels] + rng.normal(0, 1, (4000, 16))
    m, w = fit_mahalanobis(emb, labels, shrinkage=0.0)
    inside = mahalanobis(emb[:500], m, w)
    assert inside.mean() == pytest.approx(1.0, rel=0.1)  # chi^2_16 / 16
    outside = mahalanobis(rng.normal(0, 1, (500, 16)) * 3 + 40, m, w)
    assert auroc(inside, outside) > 0.99


def test_metadata_round_trip_and_defaults_for_models_registered_before_calibration():
    cal = Calibration(1.7, "mahalanobis", 2.5)
    assert Calibration.from_metadata(cal.metadata()).metadata() == cal.metadata()
    old = Calibration.from_metadata({})
    assert (old.temperature, old.ood_method, old.ood_threshold) == (1.0, "energy", None)
    with pytest.raises(ValueError, match="ood_method"):
        Calibration.from_metadata({"ood_method": "vibes"})


def test_read_outputs_is_the_one_rule_from_graph_outputs_to_answers():
    logits = np.array([[8.0, 0, 0, 0, 0, 0, 0, 0, 0, 0], [0.1] * 10], np.float32)
    energy = read_outputs(logits, Calibration(1.0, "energy", -5.0))
    assert energy.digits.tolist() == [0, 0]
    assert np.allclose(energy.probabilities.sum(axis=1), 1.0)
    assert energy.ood.tolist() == [False, True]  # the flat answer: -logsumexp = -2.4 > -5
    assert np.all(read_outputs(logits, Calibration()).ood == False)  # noqa: E712 (no threshold: never)
    graph = read_outputs([logits, np.array([0.5, 9.0], np.float32)], Calibration(1.0, "mahalanobis", 3.0))
    assert graph.ood_score.tolist() == [0.5, 9.0] and graph.ood.tolist() == [False, True]
    with pytest.raises(ValueError, match="second output"):
        read_outputs(logits, Calibration(1.0, "mahalanobis", 3.0))


def test_answers_carry_digit_calibrated_probabilities_ood_score_and_ood():
    scored = read_outputs([np.eye(10, dtype=np.float32)[[7, 1]] * 5, np.array([0.2, 7.0], np.float32)],
                          Calibration(1.0, "mahalanobis", 1.0))
    answer = protocol.to_jsonable(protocol.score_answer(scored, "m", "3", "blue", "rid"))
    first, second = answer["predictions"]
    assert set(first) == {"digit", "probabilities", "ood_score", "ood"}
    assert (first["digit"], first["ood"], second["digit"], second["ood"]) == (7, False, 1, True)
    assert second["ood_score"] == pytest.approx(7.0)
    v2 = protocol.to_jsonable(protocol.v2_answer(scored, "m", "3", "rid"))
    outputs = {o["name"]: o for o in v2["outputs"]}
    assert outputs["ood"] == {"name": "ood", "shape": [2], "datatype": "BOOL", "data": [False, True]}
    assert outputs["ood_score"]["datatype"] == "FP32" and len(outputs["probabilities"]["data"]) == 20
    with pytest.raises(TypeError, match="read_outputs"):
        protocol.score_answer(scored.probabilities, "m", "3", "blue", "rid")


def test_scored_slices_and_concatenates_by_rows():
    scored = Scored(np.eye(10, dtype=np.float32)[:4], np.arange(4, dtype=np.float32), np.array([0, 1, 0, 1], bool))
    part = scored[1:3]
    assert len(part) == 2 and part.ood_score.tolist() == [1.0, 2.0] and part.digits.tolist() == [1, 2]
    again = Scored.concat([scored[:1], scored[1:]])
    assert again.ood.tolist() == scored.ood.tolist() and np.array_equal(again.probabilities, scored.probabilities)


def test_the_exported_graph_carries_temperature_head_and_metadata(tmp_path):
    import torch
    import onnxruntime as ort

    from mnistops.models.export import export_onnx, last_linear
    from mnistops.models.nets import ConvNet
    from mnistops.monitoring.embedding import Embedder
    from mnistops.serving.deployments import OnnxModel

    torch.manual_seed(0)
    net = ConvNet(stages=((4,), (8,)), hidden=16).eval()
    x = torch.rand(40, 1, 28, 28)
    seen = {}
    hook = last_linear(net).register_forward_pre_hook(lambda _, inputs: seen.update(e=inputs[0].detach().numpy()))
    with torch.no_grad():
        logits = net(x).numpy()
    hook.remove()
    means, transform = fit_mahalanobis(seen["e"], np.arange(40) % 10, shrinkage=0.1)
    cal = Calibration(1.9, "mahalanobis", 1.25)
    model_dir = tmp_path / "model"
    (model_dir / "artifacts").mkdir(parents=True)
    export_onnx(net, model_dir / "artifacts" / "model.onnx", cal.metadata(), {"means": means, "transform": transform})

    session = ort.InferenceSession(str(model_dir / "artifacts" / "model.onnx"))
    assert [o.name for o in session.get_outputs()] == ["logits", "ood_score"]
    assert Calibration.from_metadata(session.get_modelmeta().custom_metadata_map).metadata() == cal.metadata()
    graph_logits, graph_score = session.run(None, {"images": x.numpy()})
    assert np.allclose(graph_logits, logits / 1.9, atol=1e-5)
    assert np.allclose(graph_score, mahalanobis(seen["e"], means, transform), rtol=1e-3, atol=1e-4)

    served = OnnxModel(model_dir).score(x.numpy())
    assert np.allclose(served.probabilities, protocol.softmax(logits / 1.9), atol=1e-5)
    assert served.ood.tolist() == (graph_score > 1.25).tolist()
    images = (x.numpy()[:, 0] * 255).astype(np.uint8)
    probs, emb = Embedder(model_dir)(images)  # the monitor still finds the classifier's input
    assert emb.shape == (40, 16) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_a_model_registered_before_calibration_still_answers_every_field(tmp_path):
    """No metadata, one output: temperature 1, an energy ood_score, ood false; never an error."""
    import torch

    from mnistops.models.export import export_onnx
    from mnistops.models.nets import LogisticRegression
    from mnistops.serving.deployments import OnnxModel

    torch.manual_seed(1)
    net = LogisticRegression().eval()
    (tmp_path / "artifacts").mkdir()
    export_onnx(net, tmp_path / "artifacts" / "model.onnx")  # as register did before calibration existed
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        logits = net(x).numpy()
    model = OnnxModel(tmp_path)
    assert model.calibration.metadata() == {"temperature": "1.0", "ood_method": "energy"}
    scored = model.score(x.numpy())
    assert np.allclose(scored.probabilities, protocol.softmax(logits), atol=1e-5)
    assert np.allclose(scored.ood_score, protocol.ood_score(logits, "energy"), atol=1e-4)
    assert scored.ood.tolist() == [False] * 5
