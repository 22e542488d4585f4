"""Canary analysis: a challenger's answers to mirrored live requests, judged against the champion's
answers to the *same* requests (joined by request id), with stated statistics.

Evidence (``answers_frame``): one row per answer a deployment gave — request id, deployment,
status, latency (the model's time on the batch that answered it), the digits, the top probability, and
where they exist the "not a digit" flags and the ground truth sent to /feedback. Every flavour's
reader hands its collected data over in this shape; the judging below never asks where it came from.

The decision (``judge``), on the requests both answered:

==============  =====================================================================================
agreement       share of images where both predicted the same digit; Wilson interval at
                ``confidence``: pass when its lower bound >= ``min_agreement``, fail when its upper
                bound < ``min_agreement``, else inconclusive
errors          the challenger's failed answers among the copies it was sent; Wilson interval:
                pass when the upper bound <= ``max_error_rate``, fail when the lower bound is above
latency         p99 of the challenger's model time / p99 of the champion's on the joined requests
                (point estimates): pass when <= ``max_latency_ratio``, else fail; skipped where the
                platform does not record latency. Model time, not time in the server: a mirrored
                copy waits on the event loop behind its primary request's answer, which would make
                an equal model look ~2.7x slower on a busy 2-core machine (measured)
not a digit     where answers carry ``ood``: the challenger's rate minus the champion's; Newcombe's
                interval of the difference: fail when its lower bound > ``max_ood_increase`` (clearly
                more images called "not a digit"), else pass
==============  =====================================================================================

Reported without deciding: the label-free accuracy estimate (average top probability) of each, and
the accuracy of each on joined requests with feedback. The first ``warmup`` joined requests are left
out of every check: a freshly loaded model's first answers (cold ONNX sessions, the batcher still on
its thread) are its start-up, not its speed (measured: an identical model's p99 5x the champion's). Fewer than ``requests`` joined requests:
**hold**; any fail: **reject**; any inconclusive: **hold**; else **promote**.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np
import pandas as pd

PROMOTE, HOLD, REJECT = "promote", "hold", "reject"
PASS, FAIL, INCONCLUSIVE, SKIPPED, INFO = "pass", "fail", "inconclusive", "skipped", "info"
OUTCOMES_UNSEEN = "outcomes_unseen"
"""``answers.attrs`` key: why failed requests and latency are not in the evidence (Azure's collector
sees answered images only); the errors and latency checks are then skipped with this reason."""
ANSWER_COLUMNS = ("id", "deployment", "status", "latency_ms", "digits", "top", "ood", "label", "t", "version")
"""``answers_frame`` columns: digits/top/ood are tuples (one entry per image; ood None where the
model gives none); label the feedback digit of a one-image request, -1 where none; t when it was
answered (epoch seconds)."""


@dataclass(frozen=True)
class Rules:
    requests: int = 500
    warmup: int = 50  # the first requests answered by both are not judged: the challenger's cold start
    min_agreement: float = 0.97
    max_error_rate: float = 0.01
    max_latency_ratio: float = 1.5
    max_ood_increase: float = 0.02
    confidence: float = 0.95

    @property
    def z(self) -> float:
        return NormalDist().inv_cdf(1 - (1 - self.confidence) / 2)


@dataclass
class Check:
    name: str
    verdict: str
    value: Optional[float]
    threshold: Optional[float]
    statement: str
    low: Optional[float] = None
    high: Optional[float] = None


@dataclass
class Verdict:
    decision: str
    reasons: List[str]
    checks: Dict[str, Check]
    joined: int  # requests answered by both
    images: int  # images in those requests
    champion: str
    challenger: str
    metrics: Dict[str, float] = field(default_factory=dict)
    agreement_matrix: Optional[np.ndarray] = None  # champion digit x challenger digit counts

    def summary(self) -> str:
        return f"{self.decision}: " + "; ".join(self.reasons)


# ------------------------------------------------------------------------------- statistics

def wilson(k: int, n: int, z: float) -> Tuple[float, float]:
    """Wilson score interval of a proportion k/n (good near 0 and 1, where the normal one is not)."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe(k2: int, k1: int, n: int, z: float) -> Tuple[float, float]:
    """Newcombe's hybrid score interval of p2 - p1 (two proportions of n each, from Wilson's)."""
    if n <= 0:
        return -1.0, 1.0
    p1, p2 = k1 / n, k2 / n
    l1, u1 = wilson(k1, n, z)
    l2, u2 = wilson(k2, n, z)
    d = p2 - p1
    return d - math.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2), d + math.sqrt((u2 - p2) ** 2 + (p1 - l1) ** 2)


def p99(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(np.percentile(values, 99)) if len(values) else float("nan")


# ------------------------------------------------------------------------------- evidence

def answers_frame(rows: Iterable[Mapping]) -> pd.DataFrame:
    """Rows (dicts with ANSWER_COLUMNS; missing ones get their empty value) as the evidence frame."""
    out = []
    for r in rows:
        digits = tuple(int(d) for d in (r.get("digits") or ()))
        out.append((str(r["id"]), str(r.get("deployment", "")), int(r.get("status", 200)),
                    float(r["latency_ms"]) if r.get("latency_ms") is not None else float("nan"), digits,
                    tuple(float(t) for t in (r.get("top") or ())),
                    tuple(bool(o) for o in r["ood"]) if r.get("ood") is not None else None,
                    int(r["label"]) if r.get("label") is not None else -1, float(r.get("t") or 0.0),
                    str(r.get("version") or "")))
    return pd.DataFrame(out, columns=list(ANSWER_COLUMNS))


def of_versions(answers: pd.DataFrame, versions: Mapping[str, str]) -> pd.DataFrame:
    """The rows that `versions` ({deployment: model version}) gave: a deployment slot reused by a new
    version may still log the late failures of the version it held before (copies queued when that one
    was removed); those are not the new version's. Rows that name no version are kept, and every row of
    a deployment whose version is "" (not known)."""
    other = pd.Series(False, index=answers.index)
    for deployment, version in versions.items():
        if version:
            other |= (answers["deployment"] == deployment) & (answers["version"] != "") & (answers["version"] != version)
    kept = answers[~other]
    kept.attrs.update(answers.attrs)
    return kept


def record_answer(rec: Mapping, feedback: Mapping[str, int]) -> dict:
    """One collector record (the local endpoint's, serving/request_log.py) as an evidence row."""
    probs = rec.get("probabilities")
    top = np.asarray(probs, dtype=np.float64).reshape(-1, 10).max(axis=1).tolist() if probs is not None else ()
    n = rec.get("n", 0)
    return {"id": rec["id"], "deployment": rec.get("deployment", ""), "status": rec.get("status", 0),
            "latency_ms": rec.get("model_ms", rec.get("latency_ms")), "digits": rec.get("digits") or (),
            "top": top, "ood": rec.get("ood"), "label": feedback.get(rec["id"], -1) if n == 1 else -1,
            "t": rec.get("t", 0.0), "version": rec.get("version", "")}


def joined(answers: pd.DataFrame, champion: str, challenger: str, warmup: int = 0) -> pd.DataFrame:
    """The requests both answered (status < 400, digits present, same number of images), oldest
    first, without the first `warmup` of them."""
    ok = answers[(answers["status"] < 400) & (answers["digits"].map(len) > 0)]
    a = ok[ok["deployment"] == champion].drop_duplicates("id").set_index("id")
    b = ok[ok["deployment"] == challenger].drop_duplicates("id").set_index("id")
    both = a.join(b, how="inner", lsuffix="_a", rsuffix="_b")
    both = both[both["digits_a"].map(len) == both["digits_b"].map(len)].sort_values("t_a", kind="stable")
    return both.iloc[warmup:]


def live_requests(answers: pd.DataFrame, champion: str) -> int:
    return int((answers["deployment"] == champion).sum())


# ------------------------------------------------------------------------------- the decision

def judge(answers: pd.DataFrame, champion: str, challenger: str, rules: Rules) -> Verdict:
    both = joined(answers, champion, challenger, rules.warmup)
    n = len(both)
    z = rules.z
    checks: Dict[str, Check] = {}
    da = np.concatenate([np.asarray(d) for d in both["digits_a"]]) if n else np.zeros(0, int)
    db = np.concatenate([np.asarray(d) for d in both["digits_b"]]) if n else np.zeros(0, int)
    m = len(da)
    pct = f"{rules.confidence:.0%}"

    k = int((da == db).sum())
    lo, hi = wilson(k, m, z)
    verdict = PASS if lo >= rules.min_agreement else FAIL if hi < rules.min_agreement else INCONCLUSIVE
    checks["agreement"] = Check("agreement", verdict, k / m if m else None, rules.min_agreement,
                                f"{k}/{m} images the same digit; {pct} Wilson interval [{lo:.4f}, {hi:.4f}] "
                                f"vs canary.min_agreement={rules.min_agreement}", lo, hi)

    sent = answers[answers["deployment"] == challenger]
    unseen = answers.attrs.get(OUTCOMES_UNSEEN)
    if unseen:
        checks["errors"] = Check("errors", SKIPPED, None, rules.max_error_rate, f"failed requests {unseen}")
    else:
        failed = int((sent["status"] >= 400).sum())
        lo, hi = wilson(failed, len(sent), z)
        verdict = PASS if hi <= rules.max_error_rate else FAIL if lo > rules.max_error_rate else INCONCLUSIVE
        champ_failed = int((answers[(answers["deployment"] == champion) & answers["id"].isin(sent["id"])]["status"]
                            >= 400).sum())
        checks["errors"] = Check("errors", verdict, failed / len(sent) if len(sent) else None, rules.max_error_rate,
                                 f"challenger failed {failed}/{len(sent)} copies (champion {champ_failed} of the "
                                 f"same requests); {pct} Wilson interval [{lo:.4f}, {hi:.4f}] vs "
                                 f"canary.max_error_rate={rules.max_error_rate}", lo, hi)

    pa, pb = p99(both["latency_ms_a"]) if n else float("nan"), p99(both["latency_ms_b"]) if n else float("nan")
    if unseen:
        checks["latency"] = Check("latency", SKIPPED, None, rules.max_latency_ratio, f"latency {unseen}")
    elif math.isfinite(pa) and math.isfinite(pb) and pa > 0:
        ratio = pb / pa
        checks["latency"] = Check("latency", PASS if ratio <= rules.max_latency_ratio else FAIL, ratio,
                                  rules.max_latency_ratio,
                                  f"p99 model time {pb:.2f} ms (challenger) / {pa:.2f} ms (champion) = {ratio:.2f} "
                                  f"on {n} requests vs canary.max_latency_ratio={rules.max_latency_ratio}")
    else:
        checks["latency"] = Check("latency", SKIPPED, None, rules.max_latency_ratio,
                                  "latency not recorded by this platform's collector")

    has_ood = n and both["ood_a"].map(lambda o: o is not None).all() and both["ood_b"].map(lambda o: o is not None).all()
    if has_ood:
        oa = np.concatenate([np.asarray(o) for o in both["ood_a"]])
        ob = np.concatenate([np.asarray(o) for o in both["ood_b"]])
        ra, rb = float(oa.mean()), float(ob.mean())
        lo, hi = newcombe(int(ob.sum()), int(oa.sum()), m, z)
        checks["ood"] = Check("ood", FAIL if lo > rules.max_ood_increase else PASS, rb - ra, rules.max_ood_increase,
                              f"'not a digit' rate {rb:.4f} (challenger) - {ra:.4f} (champion) = {rb - ra:+.4f}; "
                              f"{pct} Newcombe interval [{lo:+.4f}, {hi:+.4f}]: fails when above "
                              f"canary.max_ood_increase={rules.max_ood_increase}", lo, hi)
    else:
        checks["ood"] = Check("ood", SKIPPED, None, rules.max_ood_increase, "answers carry no 'ood' flag")

    if n:
        ea = float(np.mean(np.concatenate([np.asarray(t) for t in both["top_a"]])))
        eb = float(np.mean(np.concatenate([np.asarray(t) for t in both["top_b"]])))
        checks["estimated_accuracy"] = Check("estimated_accuracy", INFO, eb - ea, None,
                                             f"label-free estimate (average top probability) {eb:.4f} "
                                             f"(challenger) vs {ea:.4f} (champion)")
    labelled = both[both["label_a"] >= 0] if n else both
    if len(labelled):
        y = labelled["label_a"].to_numpy()
        acc_a = float(np.mean([d[0] == t for d, t in zip(labelled["digits_a"], y)]))
        acc_b = float(np.mean([d[0] == t for d, t in zip(labelled["digits_b"], y)]))
        checks["accuracy"] = Check("accuracy", INFO, acc_b - acc_a, None,
                                   f"on {len(labelled)} requests with feedback: {acc_b:.4f} (challenger) vs "
                                   f"{acc_a:.4f} (champion)")

    matrix = np.zeros((10, 10), np.int64)
    np.add.at(matrix, (da.clip(0, 9), db.clip(0, 9)), 1)
    failed_checks = [c for c in checks.values() if c.verdict == FAIL]
    open_checks = [c for c in checks.values() if c.verdict == INCONCLUSIVE]
    if n < rules.requests:
        decision, reasons = HOLD, [f"not enough evidence yet: {n} of canary.requests={rules.requests} requests "
                                   "answered by both"]
    elif failed_checks:
        decision, reasons = REJECT, [f"{c.name}: {c.statement}" for c in failed_checks]
    elif open_checks:
        decision, reasons = HOLD, [f"{c.name} inconclusive: {c.statement}" for c in open_checks]
    else:
        decision, reasons = PROMOTE, [f"{c.name}: {c.statement}" for c in checks.values() if c.verdict == PASS]
    metrics = {"canary/joined_requests": float(n), "canary/images": float(m),
               "canary/challenger_requests": float(len(sent))}
    for c in checks.values():
        if c.value is not None:
            metrics[f"canary/{c.name}"] = float(c.value)
        if c.low is not None:
            metrics[f"canary/{c.name}_low"], metrics[f"canary/{c.name}_high"] = float(c.low), float(c.high)
    if math.isfinite(pa):
        metrics["canary/champion_p99_ms"] = pa
    if math.isfinite(pb):
        metrics["canary/challenger_p99_ms"] = pb
    return Verdict(decision, reasons, checks, n, m, champion, challenger, metrics, matrix)


# ------------------------------------------------------------------------------- the report

def report_html(verdict: Verdict, champion_uri: str, challenger_uri: str) -> str:
    """A one-page evidence report: the decision, each check, the digit agreement matrix."""
    rows = "".join(f"<tr class='{c.verdict}'><td>{html.escape(c.name)}</td><td>{c.verdict}</td>"
                   f"<td>{html.escape(c.statement)}</td></tr>" for c in verdict.checks.values())
    m = verdict.agreement_matrix if verdict.agreement_matrix is not None else np.zeros((10, 10), int)
    head = "".join(f"<th>{d}</th>" for d in range(10))
    body = "".join(f"<tr><th>{i}</th>" + "".join(
        f"<td{' class=diag' if i == j else ''}>{m[i, j] or ''}</td>" for j in range(10)) + "</tr>" for i in range(10))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>canary {html.escape(challenger_uri)}</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{border:1px solid #ccc;padding:4px 8px}}
table{{border-collapse:collapse;margin-bottom:1.5em}}.pass td:nth-child(2){{color:#070}}
.fail td:nth-child(2){{color:#b00;font-weight:bold}}.inconclusive td:nth-child(2){{color:#a60}}.diag{{background:#dfd}}</style>
</head><body><h1>Canary: {verdict.decision.upper()}</h1>
<p>challenger {html.escape(challenger_uri)} ({html.escape(verdict.challenger)}, mirrored traffic) vs champion
{html.escape(champion_uri)} ({html.escape(verdict.champion)}, live traffic), on {verdict.joined} requests
({verdict.images} images) both answered.</p>
<ul>{''.join(f'<li>{html.escape(r)}</li>' for r in verdict.reasons)}</ul>
<table><tr><th>check</th><th>verdict</th><th>evidence</th></tr>{rows}</table>
<h2>Digits: champion (rows) x challenger (columns)</h2>
<table><tr><th></th>{head}</tr>{body}</table></body></html>
"""
