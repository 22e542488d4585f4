"""Validate a batch of images (and labels, when known) against a suite: the checks that apply to
it (labels given? batch large enough?), run by Great Expectations in memory or with Data Docs."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import pandas as pd

import great_expectations as gx
from great_expectations.data_context.types.base import ProgressBarsConfig

from mnistops.quality.expectations import suite_info
from mnistops.quality.table import batch_table, templates_apply
from mnistops.quality.validation_report import ValidationReport, describe, jsonable

log = logging.getLogger(__name__)
DOCS_SITE = "mnistops_site"


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
    raw = jsonable(raw)
    order = {(e.expectation_type, getattr(e, "column", None), (e.meta or {}).get("check")): i
             for i, e in enumerate(selected.expectations)}
    failures = [describe(r, n) for r in raw.get("results", []) if not r.get("success")]
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
