"""The monitoring signals of one window, as Azure ML model monitoring defines them, each a
:class:`Signal` with its value, threshold and verdict:

=====================  ==========================================================================
``data_drift``         one per image feature (:data:`~mnistops.monitoring.drift.DRIFT_FEATURES`):
                       normalised Wasserstein distance to the reference, as a 95 % lower
                       confidence bound (see :mod:`mnistops.monitoring.drift`); above threshold
``embedding_drift``    the same, per principal component ``pc1..pck`` of the model's embedding
``prediction_drift``   ``js_distance``: Jensen-Shannon distance (base 2) of the predicted-class
                       shares to the model's on the reference, as a lower bound likewise
``data_quality``       ``out_of_bounds_rate``: share of images failing a per-image check of the
                       baseline suite (shape, dtype, NaN, pixel range, feature range);
                       ``failed_expectations``: expectations of the suite the window fails, as
                       Great Expectations validates it (batch means included);
                       ``malformed_rate``: share of scoring requests refused 400/415/422
``model_performance``  on images with feedback: ``accuracy``, ``recall/<k>``, ``precision/<k>``
                       (and ``accuracy`` per deployment when several answered); below threshold
``estimated_performance``  ``accuracy`` estimated from the answered probabilities with no labels
                       (:mod:`mnistops.monitoring.estimate`), below ``min_accuracy``; its interval
                       ``accuracy_low``/``accuracy_high``, ``precision/<k>`` per predicted class,
                       and where feedback exists ``abs_error`` against the measured accuracy
``ood``                ``rate``: share of answers flagged "not a digit"; above ``max_ood_rate``
``system``             per deployment and for the whole endpoint (deployment None):
                       ``p50_ms``/``p95_ms`` (informational), ``p99_ms``, ``error_rate`` (5xx,
                       408), ``throughput_rps`` (informational)
=====================  ==========================================================================

:data:`SIGNALS` is the one table of these families (statistic, noise floor, threshold keys, report
section, Azure counterpart, compute function): the monitor, the report and the summary iterate it.

A signal that cannot be judged (too few images or labels, no suite, no model; the request outcomes
where the window's collector does not see them, ``window.OUTCOMES_UNSEEN``: system and malformed
rate on Azure) has value None, is never breached, and says why in its note. Informational signals
have a NaN threshold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from mnistops.monitoring.drift import DRIFT_FEATURES, Reference, class_distribution, column_drift, js_distance
from mnistops.monitoring.window import OUTCOMES_UNSEEN, Window

MALFORMED_STATUS = (400, 415, 422)
ERROR_STATUS = (408,)  # and every 5xx
MIN_CLASS_SUPPORT = 10
"""Per-class precision / recall need this many labelled images of (predicted as) the class."""
NOISE_QUANTILE = 0.95
MAX_OOD_RATE = 0.05
INFO = float("nan")


@dataclass
class Signal:
    """One monitored quantity and its verdict (see the module docstring)."""

    name: str
    metric: str
    deployment: Optional[str]
    value: Optional[float]
    threshold: float
    direction: str  # "above" | "below": breached when value > threshold | value < threshold
    breached: bool
    note: str = ""

    @property
    def key(self) -> str:
        """``data_drift/stroke_width``, ``system/blue/p99_ms``: the signal's name in metrics and alerts."""
        return "/".join(p for p in (self.name, self.deployment, self.metric) if p)

    @property
    def computed(self) -> bool:
        return self.value is not None


def signal(name: str, metric: str, value: Optional[float], threshold: float, direction: str = "above",
           deployment: Optional[str] = None, note: str = "") -> Signal:
    """A Signal whose verdict follows from its value (None / NaN value: not computed, not breached)."""
    if value is not None and not math.isfinite(float(value)):
        value, note = None, "not computed: no finite value" + (f" ({note})" if note else "")
    value = None if value is None else float(value)
    breached = value is not None and not math.isnan(threshold) and (
        value > threshold if direction == "above" else value < threshold)
    return Signal(name, metric, deployment, value, float(threshold), direction, bool(breached), note)


def not_computed(name: str, metric: str, threshold: float, why: str, direction: str = "above",
                 deployment: Optional[str] = None) -> Signal:
    return signal(name, metric, None, threshold, direction, deployment, f"not computed: {why}")


def _cfg(cfg, key: str, default):
    return getattr(cfg, key, default) if cfg is not None else default


# ---------------------------------------------------------------------------------------------
# drift


def _bounded(name: str, metrics, raw: np.ndarray, floor: np.ndarray, threshold: float, n: int) -> List[Signal]:
    return [signal(name, m, max(0.0, r - f), threshold,
                   note=f"raw {r:.3f} - noise floor {f:.3f} at {n} images")
            for m, r, f in zip(metrics, raw, floor)]


def _drift_inputs(window: Window, reference: Reference, monitor_cfg):
    """(n, min_n, floors or None, why-not-computed or None) shared by the three drift families."""
    n, min_n = window.n_images, int(monitor_cfg.min_requests)
    if n < min_n:
        return n, None, f"{n} images < monitor.min_requests={min_n}"
    q = _cfg(monitor_cfg, "drift_noise_quantile", NOISE_QUANTILE)  # None: raw distances (Evidently's)
    if q is None:
        return n, (np.zeros(len(DRIFT_FEATURES)), np.zeros(reference.components), 0.0), None
    return n, reference.floors(n, float(q)), None


def data_drift_signals(window: Window, reference: Reference, embedder, monitor_cfg) -> List[Signal]:
    t = monitor_cfg.thresholds
    n, floors, why = _drift_inputs(window, reference, monitor_cfg)
    if why:
        return [not_computed("data_drift", f, t.data_drift, why) for f in DRIFT_FEATURES]
    from mnistops.quality.features import image_features

    current = image_features(window.images)[list(DRIFT_FEATURES)].to_numpy(np.float64)
    return _bounded("data_drift", DRIFT_FEATURES, column_drift(reference.features.to_numpy(np.float64), current),
                    floors[0], t.data_drift, n)


def embedding_drift_signals(window: Window, reference: Reference, embedder, monitor_cfg) -> List[Signal]:
    t = monitor_cfg.thresholds
    pcs = [f"pc{i + 1}" for i in range(reference.components)]
    n, floors, why = _drift_inputs(window, reference, monitor_cfg)
    if why or embedder is None:
        why = why or "no model to embed the images with"
        return [not_computed("embedding_drift", p, t.embedding_drift, why) for p in pcs]
    if window.embedding is None or len(window.embedding) != n:
        window.embedding = embedder(window.images)[1]
    return _bounded("embedding_drift", pcs, column_drift(reference.projected, reference.project(window.embedding)),
                    floors[1], t.embedding_drift, n)


def prediction_drift_signals(window: Window, reference: Reference, embedder, monitor_cfg) -> List[Signal]:
    t = monitor_cfg.thresholds
    n, floors, why = _drift_inputs(window, reference, monitor_cfg)
    if why:
        return [not_computed("prediction_drift", "js_distance", t.prediction_drift, why)]
    js = js_distance(reference.class_distribution, class_distribution(window.digits))
    return _bounded("prediction_drift", ["js_distance"], np.array([js]), np.array([floors[2]]),
                    t.prediction_drift, n)


def drift_signals(window: Window, reference: Reference, embedder, monitor_cfg) -> List[Signal]:
    """data_drift per feature, embedding_drift per component, prediction_drift (see module doc)."""
    return (data_drift_signals(window, reference, embedder, monitor_cfg)
            + embedding_drift_signals(window, reference, embedder, monitor_cfg)
            + prediction_drift_signals(window, reference, embedder, monitor_cfg))


# ---------------------------------------------------------------------------------------------
# data quality


def out_of_bounds(suite, images) -> tuple:
    """(share of images failing any per-image check of ``suite``, {check: share failing it}).

    The per-image checks are the suite's row-level expectations that need no labels (values in a
    set, values between bounds), applied row by row to the same table Great Expectations validates,
    so an image counts once however many checks it fails (GX itself only counts per expectation).
    """
    from mnistops.quality import batch_table

    table = batch_table(images)
    bad = np.zeros(len(table), dtype=bool)
    per_check: Dict[str, float] = {}
    for e in suite.expectations:
        kw = e.configuration.kwargs
        col = kw.get("column")
        if (e.meta or {}).get("requires_labels") or col not in table.columns:
            continue
        v = table[col]
        if e.expectation_type == "expect_column_values_to_be_in_set":
            fail = ~v.isin(list(kw["value_set"])).to_numpy()
        elif e.expectation_type == "expect_column_values_to_be_between":
            x = v.to_numpy(np.float64)
            lo = -np.inf if kw.get("min_value") is None else float(kw["min_value"])
            hi = np.inf if kw.get("max_value") is None else float(kw["max_value"])
            with np.errstate(invalid="ignore"):
                fail = ~((x >= lo) & (x <= hi))
        else:
            continue
        bad |= fail
        per_check[col] = max(per_check.get(col, 0.0), float(fail.mean()) if len(fail) else 0.0)
    return (float(bad.mean()) if len(bad) else float("nan")), per_check


def quality_signals(window: Window, monitor_cfg, suite=None) -> List[Signal]:
    t = monitor_cfg.thresholds
    n, min_n = window.n_images, int(monitor_cfg.min_requests)
    out: List[Signal] = []
    if suite is None:
        why = "no baseline suite (run stage=baseline)"
        out += [not_computed("data_quality", "out_of_bounds_rate", t.out_of_bounds_rate, why),
                not_computed("data_quality", "failed_expectations", 0.0, why)]
    elif n < min_n:
        why = f"{n} images < monitor.min_requests={min_n}"
        out += [not_computed("data_quality", "out_of_bounds_rate", t.out_of_bounds_rate, why),
                not_computed("data_quality", "failed_expectations", 0.0, why)]
    else:
        from mnistops.quality import validate_batch

        rate, per_check = out_of_bounds(suite, window.images)
        worst = sorted(((v, k) for k, v in per_check.items() if v > 0), reverse=True)[:3]
        out.append(signal("data_quality", "out_of_bounds_rate", rate, t.out_of_bounds_rate,
                          note="most often out: " + ", ".join(f"{k} {v:.1%}" for v, k in worst) if worst else ""))
        report = validate_batch(suite, window.images)
        checks = [f["check"] for f in report.failures]
        note = "; ".join(checks[:4]) + (f"; +{len(checks) - 4} more" if len(checks) > 4 else "")
        out.append(signal("data_quality", "failed_expectations", len(checks), 0.0,
                          note=note or f"suite {report.suite_name} passed"))
    req = window.requests
    if window.meta.get(OUTCOMES_UNSEEN):
        out.append(not_computed("data_quality", "malformed_rate", t.malformed_rate, window.meta[OUTCOMES_UNSEEN]))
    elif len(req) < min_n:
        out.append(not_computed("data_quality", "malformed_rate", t.malformed_rate,
                                f"{len(req)} requests < monitor.min_requests={min_n}"))
    else:
        bad = req["status"].isin(MALFORMED_STATUS)
        out.append(signal("data_quality", "malformed_rate", float(bad.mean()), t.malformed_rate,
                          note=f"{int(bad.sum())} of {len(req)} requests refused 400/415/422"))
    return out


# ---------------------------------------------------------------------------------------------
# model performance


def performance_signals(window: Window, monitor_cfg) -> List[Signal]:
    """Accuracy and per-class recall / precision on the images with ground truth."""
    from mnistops.classification_report import classification_report

    t = monitor_cfg.thresholds
    min_fb = int(monitor_cfg.min_feedback)
    p_threshold = float(t.min_class_precision)
    min_support = int(_cfg(monitor_cfg, "min_class_support", MIN_CLASS_SUPPORT))
    labelled = np.asarray(window.labels) >= 0
    n = int(labelled.sum())
    classes = [str(k) for k in range(10)]
    if n < min_fb:
        why = f"{n} labelled images < monitor.min_feedback={min_fb}"
        return ([not_computed("model_performance", "accuracy", t.min_accuracy, why, "below")]
                + [not_computed("model_performance", f"recall/{c}", t.min_class_recall, why, "below") for c in classes]
                + [not_computed("model_performance", f"precision/{c}", p_threshold, why, "below") for c in classes])
    y, pred = np.asarray(window.labels)[labelled], np.asarray(window.digits)[labelled]
    pm = classification_report(y, pred, classes)
    out = [signal("model_performance", "accuracy", pm["accuracy"], t.min_accuracy, "below",
                  note=f"{int(round(pm['accuracy'] * n))} of {n} labelled images right")]
    predicted = np.bincount(pred, minlength=10)
    for row in pm["per_class"]:
        c, support = row["class"], row["support"]
        for metric, count, thr, what in (("recall", support, t.min_class_recall, "labelled"),
                                         ("precision", int(predicted[int(c)]), p_threshold, "predicted")):
            if count < min_support:
                out.append(not_computed("model_performance", f"{metric}/{c}", thr,
                                        f"{count} images {what} {c} < monitor.min_class_support={min_support}",
                                        "below"))
            else:
                out.append(signal("model_performance", f"{metric}/{c}", row[metric], thr, "below",
                                  note=f"{count} images {what} {c}"))
    deps = np.asarray(window.deployments)[labelled]
    names = sorted(set(deps.tolist()) - {""})
    if len(names) > 1:
        for d in names:
            k = deps == d
            if k.sum() < min_fb:
                out.append(not_computed("model_performance", "accuracy", t.min_accuracy,
                                        f"{int(k.sum())} labelled images < monitor.min_feedback={min_fb}",
                                        "below", d))
            else:
                out.append(signal("model_performance", "accuracy", float((y[k] == pred[k]).mean()),
                                  t.min_accuracy, "below", d, note=f"{int(k.sum())} labelled images"))
    return out


# ---------------------------------------------------------------------------------------------
# model performance estimated without labels


def estimated_performance_signals(window: Window, reference: Reference, monitor_cfg) -> List[Signal]:
    """The window's accuracy estimated from the answered probabilities alone (see
    :mod:`mnistops.monitoring.estimate`): ``accuracy`` (judged against ``min_accuracy`` before any
    label arrives), its interval ``accuracy_low``/``accuracy_high`` and, per predicted class,
    ``precision/<k>`` (informational); where feedback labelled enough of the same images, the
    estimate on exactly those images and its ``abs_error`` against their measured accuracy."""
    from mnistops.monitoring.estimate import DEFAULT_METHOD

    t = monitor_cfg.thresholds
    method = str(_cfg(monitor_cfg, "estimator", DEFAULT_METHOD))
    n, min_n = window.n_images, int(monitor_cfg.min_requests)
    min_support = int(_cfg(monitor_cfg, "min_class_support", MIN_CLASS_SUPPORT))
    est = reference.estimator(method) if reference is not None else None
    heads = (("accuracy", t.min_accuracy, "below"), ("accuracy_low", INFO, "below"), ("accuracy_high", INFO, "below"))
    why = ("the drift reference has no labelled hold-out to fit the estimator on" if est is None
           else f"{n} images < monitor.min_requests={min_n}" if n < min_n else None)
    if why:
        return [not_computed("estimated_performance", m, thr, why, d) for m, thr, d in heads]
    e = est.per_image(window.probabilities)
    whole = est.from_per_image(e)
    interval = f"95 % interval [{whole.low:.4f}, {whole.high:.4f}]"
    out = [signal("estimated_performance", "accuracy", whole.accuracy, t.min_accuracy, "below",
                  note=f"{interval} from {n} answers, no labels; {est.describe()}"),
           signal("estimated_performance", "accuracy_low", whole.low, INFO, "below", note=interval),
           signal("estimated_performance", "accuracy_high", whole.high, INFO, "below", note=interval)]
    digits = np.asarray(window.digits)
    for k in range(10):
        mine = digits == k
        if int(mine.sum()) < min_support:
            out.append(not_computed("estimated_performance", f"precision/{k}", INFO,
                                    f"{int(mine.sum())} images predicted {k} < monitor.min_class_support={min_support}",
                                    "below"))
            continue
        c = est.from_per_image(e[mine])
        out.append(signal("estimated_performance", f"precision/{k}", c.accuracy, INFO, "below",
                          note=f"[{c.low:.3f}, {c.high:.3f}] on {c.n} images predicted {k}"))
    labelled = np.asarray(window.labels) >= 0
    m, min_fb = int(labelled.sum()), int(monitor_cfg.min_feedback)
    if m < min_fb:
        why = f"{m} labelled images < monitor.min_feedback={min_fb}"
        out += [not_computed("estimated_performance", "labelled_estimate", INFO, why),
                not_computed("estimated_performance", "abs_error", INFO, why)]
    else:
        on = est.from_per_image(e[labelled])
        actual = float((digits[labelled] == np.asarray(window.labels)[labelled]).mean())
        note = f"estimate {on.accuracy:.4f} [{on.low:.4f}, {on.high:.4f}] vs measured {actual:.4f} on {m} labelled images"
        out += [signal("estimated_performance", "labelled_estimate", on.accuracy, INFO, note=note),
                signal("estimated_performance", "abs_error", abs(on.accuracy - actual), INFO, note=note)]
    return out


# ---------------------------------------------------------------------------------------------
# "not a digit"


def ood_signals(window: Window, monitor_cfg) -> List[Signal]:
    """``rate``: the share of collected images the endpoint answered ``ood: true`` (its model's
    threshold flags about 1 % of clean MNIST)."""
    thr = float(_cfg(monitor_cfg.thresholds, "max_ood_rate", MAX_OOD_RATE))
    n, min_n = window.n_images, int(monitor_cfg.min_requests)
    ood = window.ood
    if ood is None or len(ood) != n:
        return [not_computed("ood", "rate", thr, "the collected answers carry no `ood` flag")]
    if n < min_n:
        return [not_computed("ood", "rate", thr, f"{n} images < monitor.min_requests={min_n}")]
    flagged = np.asarray(ood, dtype=bool)
    return [signal("ood", "rate", float(flagged.mean()), thr,
                   note=f"{int(flagged.sum())} of {n} images answered as not a digit")]


# ---------------------------------------------------------------------------------------------
# system


def system_signals(window: Window, monitor_cfg) -> List[Signal]:
    """Latency percentiles, error rate and throughput for the endpoint and per deployment."""
    t = monitor_cfg.thresholds
    req = window.requests
    groups = [(None, req)]
    if len(req):
        names = sorted(set(req["deployment"].astype(str)) - {""})
        groups += [(d, req[req["deployment"].astype(str) == d]) for d in names]
    out: List[Signal] = []
    unseen = window.meta.get(OUTCOMES_UNSEEN)
    for dep, g in groups:
        n = len(g)
        if n == 0 or unseen:
            why = unseen or "no requests in the window"
            out += [not_computed("system", m, thr, why, deployment=dep) for m, thr in
                    (("p50_ms", INFO), ("p95_ms", INFO), ("p99_ms", t.max_p99_ms),
                     ("error_rate", t.max_error_rate), ("throughput_rps", INFO))]
            continue
        lat = g["latency_ms"].to_numpy(np.float64)
        lat = lat[np.isfinite(lat)]
        p50, p95, p99 = np.percentile(lat, [50, 95, 99]) if len(lat) else (np.nan,) * 3
        status = g["status"].to_numpy(np.int64)
        errors = (status >= 500) | np.isin(status, ERROR_STATUS)
        note = f"{n} requests"
        out += [signal("system", "p50_ms", p50, INFO, deployment=dep, note=note),
                signal("system", "p95_ms", p95, INFO, deployment=dep, note=note),
                signal("system", "p99_ms", p99, t.max_p99_ms, deployment=dep, note=note),
                signal("system", "error_rate", float(errors.mean()), t.max_error_rate, deployment=dep,
                       note=f"{int(errors.sum())} of {n} requests answered 5xx/408"),
                signal("system", "throughput_rps", n / window.seconds, INFO, deployment=dep,
                       note=f"{n} requests in {window.seconds:.0f} s")]
    return out


# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Inputs:
    """What a signal family is computed from (see :func:`evaluate_window`)."""

    window: Window
    reference: Reference
    embedder: Any
    monitor_cfg: Any
    suite: Any = None


@dataclass(frozen=True)
class SignalKind:
    """One row of :data:`SIGNALS`: a signal family and everything the monitor needs to know about it."""

    name: str  # the family: the first part of every metric key and alert
    statistic: str  # what its value is
    noise_floor: str  # how sampling noise is kept from alerting
    thresholds: Tuple[str, ...]  # its keys under monitor.thresholds
    section: str  # the report section its plot and rows go under
    azure: str  # Azure ML model monitoring's counterpart; "here": only stage=monitor computes it
    compute: Callable[[Inputs], List[Signal]]


SIGNALS: Tuple[SignalKind, ...] = (
    SignalKind("data_drift", "normalised Wasserstein distance per image feature",
               "lower bound: minus the 95th percentile of same-size clean windows", ("data_drift",),
               "Image features: reference vs current", "DataDriftSignal (normalized_wasserstein_distance)",
               lambda i: data_drift_signals(i.window, i.reference, i.embedder, i.monitor_cfg)),
    SignalKind("embedding_drift", "normalised Wasserstein distance per embedding principal component",
               "lower bound, as data_drift", ("embedding_drift",), "Embedding principal components", "here",
               lambda i: embedding_drift_signals(i.window, i.reference, i.embedder, i.monitor_cfg)),
    SignalKind("prediction_drift", "Jensen-Shannon distance of the predicted-class shares",
               "lower bound, as data_drift", ("prediction_drift",), "Predicted classes",
               "PredictionDriftSignal (jensen_shannon_distance)",
               lambda i: prediction_drift_signals(i.window, i.reference, i.embedder, i.monitor_cfg)),
    SignalKind("data_quality", "out-of-bounds rate, failed suite expectations, malformed-request rate",
               "not computed under monitor.min_requests", ("out_of_bounds_rate", "malformed_rate"), "Data quality",
               "DataQualitySignal (out_of_bounds_rate, data_type_error_rate, null_value_rate)",
               lambda i: quality_signals(i.window, i.monitor_cfg, i.suite)),
    SignalKind("model_performance", "accuracy, per-class recall and precision on feedback",
               "not computed under monitor.min_feedback / min_class_support",
               ("min_accuracy", "min_class_recall", "min_class_precision"), "Model performance on feedback",
               "ModelPerformanceSignal (accuracy, recall)",
               lambda i: performance_signals(i.window, i.monitor_cfg)),
    SignalKind("estimated_performance", "accuracy estimated from the answered probabilities (no labels), "
               "its 95 % interval, per predicted class; its error where feedback exists",
               "interval from the hold-out residuals; not computed under monitor.min_requests", ("min_accuracy",),
               "Model performance estimated without labels", "here",
               lambda i: estimated_performance_signals(i.window, i.reference, i.monitor_cfg)),
    SignalKind("ood", "share of answers flagged not a digit", "not computed under monitor.min_requests",
               ("max_ood_rate",), "Not a digit", "here", lambda i: ood_signals(i.window, i.monitor_cfg)),
    SignalKind("system", "p50/p95/p99 latency, error rate, throughput, per deployment",
               "none (exact counts)", ("max_p99_ms", "max_error_rate"), "Latency and throughput",
               "here (Azure Monitor charts the endpoint's latency and errors; no monitor signal)",
               lambda i: system_signals(i.window, i.monitor_cfg)),
)
"""Every signal family, in report order. A new signal is a row here and its compute function."""

NAMES = tuple(k.name for k in SIGNALS)


def evaluate_window(window: Window, reference: Reference, embedder, monitor_cfg, suite=None,
                    kinds: Sequence[SignalKind] = SIGNALS) -> List[Signal]:
    """Every signal of ``window``, family by family in the order of ``kinds`` (:data:`SIGNALS`).

    ``embedder`` (an Embedder of the monitored model, or None: no embedding drift) must be the
    model the ``reference`` was built with; ``suite`` is the env's baseline suite (or None: no
    suite checks); ``monitor_cfg`` is ``cfg.monitor``.
    """
    inputs = Inputs(window, reference, embedder, monitor_cfg, suite)
    return [s for kind in kinds for s in kind.compute(inputs)]


def _fmt(x: Optional[float]) -> str:
    if x is None:
        return "n/a"
    if math.isnan(x):
        return "-"
    return f"{x:.4g}"


def describe(s: Signal) -> str:
    """One line: ``data_drift/stroke_width = 0.23 > 0.1 (note)``."""
    if not s.computed:
        return f"{s.key}: {s.note}"
    if math.isnan(s.threshold):
        return f"{s.key} = {_fmt(s.value)}"
    op = (">" if s.direction == "above" else "<") if s.breached else ("<=" if s.direction == "above" else ">=")
    return f"{s.key} = {_fmt(s.value)} {op} {_fmt(s.threshold)}" + (f" ({s.note})" if s.note else "")


def summary(signals: List[Signal], kinds: Sequence[SignalKind] = SIGNALS) -> str:
    """A few lines for a terminal: the counts, every breach, and the worst value of each signal."""
    breached = [s for s in signals if s.breached]
    computed = [s for s in signals if s.computed]
    lines = [f"{len(signals)} signals: {len(computed)} computed, {len(breached)} breached"]
    lines += [f"  BREACHED {describe(s)}" for s in breached]
    for name in [k.name for k in kinds]:
        mine = [s for s in signals if s.name == name]
        if not mine:
            continue
        judged = [s for s in mine if s.computed and not math.isnan(s.threshold)]
        if not judged:
            skipped = next((s.note for s in mine if not s.computed), "informational only")
            lines.append(f"  {name}: {skipped}")
            continue
        worst = max(judged, key=lambda s: (s.value - s.threshold) * (1 if s.direction == "above" else -1))
        lines.append(f"  {name}: {sum(s.breached for s in mine)}/{len(judged)} breached; "
                     f"worst {describe(worst)}")
    return "\n".join(lines)


def metrics(signals: List[Signal], prefix: str = "monitor") -> Dict[str, float]:
    """``{"monitor/data_drift/stroke_width": 0.02, ...}`` for MLflow: computed signals only, plus
    ``monitor/breached`` (how many signals breached)."""
    out = {f"{prefix}/{s.key}": float(s.value) for s in signals if s.computed}
    out[f"{prefix}/breached"] = float(sum(s.breached for s in signals))
    return out
