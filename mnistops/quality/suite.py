"""The data-quality baseline: a Great Expectations (1.x) suite derived from reference data, and the
validation of a batch of images (and, when known, labels) against it.

GX 1.x has no profiler, so :func:`build_suite` derives every expectation from statistics of the
reference (training) set. A batch is validated as one pandas table with one row per image: the
features of :mod:`mnistops.quality.features`, plus, when labels are given, ``label``, one 0/1
``label_is_<k>`` column per class and ``label_matches_template``. The expectations, in the order
they are reported:

Structure (hard limits, every row must pass)
    ``expect_table_row_count_to_be_between(min 1)``; ``height`` and ``width`` in {28}
    (the reference shape), ``image_ndim`` in {2}, ``dtype`` in {"uint8"}, ``has_nan`` in {False},
    ``min_intensity`` and ``max_intensity`` between 0 and 255 (no negative or >255 pixel).
Labels (only when labels are given)
    ``label`` not null and in {0..9}; the distinct labels equal {0..9} (every class present);
    the mean of ``label_is_<k>`` (= the share of class k) within ``class_tolerance`` (relative) of
    the reference share, or within ``batch_z`` batch spreads (see batch means) where that is wider:
    at 500 images a 10 % class has a binomial error of 13 % relative, so ±50 % alone would raise a
    false alarm on ~1 in 500 clean random batches; the band is ±75-85 % relative there, ±50 % from
    ~1,500 images on (with ``min_batch_size=1500``). The mean of ``label_matches_template`` at
    least the reference agreement minus ``batch_z`` batch spreads (label-image consistency, below).
Per-image statistics (``mostly``: a small share of rows may be outside)
    ``mean_intensity``, ``ink_coverage``, ``bbox_*``, ``centroid_*``, ``stroke_width`` and
    ``max_intensity`` between the reference ``quantiles`` (0.1 % and 99.9 % by default, taken as
    observed values). A clean batch has ~0.2 % of its rows outside on average, but outliers come in
    clusters (one writer's thick pen): a contiguous 500-image block of the training set has up to
    2.6 % of its stroke widths outside. The check fails when more than ``1 - mostly`` (2 %) or 1.5x
    the worst contiguous reference block's share, whichever is larger, are outside (~4 % for
    intensity, ink coverage and stroke width on MNIST, 2 % for the rest).
Batch means
    the mean of each of those statistics (but ``max_intensity``) within
    ``reference mean ± batch_z · u``, where ``u`` is the spread of the reference's own batch means:
    the larger of the iid standard error ``std / sqrt(min_batch_size)`` and the standard deviation
    of the means of *contiguous* blocks of ``min_batch_size`` reference images. Real batches come
    from few writers and sessions, so on MNIST the block spread is 1-4.6x the iid error (the
    first 1,000 test images already sit 5-7 iid errors off the training mean in stroke width); with
    the iid error alone, clean contiguous batches fail. With ``batch_z = 6`` every contiguous
    500-image block of the test set passes (the worst is at 5.0 u) while corrupted batches miss by
    far more. Pass the reference in its natural (collection) order, not shuffled, or ``u`` shrinks
    to the iid error. Larger batches are checked as loosely as ``min_batch_size`` ones.

Label-image consistency. Shuffled labels keep the class shares, so no label-only check sees them.
The reference stores the ten class-mean images (pixels / 255); each image's nearest class mean
(euclidean) is a model-free guess of its digit that agrees with the true label on ~81 % of MNIST
(82 % on the test set) and with random labels on ~10 %. ``label_matches_template`` is 1 when the
guess equals the given label, and its batch mean must stay above the reference agreement minus
``batch_z`` block spreads (see batch means; ~0.61 for MNIST): fully shuffled labels score ~0.10;
partial corruption is caught on large batches once roughly 30 % of the labels are shuffled.

Batch size. Batch-level checks (class shares, every class present, means, template agreement) are
sized for batches of at least ``min_batch_size`` images (stored in the suite's meta); below that
:func:`validate_batch` skips them and says so in the report, rather than raise false alarms.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pandas as pd

import great_expectations as gx
from great_expectations.data_context.types.base import ProgressBarsConfig

from mnistops.atomic import write_atomic
from mnistops.errors import MnistopsError
from mnistops.quality.features import FEATURE_COLUMNS, INK_THRESHOLD, as_image_grid, image_features

log = logging.getLogger(__name__)

SUITE_FORMAT = 1
CLASSES = tuple(range(10))
IMAGE_SHAPE = (28, 28)
DTYPE = "uint8"
BOUNDED_FEATURES = ("mean_intensity", "ink_coverage", "bbox_top", "bbox_left", "bbox_height",
                    "bbox_width", "centroid_row", "centroid_col", "stroke_width", "max_intensity")
MEAN_FEATURES = tuple(f for f in BOUNDED_FEATURES if f != "max_intensity")
DOCS_SITE = "mnistops_site"
OUTLIER_SLACK = 1.5
"""Per-image checks allow this many times the worst outside-share of a contiguous reference batch."""
_SUMMARY_QUANTILES = (0.001, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 0.999)


# ---------------------------------------------------------------------------------------------
# the validation table


def _label_array(labels, n: int) -> np.ndarray:
    lab = np.asarray(labels).reshape(-1)
    if lab.shape[0] != n:
        raise MnistopsError(f"labels: {lab.shape[0]} labels for {n} images; give one label per image")
    if lab.dtype.kind not in "biuf":
        lab = pd.to_numeric(pd.Series(lab), errors="coerce").to_numpy(dtype=np.float64)
    return lab


def templates_apply(images, templates: np.ndarray) -> bool:
    """Whether ``images`` are numeric 2-D images of the templates' shape (so they can be compared)."""
    try:
        grid, ndim = as_image_grid(images)
    except ValueError:  # a ragged sequence of images
        return False
    return ndim == 2 and grid.shape[1:] == tuple(templates.shape[1:]) and grid.dtype.kind in "biuf"


def template_matches(images, labels: np.ndarray, templates: np.ndarray) -> np.ndarray:
    """1.0 where the nearest class-mean template (euclidean, pixels / 255) is the given label,
    0.0 where it is another class, NaN for every row when the images are not template-shaped."""
    if not templates_apply(images, templates):
        return np.full(len(labels), np.nan)
    grid, _ = as_image_grid(images)
    n = grid.shape[0]
    flat_t = templates.reshape(len(templates), -1).astype(np.float32)
    bias = 0.5 * (flat_t * flat_t).sum(axis=1)
    out = np.empty(n, dtype=np.float64)
    step = 8192
    for start in range(0, n, step):
        x = grid[start:start + step].reshape(-1, flat_t.shape[1]).astype(np.float32)
        if grid.dtype.kind == "f":
            x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
        guess = np.argmax(x @ (flat_t.T / 255.0) - bias, axis=1)
        out[start:start + step] = guess == labels[start:start + step]
    return out


def batch_table(images, labels=None, templates: Optional[np.ndarray] = None) -> pd.DataFrame:
    """The table a suite validates: image features, plus the label columns when labels are given."""
    table = image_features(images)
    if labels is not None:
        lab = _label_array(labels, len(table))
        table["label"] = lab
        for k in CLASSES:
            table[f"label_is_{k}"] = (lab == k).astype(np.int8)
        if templates is not None:
            table["label_matches_template"] = template_matches(images, lab, templates)
    return table


# ---------------------------------------------------------------------------------------------
# building the suite


def _f(x) -> float:
    return float(round(float(x), 6))


def _block_spread(v: np.ndarray, block: int) -> float:
    """The spread to expect of a batch mean: max(iid standard error, std of contiguous-block means)."""
    se = float(v.std(ddof=1) / np.sqrt(block)) if len(v) > 1 else 0.0
    nblocks = len(v) // block
    if nblocks < 2:
        return se
    means = v[: nblocks * block].reshape(nblocks, block).mean(axis=1)
    return max(se, float(means.std(ddof=1)))


def _feature_stats(col: pd.Series, q: Tuple[float, float], block: int) -> Dict[str, Any]:
    v = col.to_numpy(dtype=np.float64)
    qs = np.quantile(v, _SUMMARY_QUANTILES)
    q_low, q_high = np.quantile(v, q[0], method="lower"), np.quantile(v, q[1], method="higher")
    outside = ((v < q_low) | (v > q_high)).astype(np.float64)
    nblocks = len(v) // block
    worst = float(outside[: nblocks * block].reshape(nblocks, block).mean(axis=1).max()) if nblocks else 0.0
    counts, edges = np.histogram(v, bins=20)
    return {
        "mean": _f(v.mean()), "std": _f(v.std(ddof=1)) if len(v) > 1 else 0.0,
        "min": _f(v.min()), "max": _f(v.max()),
        "q_low": _f(q_low), "q_high": _f(q_high), "batch_spread": _f(_block_spread(v, block)),
        "outside_rate": _f(outside.mean()), "worst_block_outside_rate": _f(worst),
        "quantiles": {str(p): _f(x) for p, x in zip(_SUMMARY_QUANTILES, qs)},
        "histogram": {"edges": [_f(e) for e in edges], "counts": [int(c) for c in counts]},
    }


def reference_statistics(images, labels, *, quantiles=(0.001, 0.999), class_tolerance=0.5,
                         mostly=0.98, batch_z=6.0, min_batch_size=500) -> Dict[str, Any]:
    """JSON-serialisable statistics of a clean reference set (the numbers the suite is built from)."""
    arr = np.asarray(images)
    if arr.ndim != 3 or arr.shape[1:] != IMAGE_SHAPE or arr.dtype != np.uint8 or len(arr) == 0:
        raise MnistopsError(f"reference images must be a non-empty uint8 array of shape (N, 28, 28), "
                            f"got {arr.dtype} {arr.shape}")
    lab = _label_array(labels, len(arr))
    present = sorted(int(c) for c in np.unique(lab))
    if present != list(CLASSES):
        raise MnistopsError(f"reference labels must cover exactly the classes 0..9, got {present}")
    lab = lab.astype(np.int64)
    lo, hi = float(quantiles[0]), float(quantiles[1])
    if not 0.0 <= lo < hi <= 1.0:
        raise MnistopsError(f"quantiles must be 0 <= low < high <= 1, got {quantiles}")
    feats = image_features(arr)
    counts = np.bincount(lab, minlength=10)
    templates = np.stack([arr[lab == k].reshape(-1, 784).mean(axis=0, dtype=np.float64) / 255.0
                          for k in CLASSES]).reshape(10, 28, 28)
    templates = np.round(templates, 4)
    matches = template_matches(arr, lab, templates)
    agreement = float(np.mean(matches))
    class_means = {str(k): {c: _f(feats[c].to_numpy()[lab == k].mean()) for c in FEATURE_COLUMNS}
                   for k in CLASSES}
    return {
        "n_images": int(len(arr)),
        "image_shape": list(IMAGE_SHAPE),
        "dtype": DTYPE,
        "ink_threshold": INK_THRESHOLD,
        "settings": {"quantiles": [lo, hi], "class_tolerance": float(class_tolerance),
                     "mostly": float(mostly), "batch_z": float(batch_z),
                     "min_batch_size": int(min_batch_size)},
        "features": {c: _feature_stats(feats[c], (lo, hi), int(min_batch_size)) for c in FEATURE_COLUMNS},
        "classes": {"labels": list(CLASSES), "counts": [int(c) for c in counts],
                    "proportions": [_f(c / counts.sum()) for c in counts],
                    "batch_spread": [_f(_block_spread((lab == k).astype(np.float64), int(min_batch_size)))
                                     for k in CLASSES]},
        "class_feature_means": class_means,
        "templates": {"method": "nearest class-mean image, euclidean on pixels/255",
                      "agreement": _f(agreement),
                      "batch_spread": _f(_block_spread(matches, int(min_batch_size))),
                      "means": templates.reshape(10, -1).tolist()},
    }


def _meta(check: str, why: str, **extra) -> Dict[str, Any]:
    return {"check": check, "why": why, **extra}


def expectations_from(stats: Dict[str, Any]) -> List[Any]:
    """The expectations (GX 1.x objects) derived from :func:`reference_statistics`."""
    E = gx.expectations
    s = stats["settings"]
    h, w = stats["image_shape"]
    out: List[Any] = [
        E.ExpectTableRowCountToBeBetween(min_value=1, meta=_meta("batch not empty", "a batch needs images")),
        E.ExpectColumnValuesToBeInSet(column="height", value_set=[h],
                                      meta=_meta("image height", f"images are {h}x{w}")),
        E.ExpectColumnValuesToBeInSet(column="width", value_set=[w],
                                      meta=_meta("image width", f"images are {h}x{w}")),
        E.ExpectColumnValuesToBeInSet(column="image_ndim", value_set=[2],
                                      meta=_meta("image dimensions", "each image is a 2-D array (no channel axis)")),
        E.ExpectColumnValuesToBeInSet(column="dtype", value_set=[stats["dtype"]],
                                      meta=_meta("pixel dtype", "pixels are unsigned bytes")),
        E.ExpectColumnValuesToBeInSet(column="has_nan", value_set=[False],
                                      meta=_meta("no NaN pixels", "a NaN pixel is a broken image")),
        E.ExpectColumnValuesToBeBetween(column="min_intensity", min_value=0, max_value=255,
                                        meta=_meta("pixel range", "pixel values lie in 0..255")),
        E.ExpectColumnValuesToBeBetween(column="max_intensity", min_value=0, max_value=255,
                                        meta=_meta("pixel range", "pixel values lie in 0..255")),
    ]
    labels = stats["classes"]["labels"]
    props = stats["classes"]["proportions"]
    tol = s["class_tolerance"]
    out += [
        E.ExpectColumnValuesToNotBeNull(column="label", meta=_meta("labels present", "every image has a label",
                                                                    requires_labels=True)),
        E.ExpectColumnValuesToBeInSet(column="label", value_set=labels,
                                      meta=_meta("label set", "labels are the digits 0..9", requires_labels=True)),
        E.ExpectColumnDistinctValuesToEqualSet(column="label", value_set=labels,
                                               meta=_meta("every class present", "all ten digits occur",
                                                          requires_labels=True, batch_level=True)),
    ]
    spreads = stats["classes"]["batch_spread"]
    for k, p, u in zip(labels, props, spreads):
        half = max(tol * p, s["batch_z"] * u)
        out.append(E.ExpectColumnMeanToBeBetween(
            column=f"label_is_{k}", min_value=_f(max(0.0, p - half)), max_value=_f(min(1.0, p + half)),
            meta=_meta(f"share of class {k}", f"reference share {p:.4f} ± max({tol:.0%} relative, "
                                              f"{s['batch_z']:g} x batch spread {u:.4f})",
                       requires_labels=True, batch_level=True)))
    a = stats["templates"]["agreement"]
    out.append(E.ExpectColumnMeanToBeBetween(
        column="label_matches_template", max_value=1.0,
        min_value=_f(max(0.0, a - s["batch_z"] * stats["templates"]["batch_spread"])),
        meta=_meta("label-image consistency",
                   f"labels agree with the nearest reference class-mean image as often as on the "
                   f"reference ({a:.3f}); shuffled labels agree ~10% of the time",
                   requires_labels=True, batch_level=True, requires_shape=[h, w])))
    feats = stats["features"]
    for c in BOUNDED_FEATURES:
        fs = feats[c]
        allowed = max(1.0 - s["mostly"], OUTLIER_SLACK * fs["worst_block_outside_rate"])
        out.append(E.ExpectColumnValuesToBeBetween(
            column=c, min_value=fs["q_low"], max_value=fs["q_high"], mostly=_f(1.0 - allowed),
            meta=_meta(f"per-image {c}", f"reference {s['quantiles'][0]:.1%}..{s['quantiles'][1]:.1%} "
                                         f"quantiles; at most {allowed:.1%} of images outside")))
    for c in MEAN_FEATURES:
        fs = feats[c]
        half = s["batch_z"] * fs["batch_spread"]
        out.append(E.ExpectColumnMeanToBeBetween(
            column=c, min_value=_f(fs["mean"] - half), max_value=_f(fs["mean"] + half),
            meta=_meta(f"batch mean {c}", f"reference mean {fs['mean']:.4g} ± {s['batch_z']:g} x the spread "
                                          f"of {s['min_batch_size']}-image reference batch means",
                       batch_level=True)))
    return out


def build_suite(images, labels, *, name: str, dataset_digest: str, quantiles=(0.001, 0.999),
                class_tolerance: float = 0.5, mostly: float = 0.98, batch_z: float = 6.0,
                min_batch_size: int = 500) -> Tuple[gx.ExpectationSuite, Dict[str, Any]]:
    """A GX expectation suite derived from reference (training) images and labels, and the
    reference statistics it was derived from (also stored in ``suite.meta``)."""
    stats = reference_statistics(images, labels, quantiles=quantiles, class_tolerance=class_tolerance,
                                 mostly=mostly, batch_z=batch_z, min_batch_size=min_batch_size)
    meta = {
        "mnistops": {
            "suite_format": SUITE_FORMAT,
            "suite_version": f"{dataset_digest}-v{SUITE_FORMAT}",
            "dataset_digest": dataset_digest,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "reference_stats": stats,
        }
    }
    suite = gx.ExpectationSuite(name=name, expectations=expectations_from(stats), meta=meta)
    return suite, stats


def suite_info(suite: gx.ExpectationSuite) -> Dict[str, Any]:
    """The mnistops part of a suite's meta (version, digest, created, reference_stats)."""
    info = (suite.meta or {}).get("mnistops")
    if not info or "reference_stats" not in info:
        raise MnistopsError(f"expectation suite {suite.name!r} was not built by mnistops (no meta.mnistops)")
    return info


# ---------------------------------------------------------------------------------------------
# save / load


def save_suite(suite: gx.ExpectationSuite, path) -> Path:
    """Write the suite as JSON, atomically."""
    return write_atomic(path, json.dumps(suite.to_json_dict(), indent=1, sort_keys=False))


def load_suite(path) -> gx.ExpectationSuite:
    """Read a suite written by :func:`save_suite`; a missing, corrupt or foreign file is a
    :class:`MnistopsError` naming the file."""
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MnistopsError(f"expectation suite file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MnistopsError(f"expectation suite file {path} is not valid JSON: {e}") from None
    if not isinstance(d, dict) or not isinstance(d.get("expectations"), list) or not d.get("name"):
        raise MnistopsError(f"expectation suite file {path} has no name or no expectations list")
    suite = gx.ExpectationSuite(name=d["name"], expectations=d["expectations"], meta=d.get("meta"),
                                notes=d.get("notes"), suite_parameters=d.get("suite_parameters"),
                                id=d.get("id"))
    if len(suite.expectations) != len(d["expectations"]):  # GX drops invalid ones with a log line
        raise MnistopsError(f"expectation suite file {path}: {len(d['expectations']) - len(suite.expectations)} "
                            f"invalid expectation(s)")
    suite_info(suite)
    return suite


# ---------------------------------------------------------------------------------------------
# validation


@dataclass
class ValidationReport:
    """The outcome of validating one batch, in words and as GX's own result."""

    success: bool
    statistics: Dict[str, Any]
    failures: List[Dict[str, Any]] = field(default_factory=list)
    raw: Dict[str, Any] = field(default_factory=dict)
    data_docs_index: Optional[Path] = None
    suite_name: str = ""
    suite_version: str = ""
    n_images: int = 0
    skipped: List[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        st = self.statistics
        head = (f"{'PASSED' if self.success else 'FAILED'}: {self.n_images} images against suite "
                f"{self.suite_name!r} ({self.suite_version}): {st.get('successful_expectations', 0)} of "
                f"{st.get('evaluated_expectations', 0)} expectations met")
        lines = [head]
        for f in self.failures:
            lines.append(f"FAILED {f['expectation']}({f['column'] or 'table'}) [{f['check']}]: {f['message']}")
        for s in self.skipped:
            lines.append(f"skipped: {s}")
        if self.data_docs_index:
            lines.append(f"data docs: {self.data_docs_index}")
        return "\n".join(lines)

    def failed_checks(self) -> List[str]:
        return [f"{f['expectation']}({f['column'] or 'table'})" for f in self.failures]


def _num(x) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        return "NaN" if np.isnan(x) else f"{float(x):.4g}"
    return str(x)


def _describe(r: Dict[str, Any], n_rows: int) -> Dict[str, Any]:
    """A failed expectation result as {expectation, column, observed, expected, check, message}."""
    cfg = r.get("expectation_config", {})
    typ = cfg.get("type", "?")
    kw = cfg.get("kwargs", {})
    meta = cfg.get("meta") or {}
    res = r.get("result") or {}
    col = kw.get("column")
    check = meta.get("check", typ)
    exc = (r.get("exception_info") or {})
    if exc.get("raised_exception"):
        msg = f"{check}: could not be evaluated: {exc.get('exception_message')}"
        return {"expectation": typ, "column": col, "observed": None, "expected": kw, "check": check, "message": msg}
    obs: Any = res.get("observed_value")
    if typ == "expect_table_row_count_to_be_between":
        expected = f">= {kw.get('min_value')} rows"
        msg = f"batch has {_num(obs)} rows, expected {expected}"
    elif typ == "expect_column_distinct_values_to_equal_set":
        want = set(kw.get("value_set") or [])
        if isinstance(obs, list):
            seen = set(obs)
        else:
            seen = set(want) - set(res.get("partial_missing_list") or []) | set(res.get("partial_unexpected_list") or [])
        missing = sorted(_clean(v) for v in want - seen)
        extra = sorted((_clean(v) for v in seen - want), key=str)
        parts = []
        if missing:
            parts.append(f"{len(missing)} of {len(want)} classes missing: {missing}")
        if extra:
            parts.append(f"unexpected values {extra[:10]}")
        msg = "; ".join(parts) or "distinct values differ from the expected set"
        obs, expected = sorted((_clean(v) for v in seen), key=str), sorted(want)
    elif typ in ("expect_column_values_to_be_in_set", "expect_column_values_to_be_between",
                 "expect_column_values_to_not_be_null"):
        bad = res.get("unexpected_count")
        total = res.get("element_count", n_rows)
        mostly = kw.get("mostly")
        if typ == "expect_column_values_to_be_in_set":
            expected = f"in {kw.get('value_set')}"
        elif typ == "expect_column_values_to_be_between":
            expected = f"between {_num(kw.get('min_value'))} and {_num(kw.get('max_value'))}"
        else:
            expected = "not null"
        examples = [_clean(v) for v in (res.get("partial_unexpected_list") or [])][:5]
        allowed = f" (at most {1 - float(mostly):.1%} allowed)" if mostly not in (None, 1, 1.0) else ""
        msg = (f"{_num(bad)} of {_num(total)} images have {col} not {expected}{allowed}"
               + (f"; e.g. {', '.join(_num(v) for v in examples)}" if examples else ""))
        if typ == "expect_column_values_to_not_be_null":
            msg = f"{_num(bad)} of {_num(total)} images have no {col} (null or NaN)"
        if col == "label" and typ == "expect_column_values_to_be_in_set":
            msg = f"{_num(bad)} of {_num(total)} labels are not digits 0..9" + (
                f"; e.g. {', '.join(_num(v) for v in examples)}" if examples else "")
        obs = {"unexpected_count": bad, "element_count": total, "examples": examples}
    elif typ == "expect_column_mean_to_be_between":
        expected = f"between {_num(kw.get('min_value'))} and {_num(kw.get('max_value'))}"
        if obs is None:
            req = meta.get("requires_shape")
            why = f" (needs {req[0]}x{req[1]} numeric images)" if req else ""
            msg = f"{check}: mean of {col} could not be computed{why}"
        elif col and col.startswith("label_is_"):
            msg = f"share of class {col[len('label_is_'):]} is {_num(obs)}, expected {expected}"
        elif col == "label_matches_template":
            msg = (f"only {float(obs):.1%} of labels agree with the nearest reference class-mean image, "
                   f"expected at least {float(kw.get('min_value')):.1%}: labels look shuffled or wrong")
        else:
            msg = f"batch mean of {col} is {_num(obs)}, expected {expected}"
    else:
        expected = {k: v for k, v in kw.items() if k not in ("batch_id", "column")}
        msg = f"{check}: observed {_num(obs)}, expected {expected}"
    return {"expectation": typ, "column": col, "observed": _jsonable(obs), "expected": expected,
            "check": check, "message": msg}


def _clean(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return int(f) if f.is_integer() else f
    if isinstance(v, np.bool_):
        return bool(v)
    return v


def _jsonable(x):
    return json.loads(json.dumps(x, default=lambda o: _clean(o) if isinstance(o, (np.generic,)) else str(o)))


def _select(suite: gx.ExpectationSuite, labels_given: bool, batch_checks: bool,
            shape_ok: bool) -> gx.ExpectationSuite:
    keep = []
    for e in suite.expectations:
        meta = e.meta or {}
        if meta.get("requires_labels") and not labels_given:
            continue
        if meta.get("batch_level") and not batch_checks:
            continue
        if meta.get("requires_shape") and not shape_ok:
            continue
        keep.append(e.configuration.to_json_dict())
    return gx.ExpectationSuite(name=suite.name, expectations=keep, meta=suite.meta)


def _quiet(context) -> None:
    # GX sets this logger to INFO itself, so the CLI's quieting of "great_expectations" misses it
    logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)
    try:
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
    except Exception:  # pragma: no cover - cosmetic only
        pass


def _validate_in_memory(suite: gx.ExpectationSuite, table: pd.DataFrame) -> Dict[str, Any]:
    context = gx.get_context(mode="ephemeral")
    _quiet(context)
    asset = context.data_sources.add_pandas("mnistops").add_dataframe_asset("batch")
    batch = asset.add_batch_definition_whole_dataframe("whole").get_batch(batch_parameters={"dataframe": table})
    return batch.validate(suite, result_format="SUMMARY").to_json_dict()


def _validate_with_docs(suite: gx.ExpectationSuite, table: pd.DataFrame, docs_dir: Path) -> Tuple[Dict[str, Any], Path]:
    """Validate through a file context kept in ``docs_dir/.gx`` (so repeated validations into the
    same folder accumulate in one Data Docs index) whose Data Docs site is ``docs_dir`` itself."""
    from great_expectations.checkpoint import UpdateDataDocsAction

    docs_dir = Path(docs_dir).resolve()
    docs_dir.mkdir(parents=True, exist_ok=True)
    context = gx.get_context(mode="file", project_root_dir=str(docs_dir / ".gx"))
    _quiet(context)
    sites = context.get_config().data_docs_sites or {}
    if DOCS_SITE not in sites:
        context.add_data_docs_site(site_name=DOCS_SITE, site_config={
            "class_name": "SiteBuilder",
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
        })
    for other in [s for s in sites if s != DOCS_SITE]:  # only our site: the default one is not wanted
        context.delete_data_docs_site(other)
    try:
        source = context.data_sources.get("mnistops")
    except Exception:
        source = context.data_sources.add_pandas("mnistops")
    try:
        asset = source.get_asset("batch")
    except Exception:
        asset = source.add_dataframe_asset("batch")
    try:
        batch_def = asset.get_batch_definition("whole")
    except Exception:
        batch_def = asset.add_batch_definition_whole_dataframe("whole")
    # replace last run's objects (delete + add: the factories' add_or_update is newer than GX 1.3)
    vd_name, cp_name = f"{suite.name}-batch", f"{suite.name}-checkpoint"
    for factory, name in ((context.checkpoints, cp_name), (context.validation_definitions, vd_name),
                          (context.suites, suite.name)):
        try:
            factory.delete(name)
        except Exception:  # not there yet
            pass
    stored = context.suites.add(gx.ExpectationSuite(
        name=suite.name, expectations=[e.configuration.to_json_dict() for e in suite.expectations],
        meta=suite.meta))
    vd = context.validation_definitions.add(gx.ValidationDefinition(name=vd_name, data=batch_def, suite=stored))
    checkpoint = context.checkpoints.add(gx.Checkpoint(
        name=cp_name, validation_definitions=[vd],
        actions=[UpdateDataDocsAction(name="update_data_docs", site_names=[DOCS_SITE])],
        result_format="SUMMARY"))
    result = checkpoint.run(batch_parameters={"dataframe": table})
    (vr,) = list(result.run_results.values())
    index = docs_dir / "index.html"
    if not index.is_file():  # the action builds it; make sure
        context.build_data_docs(site_names=[DOCS_SITE])
    return vr.to_json_dict(), index


def validate_batch(suite: gx.ExpectationSuite, images, labels=None, *,
                   data_docs_dir: Optional[Path] = None) -> ValidationReport:
    """Validate a batch of images (and labels, when known) against a suite from :func:`build_suite`.

    Label expectations are skipped without labels, batch-level ones below the suite's
    ``min_batch_size``; the report lists what was skipped. With ``data_docs_dir``, GX Data Docs for
    this validation are built there too (``report.data_docs_index`` is its index.html).
    """
    t0 = time.perf_counter()
    info = suite_info(suite)
    stats = info["reference_stats"]
    templates = np.asarray(stats["templates"]["means"], dtype=np.float32).reshape(10, *stats["image_shape"])
    table = batch_table(images, labels, templates)
    n = len(table)
    min_n = int(stats["settings"]["min_batch_size"])
    batch_checks = n >= min_n
    skipped = []
    if labels is None:
        skipped.append("label expectations (no labels given)")
    if not batch_checks:
        skipped.append(f"batch-level expectations (class shares, means, label consistency): "
                       f"{n} images < min_batch_size {min_n}")
    shape_ok = templates_apply(images, templates)
    if labels is not None and batch_checks and not shape_ok:
        h, w = stats["image_shape"]
        skipped.append(f"label-image consistency: needs numeric {h}x{w} images (see the shape checks)")
    selected = _select(suite, labels is not None, batch_checks, shape_ok)
    if data_docs_dir is not None:
        raw, index = _validate_with_docs(selected, table, Path(data_docs_dir))
    else:
        raw, index = _validate_in_memory(selected, table), None
    raw = _jsonable(raw)
    order = {(e.expectation_type, getattr(e, "column", None), (e.meta or {}).get("check")): i
             for i, e in enumerate(selected.expectations)}
    failures = [_describe(r, n) for r in raw.get("results", []) if not r.get("success")]
    failures.sort(key=lambda f: order.get((f["expectation"], f["column"], f["check"]), len(order)))
    st = raw.get("statistics", {})
    report = ValidationReport(
        success=bool(raw.get("success")),
        statistics={k: st.get(k) for k in ("evaluated_expectations", "successful_expectations",
                                           "unsuccessful_expectations", "success_percent")},
        failures=failures, raw=raw, data_docs_index=index, suite_name=suite.name,
        suite_version=info.get("suite_version", ""), n_images=n, skipped=skipped,
        seconds=time.perf_counter() - t0)
    log.info("validated %d images against %s in %.2fs: %s", n, suite.name, report.seconds,
             "passed" if report.success else f"{len(failures)} failed")
    return report
