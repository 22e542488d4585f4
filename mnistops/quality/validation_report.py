"""What a validation found, in words: the report object and one readable line per failed
expectation (observed against expected, with examples)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np


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


def describe(r: Dict[str, Any], n_rows: int) -> Dict[str, Any]:
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
    return {"expectation": typ, "column": col, "observed": jsonable(obs), "expected": expected,
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


def jsonable(x):
    return json.loads(json.dumps(x, default=lambda o: _clean(o) if isinstance(o, (np.generic,)) else str(o)))
