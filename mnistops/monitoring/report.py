"""The monitoring report of one window: a single self-contained HTML file (inline CSS, PNG plots as
base64 data URIs, no external fetches), so it can be attached to a run, mailed or opened offline.

Sections: header (env, endpoint, window, model, counts), alerts, signals table (breaches
highlighted), then one section per report section of the signal table
(:data:`~mnistops.monitoring.signals.SIGNALS`), in its order: feature distributions reference vs
current, embedding principal components, predicted-class shares, data quality, confusion matrix on
feedback, accuracy estimated without labels next to the measured one, "not a digit", latency and
throughput per deployment.
"""

from __future__ import annotations

import base64
import html
import io
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from mnistops import plots
from mnistops.monitoring.drift import DRIFT_FEATURES, Reference, class_distribution, write_atomic
from mnistops.monitoring.signals import SIGNALS, Signal, SignalKind, describe
from mnistops.monitoring.window import Window

REF_COLOR, CUR_COLOR, BAD_COLOR = "#7f8c8d", "#1f77b4", "#c0392b"
TIME_BINS = 48

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px} td,th{padding:3px 8px;border-bottom:1px solid #eee;text-align:left}
th{background:#f4f4f4} td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.breached td{background:#fde2e0;color:#8b1a10;font-weight:600} tr.nc td{color:#999}
.meta td{border:none;padding:1px 12px 1px 0} .ok{color:#1e7b34;font-weight:600} .bad{color:#c0392b;font-weight:600}
img{max-width:100%;border:1px solid #eee} .muted{color:#888}
"""


def _png(fig) -> str:
    """A figure as a data URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img(uri: Optional[str], alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="{uri}">' if uri else f'<p class="muted">{html.escape(alt)}: no data</p>'


def _by_key(signals: Sequence[Signal]) -> Dict[str, Signal]:
    return {s.key: s for s in signals}


def _hist_grid(ref: np.ndarray, cur: np.ndarray, names: Sequence[str], signals: Dict[str, Signal],
               prefix: str, cols: int) -> Optional[str]:
    """Small multiples: one density histogram per column, reference vs current."""
    if not len(names) or not len(cur):
        return None
    rows = math.ceil(len(names) / cols)
    fig, axes = plots.figure((cols * 2.6, rows * 2.0), rows, cols, squeeze=False)
    for ax, j, name in zip(axes.flat, range(len(names)), names):
        r, c = ref[:, j], cur[:, j]
        lo, hi = np.nanmin(np.r_[r, c]), np.nanmax(np.r_[r, c])
        bins = np.linspace(lo, hi if hi > lo else lo + 1, 31)
        ax.hist(r, bins=bins, density=True, color=REF_COLOR, alpha=0.5, label="reference")
        ax.hist(c, bins=bins, density=True, histtype="step", color=CUR_COLOR, lw=1.5, label="current")
        s = signals.get(f"{prefix}/{name}")
        val = "" if s is None or s.value is None else f" {s.value:.3g}"
        ax.set_title(f"{name}{val}", fontsize=8, color=BAD_COLOR if s is not None and s.breached else "black")
        ax.tick_params(labelsize=6)
        ax.set_yticks([])
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.tight_layout()
    return _png(fig)


def _class_plot(reference: Reference, window: Window) -> Optional[str]:
    if not window.n_images:
        return None
    x = np.arange(10)
    fig, ax = plots.figure((6, 2.6))
    ax.bar(x - 0.2, reference.class_distribution, 0.4, color=REF_COLOR, label=f"reference ({reference.n_images})")
    ax.bar(x + 0.2, class_distribution(window.digits), 0.4, color=CUR_COLOR, label=f"current ({window.n_images})")
    ax.set_xticks(x)
    ax.set_xlabel("predicted digit")
    ax.set_ylabel("share")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def _confusion(window: Window) -> Optional[str]:
    from mnistops.classification_report import confusion

    labelled = np.asarray(window.labels) >= 0
    if not labelled.any():
        return None
    cm = confusion(np.asarray(window.labels)[labelled].astype(np.int64),
                   np.asarray(window.digits)[labelled].astype(np.int64), 10)
    with tempfile.TemporaryDirectory() as tmp:
        path = plots.confusion_matrix(cm, [str(k) for k in range(10)], Path(tmp) / "cm.png",
                                      title=f"confusion matrix on {int(labelled.sum())} labelled images")
        return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _system_plot(window: Window) -> Optional[str]:
    """Per time bin and deployment: p50 / p99 latency (top) and requests per second (bottom)."""
    req = window.requests
    if not len(req):
        return None
    t = req["time"].to_numpy(np.float64)
    t0, t1 = min(window.start, t.min()), max(window.end, t.max())
    edges = np.linspace(t0, t1 if t1 > t0 else t0 + 1, TIME_BINS + 1)
    width = edges[1] - edges[0]
    mids = (edges[:-1] + edges[1:]) / 2 - t0
    unit, scale = ("h", 3600.0) if t1 - t0 > 3 * 3600 else ("min", 60.0)
    deps = req["deployment"].astype(str).replace("", "(none)")
    fig, (ax1, ax2) = plots.figure((9, 4.6), 2, 1, sharex=True)
    for d in sorted(deps.unique()):
        g = req[deps == d]
        b = np.clip(np.searchsorted(edges, g["time"].to_numpy(np.float64), side="right") - 1, 0, TIME_BINS - 1)
        lat = g["latency_ms"].to_numpy(np.float64)
        counts = np.bincount(b, minlength=TIME_BINS)
        p50 = np.full(TIME_BINS, np.nan)
        p99 = np.full(TIME_BINS, np.nan)
        order = np.argsort(b, kind="stable")
        for k, chunk in enumerate(np.split(lat[order], np.cumsum(counts)[:-1])):
            chunk = chunk[np.isfinite(chunk)]
            if len(chunk):
                p50[k], p99[k] = np.percentile(chunk, [50, 99])
        (line,) = ax1.plot(mids / scale, p99, marker=".", lw=1, label=f"{d} p99")
        ax1.plot(mids / scale, p50, ls="--", lw=1, color=line.get_color(), label=f"{d} p50")
        ax2.plot(mids / scale, counts / width, marker=".", lw=1, color=line.get_color(), label=d)
    ax1.set_ylabel("latency ms")
    ax1.legend(fontsize=6, ncol=4)
    ax2.set_ylabel("requests / s")
    ax2.set_xlabel(f"{unit} since window start")
    ax2.legend(fontsize=6, ncol=4)
    fig.tight_layout()
    return _png(fig)


def _signals_table(signals: Sequence[Signal]) -> str:
    rows = []
    for s in signals:
        cls = "breached" if s.breached else ("nc" if not s.computed else "")
        value = "n/a" if s.value is None else f"{s.value:.4g}"
        thr = "" if math.isnan(s.threshold) else f"{'&gt;' if s.direction == 'above' else '&lt;'} {s.threshold:.4g}"
        verdict = "BREACHED" if s.breached else ("not computed" if not s.computed else "ok")
        rows.append(f'<tr class="{cls}"><td>{html.escape(s.name)}</td><td>{html.escape(s.metric)}</td>'
                    f'<td>{html.escape(s.deployment or "")}</td><td class="num">{value}</td>'
                    f'<td class="num">{thr}</td><td>{verdict}</td><td>{html.escape(s.note)}</td></tr>')
    return ("<table><tr><th>signal</th><th>metric</th><th>deployment</th><th>value</th>"
            "<th>breached if</th><th>verdict</th><th>note</th></tr>" + "".join(rows) + "</table>")


ALERT_COLUMNS = ("signal", "metric", "deployment", "value", "threshold", "direction", "id")


def _alerts_table(alerts: Sequence[Dict[str, Any]]) -> str:
    """One row an alert: what breached, by how much, and its id in the alert log (the window is the page's)."""
    if not alerts:
        return '<p class="ok">no alerts</p>'

    def cell(a: Dict[str, Any], k: str) -> str:
        v = a.get(k)
        if isinstance(v, float):
            return f'<td class="num">{v:.4g}</td>'
        return f"<td>{html.escape('' if v is None else str(v))}</td>"

    head = "".join(f"<th>{k}</th>" for k in ALERT_COLUMNS)
    body = "".join('<tr class="breached">' + "".join(cell(a, k) for k in ALERT_COLUMNS) + "</tr>" for a in alerts)
    return f"<table><tr>{head}</tr>{body}</table>"


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def _header(window: Window, reference: Reference, signals: Sequence[Signal], meta: Dict[str, Any]) -> str:
    breached = sum(s.breached for s in signals)
    deps = sorted(set(np.asarray(window.deployments, dtype=str).tolist()) - {""})
    items = [(k, meta[k]) for k in ("env", "endpoint", "window", "model") if meta.get(k) is not None]
    items += [("from", _utc(window.start)), ("to", _utc(window.end)),
              ("requests", len(window.requests)), ("images", window.n_images),
              ("labelled images", window.n_labelled), ("deployments", ", ".join(deps) or "-"),
              ("served version", window.served_version() or "-"),
              ("reference", f"{reference.n_images} training images, {reference.components} embedding components")]
    items += [(k, v) for k, v in meta.items() if k not in ("env", "endpoint", "window", "model", "title")]
    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in items)
    verdict = (f'<span class="bad">{breached} signal(s) breached</span>' if breached
               else '<span class="ok">no signal breached</span>')
    title = html.escape(str(meta.get("title") or "mnistops model monitoring"))
    return f"<h1>{title}</h1><p>{verdict}</p><table class=\"meta\">{rows}</table>"


def _feature_plot(window: Window, reference: Reference, keyed: Dict[str, Signal]) -> str:
    from mnistops.quality.features import image_features

    cur = (image_features(window.images)[list(DRIFT_FEATURES)].to_numpy(np.float64)
           if window.n_images else np.zeros((0, len(DRIFT_FEATURES))))
    return _img(_hist_grid(reference.features.to_numpy(np.float64), cur, DRIFT_FEATURES, keyed, "data_drift", 3),
                "feature distributions")


def _embedding_plot(window: Window, reference: Reference, keyed: Dict[str, Signal]) -> str:
    pcs = [f"pc{i + 1}" for i in range(reference.components)]
    proj = None if window.embedding is None else reference.project(window.embedding)
    return _img(None if proj is None else _hist_grid(reference.projected, np.asarray(proj), pcs, keyed,
                                                     "embedding_drift", 4), "embedding components")


def _estimate_table(window: Window, reference: Reference, keyed: Dict[str, Signal]) -> str:
    """Estimated (no labels) next to measured (feedback): overall and per predicted class."""
    def v(key: str, fmt: str = "{:.4f}") -> str:
        s = keyed.get(key)
        return "n/a" if s is None or s.value is None else fmt.format(s.value)

    acc = keyed.get("estimated_performance/accuracy")
    if acc is None or acc.value is None:
        return f'<p class="muted">{html.escape(acc.note if acc is not None else "not computed")}</p>'
    rows = [("all answers", f"{v('estimated_performance/accuracy')} [{v('estimated_performance/accuracy_low')}, "
                            f"{v('estimated_performance/accuracy_high')}]", v("model_performance/accuracy"))]
    rows += [(f"predicted {k}", v(f"estimated_performance/precision/{k}"), v(f"model_performance/precision/{k}"))
             for k in range(10)]
    body = "".join(f"<tr><td>{a}</td><td class=\"num\">{b}</td><td class=\"num\">{c}</td></tr>" for a, b, c in rows)
    err = keyed.get("estimated_performance/abs_error")
    foot = (f"<p>on the labelled images: {html.escape(err.note)}; absolute error {err.value:.4f}</p>"
            if err is not None and err.value is not None else
            '<p class="muted">no feedback yet: the estimate is all there is</p>')
    return (f"<p>{html.escape(acc.note)}</p><table><tr><th></th><th>estimated, no labels</th>"
            f"<th>measured on feedback</th></tr>{body}</table>{foot}")


PLOTS = {
    "data_drift": _feature_plot,
    "embedding_drift": _embedding_plot,
    "prediction_drift": lambda w, r, k: _img(_class_plot(r, w), "predicted-class shares"),
    "model_performance": lambda w, r, k: _img(_confusion(w), "confusion matrix"),
    "estimated_performance": _estimate_table,
    "system": lambda w, r, k: _img(_system_plot(w), "latency over time"),
}
"""Signal family -> its section body (window, reference, signals by key) -> HTML; a family without
one gets its signals listed."""


def _section_body(kind: SignalKind, window: Window, reference: Reference, signals: Sequence[Signal],
                  keyed: Dict[str, Signal]) -> str:
    render = PLOTS.get(kind.name)
    if render is not None:
        return render(window, reference, keyed)
    lines = "".join(f"<li>{html.escape(describe(s))}</li>" for s in signals if s.name == kind.name)
    return f"<ul>{lines}</ul>" if lines else f'<p class="muted">{html.escape(kind.name)}: no signals</p>'


def write_report(path, window: Window, reference: Reference, signals: List[Signal],
                 alerts: List[Dict[str, Any]], meta: Dict[str, Any], kinds: Sequence[SignalKind] = SIGNALS) -> Path:
    """Write the HTML report of ``window`` to ``path`` (atomically) and return the path.

    ``meta``: shown in the header (``env``, ``endpoint``, ``window``, ``model`` first, then any
    other key; ``title`` replaces the page title). ``alerts``: dicts, shown as a table. After the
    signal table, one section per ``section`` of ``kinds`` (the signal table), in its order: the
    family's plot where :data:`PLOTS` has one, else its signals as lines.
    """
    keyed = _by_key(signals)
    sections = [
        _header(window, reference, signals, meta),
        "<h2>Alerts</h2>" + _alerts_table(alerts),
        "<h2>Signals</h2>" + _signals_table(signals),
    ]
    done = set()
    for kind in kinds:  # one section per report section of the signal table, in its order
        if kind.section in done:
            continue
        done.add(kind.section)
        mine = [k for k in kinds if k.section == kind.section]
        body = "".join(_section_body(k, window, reference, signals, keyed) for k in mine)
        sections.append(f"<h2>{html.escape(kind.section)}</h2>" + body)
    lines = [f"<li>{html.escape(describe(s))}</li>" for s in signals if s.breached]
    if lines:
        sections.insert(2, "<h2>Breaches</h2><ul>" + "".join(lines) + "</ul>")
    doc = (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>mnistops monitoring</title>"
           f"<style>{CSS}</style></head><body>{''.join(sections)}"
           f"<p class=\"muted\">written {_utc(time.time())}</p></body></html>")
    return write_atomic(path, doc.encode("utf-8"))
