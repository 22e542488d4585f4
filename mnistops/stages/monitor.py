"""stage=monitor: judge what the endpoint served over ``monitor.window`` against the training data.

Signals (Azure ML model monitoring's): data drift on image features and on the model's embedding,
prediction drift, data quality (the baseline Great Expectations suite on the collected inputs),
model performance on requests with feedback, and system metrics per deployment. Every breached
threshold becomes an alert: appended to ``<home>/<env>/monitoring/alerts.jsonl`` and sent to the
sinks. Alerts are data: the stage exits 0 unless ``monitor.fail_on_alert`` (or a dead sink with
``monitor.alerts.fail_on_sink_error``). With ``monitor.on_alert=retrain`` an alert starts
``stage=ci`` with the feedback-labelled production images added to training; the gate still
decides whether the retrained model becomes champion.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig

from mnistops.errors import MnistopsError
from mnistops.stages import StageResult

ON_ALERT = ("none", "retrain")


def run(cfg: DictConfig) -> StageResult:
    if cfg.env.backend == "azure":
        from mnistops.backends.azure.monitoring import monitor_schedule

        return monitor_schedule(cfg)
    if cfg.monitor.on_alert not in ON_ALERT:
        raise MnistopsError(f"monitor.on_alert={cfg.monitor.on_alert!r}: expected one of {', '.join(ON_ALERT)}")

    import mlflow

    from mnistops import tracking
    from mnistops.monitoring import alerts as alerting
    from mnistops.monitoring import collected as store, report, signals as sig

    started = time.perf_counter()
    start, end = store.window_bounds(cfg.monitor.window)
    mdir = store.endpoint_monitoring_dir(cfg)
    stats = store.ReadStats()
    window = store.load_window(mdir, start, end, stats)
    n_requests, n_images = len(window.requests), window.n_images
    print(f"monitor {cfg.env.name}/{mdir.name}: window {cfg.monitor.window} "
          f"({_iso(start)} .. {_iso(end)}): {n_requests} requests, {n_images} collected images, "
          f"{window.n_labelled} with feedback" + (f"; {stats.torn} torn lines skipped" if stats.torn else ""))

    model_uri, embedder = _embedder(cfg, window)
    reference = _reference(cfg, embedder, model_uri)
    suite = _suite(cfg)
    signals = sig.evaluate_window(window, reference, embedder, cfg.monitor, suite=suite)

    window_info = {"spec": str(cfg.monitor.window), "start": start, "end": end, "requests": n_requests,
                   "images": n_images}
    with tracking.start_run(cfg, "monitor") as active:
        run_id = active.info.run_id
        raised = alerting.alerts_from(signals, window=window_info, env=cfg.env.name, endpoint=mdir.name, run_id=run_id)
        alerting.append_log(store.alerts_path(cfg), raised)
        sinks = _send(cfg, raised)
        out = tracking.output_dir(cfg, "monitor")
        meta = {"env": cfg.env.name, "endpoint": mdir.name, "window": str(cfg.monitor.window), "model": model_uri,
                "monitor run": run_id,
                "alert sinks": "; ".join(f"{s.sink}: " + ("delivered" if s.ok else f"FAILED ({s.error})") for s in sinks)
                or ("webhook configured, nothing to send" if cfg.monitor.alerts.webhook_url else "alert log only")}
        html = report.write_report(out / "monitor_report.html", window, reference, signals,
                                   [a.to_dict() for a in raised], meta)
        (out / "signals.json").write_text(json.dumps([s.__dict__ for s in signals], indent=2, default=str))
        (out / "alerts.json").write_text(json.dumps([a.to_dict() for a in raised], indent=2))
        metrics = {**sig.metrics(signals), "monitor/alerts": float(len(raised)), "monitor/requests": float(n_requests),
                   "monitor/images": float(n_images),
                   "monitor/sink_failures": float(sum(not s.ok for s in sinks)),
                   "monitor/seconds": time.perf_counter() - started}
        tracking.log_metrics(metrics)
        for path in (html, out / "signals.json", out / "alerts.json"):
            mlflow.log_artifact(str(path), "monitoring")
        mlflow.set_tags({"mnistops.monitor.window": str(cfg.monitor.window), "mnistops.monitor.alerts": str(len(raised)),
                         "mnistops.monitor.endpoint": mdir.name, "mnistops.monitor.model": model_uri or "none"})
        retrain = _retrain(cfg, window, mdir, raised) if raised and cfg.monitor.on_alert == "retrain" else None
        if retrain is not None:
            metrics["monitor/retrain_exit_code"] = float(retrain["exit_code"])
            tracking.log_metrics({"monitor/retrain_exit_code": metrics["monitor/retrain_exit_code"]})
            mlflow.log_dict(retrain, "monitoring/retrain.json")
            mlflow.set_tag("mnistops.monitor.retrain", retrain["outcome"])

    print(sig.summary(signals))
    print(f"  report: {html}")
    for a in raised:
        print(f"  ALERT {a.message}")
    print(f"  {len(raised)} alert(s) -> {store.alerts_path(cfg)}" if raised else "  no alerts")
    failed_sinks = [s for s in sinks if not s.ok]
    for s in failed_sinks:
        print(f"  WARNING: alert sink {s.sink} failed after {s.attempts} attempt(s): {s.error}")
    if retrain is not None:
        print(f"  retraining: {retrain['outcome']}")
    if failed_sinks and cfg.monitor.alerts.fail_on_sink_error:
        raise MnistopsError(f"alert sink {failed_sinks[0].sink} failed: {failed_sinks[0].error}")
    if raised and cfg.monitor.fail_on_alert:
        raise MnistopsError(f"{len(raised)} monitoring alert(s) (monitor.fail_on_alert=true); first: {raised[0].message}")
    return StageResult("monitor", run_id=run_id, metrics=metrics, model_uri=model_uri,
                       artifacts={"report": str(html), "signals": str(out / "signals.json"),
                                  "alerts": str(out / "alerts.json"), "alert_log": str(store.alerts_path(cfg))})


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) if t > 0 else "beginning"


def _embedder(cfg: DictConfig, window):
    """The registered model whose embedding is compared: monitor.model, else the window's most-served version."""
    from mnistops.backends.local import registry
    from mnistops.monitoring.embedding import Embedder
    from mnistops.monitoring.collected import env_monitoring_dir

    reference = cfg.monitor.model
    if reference is None:
        served = window.served_version()
        # nothing collected yet: judge against the champion (the drift signals will say "not computed")
        reference = f"models:/{cfg.env.model_name}/{served}" if served else f"models:/{cfg.env.model_name}@champion"
    model = registry.resolve(cfg, reference)
    model_dir = registry.fetch(model, env_monitoring_dir(cfg) / "models")
    return model.uri, Embedder(model_dir)


def _reference(cfg: DictConfig, embedder, model_uri: str):
    """Training images (``monitor.reference_size``, seeded) through the model; cached per dataset and model."""
    from mnistops.data import mirrors
    from mnistops.data.datamodule import load_splits
    from mnistops.monitoring import drift
    from mnistops.monitoring.collected import env_monitoring_dir

    digest = mirrors.digest(cfg)[:12]
    name = model_uri.split("models:/", 1)[1].replace("/", "-v")
    k = cfg.monitor.embedding_components
    path = env_monitoring_dir(cfg) / "reference" / f"{cfg.data.name}-{digest}-{name}-{cfg.monitor.reference_size}-{k}.npz"
    if path.is_file():
        return drift.load_reference(path)
    train, _, _ = load_splits(cfg)
    reference = drift.build_reference(train.images, embedder, k, size=cfg.monitor.reference_size, seed=cfg.seed,
                                      meta={"model": model_uri, "dataset": cfg.data.name, "digest": digest})
    drift.save_reference(reference, path)
    return reference


def _suite(cfg: DictConfig):
    from mnistops.quality import store as quality_store
    from mnistops.quality import load_suite

    path = quality_store.current_suite_path(cfg)
    return load_suite(path) if path is not None and Path(path).is_file() else None


def _send(cfg: DictConfig, raised):
    from mnistops.monitoring.alerts import send_webhook

    sinks = cfg.monitor.alerts
    if not raised or not sinks.webhook_url:
        return []
    return [send_webhook(sinks.webhook_url, raised, timeout_s=sinks.timeout_s, retries=sinks.retries,
                         backoff_s=sinks.backoff_s)]


def _retrain(cfg: DictConfig, window, mdir: Path, raised) -> Optional[dict]:
    """``stage=ci`` in this env, as its own process, with the feedback-labelled images added to training."""
    import subprocess
    import sys

    from mnistops.monitoring.collected import export_labelled

    labelled = window.n_labelled
    if labelled < cfg.monitor.retrain.min_labelled:
        return {"outcome": f"skipped: {labelled} labelled images < monitor.retrain.min_labelled "
                           f"{cfg.monitor.retrain.min_labelled}", "exit_code": -1}
    path = export_labelled(window, mdir)
    cmd = [sys.executable, "-m", "mnistops", f"env={cfg.env.name}", "stage=ci", f"paths.home={cfg.paths.home}",
           f"data.extra_train=[{path}]", *cfg.monitor.retrain.overrides]
    print(f"  retraining ({len(raised)} alert(s), {labelled} labelled production images): {' '.join(cmd[1:])}")
    proc = subprocess.run(cmd, stderr=subprocess.PIPE, text=True)
    error = proc.stderr.strip().splitlines()[-1] if proc.returncode and proc.stderr.strip() else ""
    if proc.returncode == 0:
        outcome = "ci passed: the retrained model passed the gate and is champion"
    elif "gate refused" in error:
        outcome = f"ci ran; the gate refused the retrained model, champion unchanged ({error})"
    else:
        outcome = f"ci failed (exit {proc.returncode}): {error}"
    return {"outcome": outcome, "exit_code": proc.returncode, "command": cmd[1:], "extra_train": str(path),
            "labelled": labelled}
