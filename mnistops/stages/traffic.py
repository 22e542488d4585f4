"""stage=traffic: a traffic simulator for demos and tests of monitoring.

Real test-set images, optionally shifted (``traffic.shift`` at ``traffic.severity``), sent one per
request to the env's endpoint at ``traffic.rate`` per second, with the true label sent to its
feedback route (``/feedback``; a managed endpoint's ``/score``) for ``traffic.feedback_fraction`` of
them (``traffic.label_noise`` of that feedback deliberately wrong). What the endpoint collects is
what ``stage=monitor`` then judges.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from omegaconf import DictConfig

from mnistops import tags as T
from mnistops.errors import MnistopsError
from mnistops.monitoring.shifts import SHIFTS
from mnistops.stages import StageResult

def check(cfg: DictConfig) -> None:
    t = cfg.traffic
    if t.shift not in SHIFTS:
        raise MnistopsError(f"traffic.shift={t.shift!r}: expected one of {', '.join(SHIFTS)}")
    for key, lo, hi in (("severity", 0, 1), ("feedback_fraction", 0, 1), ("label_noise", 0, 1)):
        if not lo <= t[key] <= hi:
            raise MnistopsError(f"traffic.{key}={t[key]} must be in {lo}..{hi}")
    if t.requests < 1 or t.concurrency < 1 or t.rate < 0:
        raise MnistopsError("traffic.requests and traffic.concurrency must be >= 1 and traffic.rate >= 0")


def run(cfg: DictConfig) -> StageResult:
    import httpx
    from tqdm import tqdm

    from mnistops import tracking
    from mnistops.data import catalog
    from mnistops.monitoring.shifts import apply_shift
    from mnistops.serving_client import feedback, score
    from mnistops.stages.smoke import target_of

    check(cfg)
    t = cfg.traffic
    target = target_of(cfg)
    url, key = target.url, target.key
    rng = np.random.default_rng(cfg.seed if t.seed is None else t.seed)
    test = catalog.load(cfg, "test")
    test_x, test_y = test.images, test.labels
    pick = rng.choice(len(test_x), size=t.requests, replace=t.requests > len(test_x))
    images, labels = apply_shift(test_x[pick], test_y[pick], t.shift, float(t.severity), rng)
    give_feedback = rng.random(len(images)) < t.feedback_fraction
    wrong = rng.random(len(images)) < t.label_noise
    told = np.where(wrong, (labels + rng.integers(1, 10, len(labels))) % 10, labels)
    interval = 1.0 / t.rate if t.rate > 0 else 0.0

    def one(i: int) -> dict:
        due = t0 + i * interval
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        start = time.perf_counter()
        try:
            status, body = score(client, url, key, images[i:i + 1], t.deployment, request_id=f"{prefix}-{i}")
        except httpx.HTTPError as err:
            status, body = 0, {"error": str(err)}
        ms = (time.perf_counter() - start) * 1000
        out = {"status": status, "ms": ms, "digit": body["predictions"][0]["digit"] if status == 200 else None,
               "feedback": None}
        if status == 200 and give_feedback[i]:
            try:
                out["feedback"] = feedback(client, url, key, body["request_id"], int(told[i]),
                                           path=target.feedback_path)
            except httpx.HTTPError:
                out["feedback"] = 0
        return out

    with tracking.start_run(cfg, "traffic") as active:
        # every request id starts with the run's: stage=monitor monitor.traffic_run=<id> judges exactly these
        prefix = f"traffic-{active.info.run_id}"
        tracking.set_tags({T.REQUEST_PREFIX: prefix})
        with httpx.Client(limits=httpx.Limits(max_connections=t.concurrency)) as client, \
                ThreadPoolExecutor(t.concurrency) as pool, \
                tqdm(total=len(images), desc=f"traffic {t.shift}@{t.severity:g} -> {url}", unit="req") as bar:
            t0 = time.perf_counter()
            results = []
            for r in pool.map(one, range(len(images))):
                results.append(r)
                bar.update(1)
            elapsed = time.perf_counter() - t0
        metrics, summary = _summary(cfg, results, labels, elapsed, url)
    fed, fb_failed = int(metrics["traffic/feedback"]), int(metrics["traffic/feedback_failed"])
    print(f"traffic to {url} ({cfg.env.name}): {len(results)} requests, shift {t.shift} at severity "
          f"{t.severity:g}, {metrics['traffic/rate']:.1f} req/s, {int(metrics['traffic/errors'])} errors, "
          f"accuracy {metrics['traffic/accuracy']:.4f}, feedback {fed}" + (f" ({fb_failed} refused)" if fb_failed else ""))
    print(f"  traffic run {active.info.run_id}: judge exactly these requests with "
          f"stage=monitor monitor.traffic_run={active.info.run_id}")
    return StageResult("traffic", run_id=active.info.run_id, metrics=metrics, endpoint_url=url,
                       artifacts={"summary": str(summary)})


def _summary(cfg: DictConfig, results: list, labels, elapsed: float, url: str):
    """(metrics, traffic.json): the run's metrics, params and summary file (inside the open traffic run)."""
    import mlflow

    from mnistops import tracking

    t = cfg.traffic
    ok = [i for i, r in enumerate(results) if r["status"] == 200]
    errors = len(results) - len(ok)
    accuracy = float(np.mean([results[i]["digit"] == labels[i] for i in ok])) if ok else 0.0
    fed = sum(1 for r in results if r["feedback"] == 202)
    fb_failed = sum(1 for r in results if r["feedback"] not in (None, 202))
    metrics = {"traffic/requests": float(len(results)), "traffic/errors": float(errors),
               "traffic/accuracy": accuracy, "traffic/feedback": float(fed), "traffic/feedback_failed": float(fb_failed),
               "traffic/rate": len(results) / elapsed if elapsed > 0 else 0.0,
               "traffic/p50_ms": float(np.percentile([r["ms"] for r in results], 50))}
    out = tracking.output_dir(cfg, "traffic")
    summary = {"endpoint": url, "env": cfg.env.name, "shift": t.shift, "severity": float(t.severity),
               "metrics": metrics}
    (out / "traffic.json").write_text(json.dumps(summary, indent=2))
    mlflow.log_artifact(str(out / "traffic.json"))
    mlflow.log_params({"traffic.shift": t.shift, "traffic.severity": t.severity})
    tracking.log_metrics(metrics)
    return metrics, out / "traffic.json"
