"""stage=canary: judge a new version on real requests before any of them is its to answer.

`deploy.model` is loaded into the endpoint's idle deployment (as stage=deploy does) and must answer
a request pinned to it; then `canary.mirror` % of live requests are copied to it (clients still get
the champion's answers) until `canary.requests` requests were answered by both. The flavour's
monitoring reader hands over both deployments' answers; quality/canary.py judges them on the same
requests (agreement, errors, p99 latency, "not a digit" rate) and decides:

  promote  traffic moves to the challenger (endpoint.traffic, or 100 %), as a deploy would; exit 0
  hold     not enough evidence yet (too few requests by canary.timeout_s, or an inconclusive
           interval): traffic unchanged, the challenger stays loaded without traffic; exit 3
  reject   the challenger is removed, the champion keeps 100 %; exit 2

The decision and its evidence are tags on the version and an MLflow run (metrics, the decision as
JSON, an HTML evidence report). stage=cd with cd.canary calls `analyse` before traffic moves.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Dict, Optional

from omegaconf import DictConfig

from mnistops import tags as T
from mnistops.errors import Held, MnistopsError
from mnistops.stages import StageResult

NO_TRAFFIC, NOT_APPLICABLE = "no_traffic", "not_applicable"


@dataclass
class Outcome:
    decision: str  # promote | hold | reject | no_traffic | not_applicable
    message: str
    model_uri: str
    slot: Optional[str] = None
    metrics: Optional[dict] = None
    run_id: Optional[str] = None
    report: Optional[str] = None
    endpoint_url: Optional[str] = None


def rules_of(cfg: DictConfig):
    from mnistops.quality.canary import Rules

    c = cfg.canary
    checks = [
        ("mirror", isinstance(c.mirror, int) and 1 <= c.mirror <= 100, "an integer percentage 1..100"),
        ("requests", isinstance(c.requests, int) and c.requests >= 1, "an integer >= 1"),
        ("warmup", isinstance(c.warmup, int) and c.warmup >= 0, "an integer >= 0"),
        ("min_agreement", 0 < c.min_agreement <= 1, "in (0, 1]"),
        ("max_error_rate", 0 <= c.max_error_rate < 1, "in [0, 1)"),
        ("max_latency_ratio", c.max_latency_ratio > 0, "> 0"),
        ("max_ood_increase", -1 <= c.max_ood_increase <= 1, "in [-1, 1]"),
        ("confidence", 0 < c.confidence < 1, "in (0, 1)"),
        ("timeout_s", c.timeout_s > 0, "> 0"),
        ("no_traffic_s", c.no_traffic_s > 0, "> 0"),
        ("poll_s", c.poll_s > 0, "> 0"),
    ]
    for key, ok, what in checks:
        if not ok:
            raise MnistopsError(f"canary.{key}={c[key]!r} must be {what}")
    return Rules(requests=c.requests, warmup=c.warmup, min_agreement=c.min_agreement, max_error_rate=c.max_error_rate,
                 max_latency_ratio=c.max_latency_ratio, max_ood_increase=c.max_ood_increase,
                 confidence=c.confidence)


def run(cfg: DictConfig) -> StageResult:
    from mnistops.quality.canary import HOLD, PROMOTE, REJECT

    out = analyse(cfg)
    if out.decision == REJECT:
        raise MnistopsError(out.message)
    if out.decision in (HOLD, NO_TRAFFIC):
        raise Held(out.message)
    if out.decision != PROMOTE:
        raise MnistopsError(out.message)
    artifacts = {"canary_report": out.report} if out.report else {}
    return StageResult("canary", run_id=out.run_id, model_uri=out.model_uri, metrics=out.metrics or {},
                       artifacts=artifacts, endpoint_url=out.endpoint_url)


def analyse(cfg: DictConfig) -> Outcome:
    """Load, mirror, wait, judge, act. `not_applicable` (nothing live to compare with, or the version
    already serves) and `no_traffic` leave the traffic as it was and say why."""
    from mnistops import backends
    from mnistops.quality import canary as judging
    from mnistops.serving_client import sample_request
    from mnistops.stages.deploy import desired_traffic, percent_map, pick_slot

    rules = rules_of(cfg)
    if not cfg.endpoint.collect.enabled:
        raise MnistopsError("canary analysis judges the answers the endpoint collects: endpoint.collect.enabled="
                            "false leaves nothing to judge")
    backend = backends.get(cfg)
    registry = backend.registry()
    challenger = registry.resolve(cfg.deploy.model, "deploy.model")
    endpoint = backend.endpoint()
    where = f"endpoint {endpoint.name} ({cfg.env.name})"
    state = endpoint.state()
    live = state.live()
    if not state.exists or not live:
        return Outcome(NOT_APPLICABLE, f"canary: {where} serves nothing yet: no champion to judge "
                                       f"{challenger.uri} against", challenger.uri)
    if len(live) > 1:
        raise MnistopsError(f"canary: {where} splits live traffic {state.traffic}; canary analysis compares "
                            "one champion deployment with the idle one: move the traffic to one deployment first")
    champion_slot = live[0]
    champion_uri = state.deployments.get(champion_slot, "")
    if champion_uri == challenger.uri:
        return Outcome(NOT_APPLICABLE, f"canary: {challenger.uri} already serves on {where} ({champion_slot})",
                       challenger.uri, champion_slot)
    slot = pick_slot(live, cfg.deploy.deployment)
    if slot == champion_slot:
        raise MnistopsError(f"deploy.deployment={slot} takes the live traffic; the canary needs the idle deployment")

    endpoint.load(slot, challenger)
    print(f"canary: {challenger.uri} loaded into {slot} (idle) on {where}; the champion {champion_uri} "
          f"answers the live traffic on {champion_slot}")
    target = endpoint.target()
    url = target.url if target is not None else None
    if target is not None:
        status, body = sample_request(target.url, target.key, deployment=slot)
        if status != 200:
            endpoint.unload(slot)
            raise MnistopsError(f"canary: deployment {slot} ({challenger.uri}) loaded but answered {status}: "
                                f"{body}; removed it, traffic unchanged")

    start = time.time()
    endpoint.set_traffic(state.traffic, {slot: cfg.canary.mirror})
    print(f"canary: mirroring {cfg.canary.mirror}% of live requests to {slot} until {rules.requests} were "
          f"answered by both, after {rules.warmup} of warm-up (canary.timeout_s={cfg.canary.timeout_s:g})")
    try:
        versions = {champion_slot: _version_of(champion_uri), slot: challenger.version}
        answers, why = _wait(cfg, backend, rules, start, versions)
    finally:
        endpoint.set_traffic(state.traffic, {})  # mirror off: the champion alone, whatever comes next
    if why == NO_TRAFFIC:
        message = (f"canary: no live traffic on {where} in canary.no_traffic_s={cfg.canary.no_traffic_s:g} s: "
                   f"nothing to judge {challenger.uri} on; it stays loaded in {slot} without traffic")
        return Outcome(NO_TRAFFIC, message, challenger.uri, slot, endpoint_url=url)

    verdict = judging.judge(answers, champion_slot, slot, rules)
    if verdict.decision == judging.PROMOTE:
        traffic = desired_traffic(cfg, slot)
        endpoint.set_traffic(traffic, percent_map(cfg, "mirror_traffic"))
        after = f"traffic moved: {traffic}"
    elif verdict.decision == judging.REJECT:
        endpoint.unload(slot)
        after = f"removed {slot}; the champion keeps {state.traffic}"
    else:
        after = f"traffic unchanged {state.traffic}; {challenger.uri} stays loaded in {slot} without traffic"
    run_id, report = _record(cfg, registry, challenger, champion_uri, verdict)
    headline = (f"canary {verdict.decision.upper()} {challenger.uri} against {champion_uri} on "
                f"{verdict.joined} requests ({verdict.images} images) answered by both")
    print(headline)
    for c in verdict.checks.values():
        print(f"  {c.name:<19}{c.verdict:<13}{c.statement}")
    print(f"  {after}")
    print(f"  report: {report}")
    message = f"{headline}: {'; '.join(verdict.reasons)}; {after}"
    metrics = {**verdict.metrics, "canary/promoted": float(verdict.decision == judging.PROMOTE)}
    return Outcome(verdict.decision, message, challenger.uri, slot, metrics, run_id, report, url)


def _version_of(uri: str) -> str:
    """N of `models:/<name>/N`; "" (any) for what the endpoint reports otherwise."""
    from mnistops.backends.references import MODEL_URI

    found = MODEL_URI.match(uri or "")
    return found["version"] if found and found["version"] not in (None, "latest") else ""


def _wait(cfg, backend, rules, start: float, versions: Dict[str, str]):
    """Poll the collected answers of `versions` ({champion's deployment: its version, challenger's
    deployment: its version}) until enough requests were answered by both, the time is up, or no live
    request came at all; returns (answers, None | NO_TRAFFIC)."""
    from mnistops.quality import canary as judging

    champion, challenger = versions
    deadline = start + float(cfg.canary.timeout_s)
    said = start
    while True:
        time.sleep(float(cfg.canary.poll_s))
        now = time.time()
        answers = backend.monitoring.answers(cfg, start, now, list(versions))
        if answers is None:  # a dry run: nothing is served, nothing to read
            return judging.answers_frame([]), None
        answers = judging.of_versions(answers, versions)  # not a replaced version's late failures
        both = len(judging.joined(answers, champion, challenger, rules.warmup))
        seen = judging.live_requests(answers, champion)
        if both >= rules.requests:
            return answers, None
        if seen == 0 and now - start >= float(cfg.canary.no_traffic_s):
            return answers, NO_TRAFFIC
        if now >= deadline:
            return answers, None
        if now - said >= 10:
            said = now
            print(f"  {both}/{rules.requests} requests answered by both ({seen} live requests so far)")


def _record(cfg, registry, challenger, champion_uri: str, verdict):
    """The MLflow run (metrics, decision JSON, HTML report) and the tags on the version."""
    import mlflow

    from mnistops import tracking
    from mnistops.quality.canary import report_html

    decision = {"challenger": challenger.uri, "champion": champion_uri, "decision": verdict.decision,
                "reasons": verdict.reasons, "joined_requests": verdict.joined, "images": verdict.images,
                "rules": {k: cfg.canary[k] for k in ("mirror", "requests", "warmup", "min_agreement", "max_error_rate",
                                                     "max_latency_ratio", "max_ood_increase", "confidence")},
                "checks": {c.name: {"verdict": c.verdict, "value": c.value, "threshold": c.threshold,
                                    "low": c.low, "high": c.high, "evidence": c.statement}
                           for c in verdict.checks.values()}}
    with tracking.start_run(cfg, "canary") as active:
        out = tracking.output_dir(cfg, "canary")
        report = out / "canary_report.html"
        report.write_text(report_html(verdict, champion_uri, challenger.uri))
        tracking.log_metrics(verdict.metrics)
        mlflow.log_dict(decision, "canary_decision.json")
        mlflow.log_artifact(str(report))
        tracking.set_tags({T.CANARY_DECISION: verdict.decision, T.CANARY_COMPARED_TO: champion_uri})
    checks = verdict.checks
    evidence = ", ".join(f"{c.name} {c.value:.4f}" for c in checks.values() if c.value is not None)
    registry.set_tags(challenger, {
        T.CANARY_DECISION: verdict.decision, T.CANARY_REASONS: "; ".join(verdict.reasons)[:4900],
        T.CANARY_COMPARED_TO: champion_uri, T.CANARY_EVIDENCE: f"{evidence} on {verdict.joined} requests",
        T.CANARY_RUN_ID: active.info.run_id, T.CANARY_ENV: cfg.env.name})
    return active.info.run_id, str(report)
