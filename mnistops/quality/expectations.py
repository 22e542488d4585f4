"""The Great Expectations (1.x) suite built from reference statistics (GX 1.x has no profiler):
structure, labels, per-image statistics, batch means and label-image consistency; each
expectation's `meta` says which check it is and why its bounds are what they are."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Dict, List, Tuple

import great_expectations as gx

from mnistops.errors import MnistopsError
from mnistops.quality.reference import reference_statistics

SUITE_FORMAT = 1
BOUNDED_FEATURES = ("mean_intensity", "ink_coverage", "bbox_top", "bbox_left", "bbox_height",
                    "bbox_width", "centroid_row", "centroid_col", "stroke_width", "max_intensity")
MEAN_FEATURES = tuple(f for f in BOUNDED_FEATURES if f != "max_intensity")
OUTLIER_SLACK = 1.5
"""Per-image checks allow this many times the worst outside-share of a contiguous reference batch."""


def _f(x) -> float:
    return float(round(float(x), 6))


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
