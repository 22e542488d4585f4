"""stage=smoke: labelled test images sent as web requests to the deployed endpoint, through the same
auth and traffic path users take. Fails on any error, accuracy below smoke.min_accuracy, or p95
latency above smoke.max_p95_ms; the report goes to MLflow."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
import numpy as np
from omegaconf import DictConfig

from mnistops import tags as T
from mnistops.errors import MnistopsError
from mnistops.stages import StageResult


def target_of(cfg: DictConfig):
    """The env's endpoint's scoring URL and key, through its flavour (fails when it is not up)."""
    from mnistops import backends

    target = backends.get(cfg).endpoint().target()
    if target is None:
        raise MnistopsError(f"stage={cfg.stage.name} sends real requests to the endpoint: it cannot run as a dry run")
    return target


def run(cfg: DictConfig) -> StageResult:
    import httpx
    import mlflow

    from mnistops import tracking
    from mnistops.data import catalog
    from mnistops.serving_client import score

    target = target_of(cfg)
    url, key, endpoint_name = target.url, target.key, target.name
    test = catalog.load(cfg, "test")
    images, labels = test.images, test.labels
    pick = np.random.default_rng(cfg.seed).choice(len(images), size=cfg.smoke.samples, replace=False)

    def one(i: int):
        start = time.perf_counter()
        try:
            status, body = score(client, url, key, images[i:i + 1], cfg.smoke.deployment)
        except httpx.HTTPError as err:
            status, body = 0, {"error": str(err)}
        ms = (time.perf_counter() - start) * 1000
        digit = body["predictions"][0]["digit"] if status == 200 else None
        return {"index": int(i), "label": int(labels[i]), "status": status, "ms": ms, "digit": digit,
                "deployment": body.get("deployment"), "version": body.get("version"),
                "error": None if status == 200 else str(body.get("error", body))[:200]}

    with httpx.Client(limits=httpx.Limits(max_connections=cfg.smoke.concurrency)) as client, \
            ThreadPoolExecutor(cfg.smoke.concurrency) as pool:
        results = list(pool.map(one, pick))

    errors = [r for r in results if r["status"] != 200]
    answered = [r for r in results if r["status"] == 200]
    accuracy = float(np.mean([r["digit"] == r["label"] for r in answered])) if answered else 0.0
    p50, p95 = (np.percentile([r["ms"] for r in results], [50, 95]) if results else (0.0, 0.0))
    by_deployment = {}
    for r in answered:
        by_deployment[f"{r['deployment']}:v{r['version']}"] = by_deployment.get(f"{r['deployment']}:v{r['version']}", 0) + 1
    failures = []
    if errors:
        failures.append(f"{len(errors)} of {len(results)} requests failed (first: {errors[0]['status']} {errors[0]['error']})")
    if accuracy < cfg.smoke.min_accuracy:
        failures.append(f"accuracy {accuracy:.4f} < smoke.min_accuracy {cfg.smoke.min_accuracy}")
    if p95 > cfg.smoke.max_p95_ms:
        failures.append(f"p95 latency {p95:.1f} ms > smoke.max_p95_ms {cfg.smoke.max_p95_ms}")
    metrics = {"smoke/accuracy": accuracy, "smoke/p50_ms": float(p50), "smoke/p95_ms": float(p95),
               "smoke/errors": float(len(errors)), "smoke/requests": float(len(results))}
    report = {"endpoint": url, "endpoint_name": endpoint_name, "env": cfg.env.name, "passed": not failures, "failures": failures,
              "metrics": metrics, "served_by": by_deployment, "requests": results}

    with tracking.start_run(cfg, "smoke") as active:
        out = tracking.output_dir(cfg, "smoke")
        (out / "smoke_report.json").write_text(json.dumps(report, indent=2))
        mlflow.log_artifact(str(out / "smoke_report.json"))
        tracking.log_metrics(metrics)
        mlflow.set_tags({T.SMOKE_PASSED: str(not failures).lower(), T.ENDPOINT: url})

    print(f"smoke test of {url} ({cfg.env.name}): {len(results)} requests, accuracy {accuracy:.4f}, "
          f"p50 {p50:.1f} ms, p95 {p95:.1f} ms, errors {len(errors)}; served by {by_deployment}")
    if failures:
        raise MnistopsError("smoke test failed: " + "; ".join(failures))
    print("  passed")
    return StageResult("smoke", run_id=active.info.run_id, metrics=metrics,
                       artifacts={"report": str(out / "smoke_report.json")}, endpoint_url=url)
