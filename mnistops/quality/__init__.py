"""Data quality: per-image features (:mod:`.features`, numpy/pandas only) and the Great Expectations
baseline suite (:mod:`.suite`, imports great_expectations, so it is loaded only when used)."""

from __future__ import annotations

from mnistops.quality.features import FEATURE_COLUMNS, INK_THRESHOLD, image_features

_SUITE_NAMES = ("build_suite", "validate_batch", "save_suite", "load_suite", "ValidationReport",
                "reference_statistics", "suite_info", "batch_table")

__all__ = ["FEATURE_COLUMNS", "INK_THRESHOLD", "image_features", *_SUITE_NAMES]


def __getattr__(name: str):
    if name in _SUITE_NAMES:  # great_expectations takes seconds to import: only on demand
        from mnistops.quality import suite

        return getattr(suite, name)
    raise AttributeError(f"module 'mnistops.quality' has no attribute {name!r}")
