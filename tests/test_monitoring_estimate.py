"""The accuracy estimators of the estimated_performance signal on probabilities whose truth is known
by construction (labels drawn from the probabilities: a calibrated model), fast: nothing trains."""

from __future__ import annotations

import numpy as np
import pytest

from mnistops.monitoring.estimate import METHODS, AccuracyEstimator, per_class


def calibrated(n: int, margin: float, rng) -> tuple:
    """(probabilities, labels drawn from them): a model whose confidence is its chance of being right."""
    logits = rng.normal(0.0, 1.0, (n, 10))
    logits[np.arange(n), rng.integers(0, 10, n)] += margin
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    labels = (p.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return p, labels


def test_atc_threshold_reproduces_the_holdout_accuracy():
    rng = np.random.default_rng(0)
    p, y = calibrated(5000, 5.0, rng)
    est = AccuracyEstimator.fit(p, y, "atc")
    acc = float((p.argmax(1) == y).mean())
    assert est.holdout_accuracy == pytest.approx(acc)
    assert est.estimate(p).accuracy == pytest.approx(acc, abs=1.0 / 5000)  # share above t == accuracy
    assert "ATC" in est.describe() and "5000 held-out images" in est.describe()


@pytest.mark.parametrize("method", METHODS)
def test_every_estimator_reads_a_clean_window_and_its_interval_covers_it(method):
    """20 clean windows of 500 answers: mean error under 2 points, the 95 % interval covers the
    truth in at least 17 of them."""
    rng = np.random.default_rng(1)
    p, y = calibrated(5000, 5.0, rng)
    est = AccuracyEstimator.fit(p, y, method)
    errors, covered = [], 0
    for _ in range(20):
        q, z = calibrated(500, 5.0, rng)
        e, truth = est.estimate(q), float((q.argmax(1) == z).mean())
        errors.append(abs(e.accuracy - truth))
        covered += e.low <= truth <= e.high
    assert np.mean(errors) < 0.02 and covered >= 17, (method, np.mean(errors), covered)


def test_a_less_confident_window_reads_lower():
    rng = np.random.default_rng(2)
    p, y = calibrated(5000, 5.0, rng)
    q, z = calibrated(1000, 2.0, rng)  # harder inputs: the model is less sure and less often right
    for method in METHODS:
        est = AccuracyEstimator.fit(p, y, method)
        assert est.estimate(q).accuracy < est.estimate(p).accuracy - 0.1, method
    truth = float((q.argmax(1) == z).mean())
    assert AccuracyEstimator.fit(p, y, "ac").estimate(q).accuracy == pytest.approx(truth, abs=0.04)


def test_per_predicted_class_and_empty_windows():
    rng = np.random.default_rng(3)
    p, y = calibrated(3000, 5.0, rng)
    est = AccuracyEstimator.fit(p, y, "atc")
    classes = per_class(est, p)
    pred = p.argmax(1)
    assert len(classes) == 10 and sum(c.n for c in classes) == 3000
    assert classes[4].accuracy == pytest.approx(est.per_image(p)[pred == 4].mean())
    empty = est.estimate(np.zeros((0, 10)))
    assert empty.n == 0 and np.isnan(empty.accuracy)


def test_bad_inputs_name_what_is_wrong():
    p = np.full((4, 10), 0.1)
    with pytest.raises(ValueError, match="unknown accuracy estimator 'atx'.*atc, atc_ne, ac, doc"):
        AccuracyEstimator.fit(p, np.zeros(4), "atx")
    with pytest.raises(ValueError, match="N labels"):
        AccuracyEstimator.fit(p, np.zeros(3), "atc")


def test_ood_flags_count_as_wrong_when_fitted_with_them():
    rng = np.random.default_rng(4)
    p, y = calibrated(4000, 5.0, rng)
    flags = np.zeros(4000, bool)
    flags[:40] = True  # 1 % of the hold-out flagged "not a digit"
    est = AccuracyEstimator.fit(p, y, "atc", ood=flags)
    assert est.uses_ood and "not-a-digit" in est.describe()
    q, _ = calibrated(1000, 5.0, rng)
    none = np.zeros(1000, bool)
    half = np.arange(1000) < 500
    assert est.estimate(q, ood=half).accuracy <= 0.5 < est.estimate(q, ood=none).accuracy
    with pytest.raises(ValueError, match="fitted with ood flags"):
        est.estimate(q)
