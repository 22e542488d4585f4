"""Data and model quality. Modules, each with one job:

    features.py           per-image features (numpy/pandas only)
    table.py              the table a suite validates (features, labels, label-image consistency)
    reference.py          statistics of the clean reference set that every bound comes from
    expectations.py       the Great Expectations suite built from those statistics
    suite_file.py         a suite saved as JSON and read back
    validation.py         a batch checked against a suite (in memory or with Data Docs)
    validation_report.py  what failed, in words
    model_quality.py      a registered version's accuracy and per-class recall; the gate's rule
    label_quality.py      are a batch's labels right? confident learning (cleanlab) on a model's probabilities
    store.py              where an env keeps its baselines

How the checks are derived and why: docs/data-quality.md. The names below load on first use:
great_expectations takes seconds to import.
"""

from __future__ import annotations

from mnistops.quality.features import FEATURE_COLUMNS, INK_THRESHOLD, image_features

_LAZY = {
    "build_suite": "expectations", "suite_info": "expectations", "expectations_from": "expectations",
    "reference_statistics": "reference",
    "batch_table": "table",
    "save_suite": "suite_file", "load_suite": "suite_file",
    "validate_batch": "validation",
    "ValidationReport": "validation_report",
}

__all__ = ["FEATURE_COLUMNS", "INK_THRESHOLD", "image_features", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"mnistops.quality.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'mnistops.quality' has no attribute {name!r}")
