"""stage=monitor: judge what the endpoint served over ``monitor.window`` against the training data.

Signals: the families of ``monitoring.signals.SIGNALS`` (drift, data quality, model performance on
feedback and estimated without labels, "not a digit" rate, system metrics). This module only
orchestrates: read the window, get the model and the drift reference (``monitoring.reference_cache``),
evaluate, log, alert, hand over for retraining. Every breached
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

from omegaconf import DictConfig

from mnistops import tags as T
from mnistops.errors import MnistopsError
from mnistops.stages import StageResult

ON_ALERT = ("none", "retrain")
TRIGGERS = ("local", "none")


def run(cfg: DictConfig) -> StageResult:
    from mnistops import backends
    from mnistops.monitoring.estimate import METHODS

    if cfg.monitor.on_alert not in ON_ALERT:
        raise MnistopsError(f"monitor.on_alert={cfg.monitor.on_alert!r}: expected one of {', '.join(ON_ALERT)}")
    if cfg.monitor.estimator not in METHODS:
        raise MnistopsError(f"monitor.estimator={cfg.monitor.estimator!r}: expected one of {', '.join(METHODS)}")
    backend = backends.get(cfg)
    started = time.perf_counter()
    request_file = cfg.monitor.retrain.request_file
    if request_file:  # a request left by an earlier run must not queue a retraining again
        Path(request_file).unlink(missing_ok=True)
    scheduled = backend.monitoring.apply(cfg) if backend.monitoring.remote else None  # the platform's own monitor

    import mlflow

    from mnistops import layout, tracking
    from mnistops.monitoring import alerts as alerting
    from mnistops.monitoring import request_log_reader, reference_cache, report, signals as sig

    stats = request_log_reader.ReadStats()
    if cfg.monitor.traffic_run:
        window, start, end, spec = _traffic_run_window(cfg, backend, stats)
    else:
        start, end = request_log_reader.window_bounds(cfg.monitor.window)
        window, spec = backend.monitoring.read_window(cfg, start, end, stats), str(cfg.monitor.window)
    if window is None:  # nothing to read here (a dry run): what the platform was given is the result
        return scheduled
    endpoint = backend.monitoring.endpoint_name(cfg)
    n_requests, n_images = len(window.requests), window.n_images
    print(f"monitor {cfg.env.name}/{endpoint}: window {spec} "
          f"({_iso(start)} .. {_iso(end)}): {n_requests} requests, {n_images} collected images, "
          f"{window.n_labelled} with feedback" + (f"; {stats.torn} torn lines skipped" if stats.torn else ""))

    model_uri, embedder = _embedder(cfg, backend.registry(), window)
    reference, new_reference = reference_cache.load_or_build(cfg, embedder, model_uri)
    suite = _suite(cfg)
    signals = sig.evaluate_window(window, reference, embedder, cfg.monitor, suite=suite)

    window_info = {"spec": spec, "start": start, "end": end, "requests": n_requests,
                   "images": n_images}
    with tracking.start_run(cfg, "monitor") as active:
        run_id = active.info.run_id
        raised = alerting.alerts_from(signals, window=window_info, env=cfg.env.name, endpoint=endpoint, run_id=run_id)
        alerting.append_log(layout.alerts_file(cfg), raised)
        sinks = _send(cfg, raised)
        out = tracking.output_dir(cfg, "monitor")
        meta = {"env": cfg.env.name, "endpoint": endpoint, "window": str(cfg.monitor.window), "model": model_uri,
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
        tracking.set_tags({T.MONITOR_WINDOW: spec, T.MONITOR_ALERTS: str(len(raised)),
                           T.MONITOR_ENDPOINT: endpoint, T.MONITOR_MODEL: model_uri or "none"})
        if new_reference is not None:  # kept in the env's store, for monitors on other machines
            mlflow.log_artifact(str(new_reference[0]), reference_cache.ARTIFACTS)
            tracking.set_tags({T.DRIFT_REFERENCE: new_reference[1]})
        retrain = _retrain(cfg, backend, window, run_id, raised) if raised and cfg.monitor.on_alert == "retrain" else None
        if retrain is not None and retrain["exit_code"] is not None:
            metrics["monitor/retrain_exit_code"] = float(retrain["exit_code"])
            tracking.log_metrics({"monitor/retrain_exit_code": metrics["monitor/retrain_exit_code"]})
        if retrain is not None:
            mlflow.log_dict(retrain, "monitoring/retrain.json")
            tracking.set_tags({T.MONITOR_RETRAIN: retrain["outcome"]})

    print(sig.summary(signals))
    print(f"  report: {html}")
    for a in raised:
        print(f"  ALERT {a.message}")
    print(f"  {len(raised)} alert(s) -> {layout.alerts_file(cfg)}" if raised else "  no alerts")
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
                       artifacts={**(scheduled.artifacts if scheduled is not None else {}),  # the platform's schedule
                                  "report": str(html), "signals": str(out / "signals.json"),
                                  "alerts": str(out / "alerts.json"), "alert_log": str(layout.alerts_file(cfg))})


def _traffic_run_window(cfg: DictConfig, backend, stats):
    """(window, start, end, spec) of exactly the requests a stage=traffic run sent, once the endpoint's
    collector has written them all (or monitor.collect_wait_s has passed: then judged as they are)."""
    from mnistops import tracking

    tracking.configure(cfg)
    run = tracking.get_run(cfg.monitor.traffic_run)
    prefix = run.data.tags.get(T.REQUEST_PREFIX)
    if run.data.tags.get(T.STAGE) != "traffic" or not prefix:
        raise MnistopsError(f"monitor.traffic_run={cfg.monitor.traffic_run}: not a traffic run of env {cfg.env.name!r}")
    expected = int(run.data.metrics.get("traffic/requests", 0))
    since = run.info.start_time / 1000.0 - 600  # its requests came after it began (the endpoint's clock may differ)
    deadline = time.monotonic() + cfg.monitor.collect_wait_s
    while True:
        stats.__init__()
        window = backend.monitoring.read_window(cfg, since, time.time(), stats, prefix)
        if window is None or len(window.requests) >= expected or time.monotonic() >= deadline:
            break
        time.sleep(0.25)
    if window is not None and len(window.requests) < expected:
        print(f"  WARNING: {len(window.requests)} of the {expected} requests of traffic run {run.info.run_id} were "
              f"collected within monitor.collect_wait_s={cfg.monitor.collect_wait_s}")
    start = float(window.requests["time"].min()) if window is not None and len(window.requests) else 0.0
    if start:
        window.start = start  # it opens with the run's first request, not with the margin read before it
    return window, start, time.time(), f"traffic run {run.info.run_id}"


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) if t > 0 else "beginning"


def _embedder(cfg: DictConfig, registry, window):
    """The registered model whose embedding is compared: monitor.model, else the window's most-served version."""
    from mnistops import layout
    from mnistops.monitoring.embedding import Embedder

    reference = cfg.monitor.model
    if reference is None:
        served = window.served_version()
        # nothing collected yet: judge against the champion (the drift signals will say "not computed")
        reference = f"models:/{cfg.env.model_name}/{served}" if served else T.model_uri(cfg.env.model_name, T.CHAMPION)
    model = registry.resolve(reference, "monitor.model")
    model_dir = registry.download(model, layout.models_cache(cfg))
    return model.uri, Embedder(model_dir)


def _suite(cfg: DictConfig):
    from mnistops.quality import baselines

    current = baselines.current_suite(cfg)
    return current[0] if current is not None else None


def _send(cfg: DictConfig, raised):
    from mnistops.monitoring.alerts import send_webhook

    sinks = cfg.monitor.alerts
    if not raised or not sinks.webhook_url:
        return []
    return [send_webhook(sinks.webhook_url, raised, timeout_s=sinks.timeout_s, retries=sinks.retries,
                         backoff_s=sinks.backoff_s)]


def _retrain(cfg: DictConfig, backend, window, run_id: str, raised) -> dict:
    """Hand the window's feedback-labelled images to the retraining env's store, then (trigger=local)
    run its CI here as a process of its own; the outcome is read from the child's exit status and
    from that env's registry (its champion, the gate's decision), not from its output."""
    import subprocess
    import sys

    from mnistops.monitoring import production_data

    retrain, labelled = cfg.monitor.retrain, window.n_labelled
    if retrain.trigger not in TRIGGERS:
        raise MnistopsError(f"monitor.retrain.trigger={retrain.trigger!r}: expected one of {', '.join(TRIGGERS)}")
    if labelled < retrain.min_labelled:
        return {"outcome": f"skipped: {labelled} labelled images < monitor.retrain.min_labelled "
                           f"{retrain.min_labelled}", "exit_code": None}
    has = window.labels >= 0
    dataset = production_data.hand_over(cfg, window.images[has], window.labels[has], to_env=retrain.env,
                                        uri=backend.store_uri(retrain.env), monitor_run_id=run_id)
    cmd = [sys.executable, "-m", "mnistops", f"env={retrain.env}", "stage=ci", f"paths.home={cfg.paths.home}",
           f"data.extra_train=[{production_data.KEYWORD}]", *retrain.overrides]
    shown = " ".join(cmd[1:])
    record = {"env": retrain.env, "dataset_run_id": dataset, "labelled": labelled, "command": cmd[1:]}
    print(f"  {labelled} labelled production images handed to {retrain.env} (run {dataset})")
    if retrain.trigger == "none":
        if retrain.request_file:
            from mnistops.atomic import write_atomic

            overrides = [f"data.extra_train=[{production_data.KEYWORD}]", *retrain.overrides]
            write_atomic(Path(retrain.request_file), json.dumps({**record, "ci_overrides": overrides}, indent=2))
        return {**record, "exit_code": None,
                "outcome": f"handed over to {retrain.env}; queue its CI: python {shown}"
                           + (f" (request: {retrain.request_file})" if retrain.request_file else "")}
    registry = backend.registry(retrain.env)
    before = {v.version for v in registry.versions(cfg.env.model_name)}
    print(f"  retraining in {retrain.env} ({len(raised)} alert(s)): python {shown}")
    code = subprocess.run(cmd).returncode
    return {**record, "exit_code": code, "outcome": _retrain_outcome(cfg, registry, retrain.env, code, before)}


def _retrain_outcome(cfg: DictConfig, registry, env: str, code: int, before: set) -> str:
    """What the retraining CI decided, read from that env's registry: its champion, or the gate
    decision tagged on the version it registered (none: it failed before its gate)."""
    if code == 0:
        champion = registry.get(cfg.env.model_name, T.CHAMPION)
        return (f"ci in {env} passed: the retrained model {champion.uri if champion else '?'} passed the gate "
                f"and is {env}'s champion; it reaches {cfg.env.name} through {env}'s CD, approval and promotion")
    new = [v for v in registry.versions(cfg.env.model_name) if v.version not in before]
    if any(v.tags.get(T.GATE_DECISION) == T.REJECTED for v in new):
        return f"ci in {env} ran; the gate refused the retrained model, champion unchanged"
    return f"ci in {env} failed (exit {code}) before its gate decided; champion unchanged"
