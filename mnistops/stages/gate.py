"""stage=gate: champion/challenger. The candidate becomes `champion` only if its accuracy is not
below the champion's by more than gate.tolerance and no class's recall drops by more than
gate.class_tolerance (the first champion needs gate.min_accuracy). Both are measured now, on the
official test set, from their registered files. The decision and its reasons go on the candidate
version (tags) and into an MLflow run; a refusal exits non-zero. Nothing forces a pass."""

from __future__ import annotations

import json

from omegaconf import DictConfig

from mnistops import tags as T
from mnistops.errors import MnistopsError
from mnistops.stages import StageResult


def run(cfg: DictConfig) -> StageResult:
    import mlflow

    from mnistops import backends, layout, tracking
    from mnistops.quality import model_quality

    registry = backends.get(cfg).registry()
    candidate = registry.resolve(cfg.gate.candidate, "gate.candidate")
    champion = registry.get(candidate.name, T.CHAMPION)
    if champion is not None and champion.version == candidate.version:
        print(f"gate: {candidate.uri} is already the champion")
        return StageResult("gate", model_uri=candidate.uri, metrics={"gate/approved": 1.0})

    models = layout.models_cache(cfg)
    cand_q = model_quality.measure(cfg, registry.download(candidate, models), candidate.uri)
    champ_q = model_quality.measure(cfg, registry.download(champion, models), champion.uri) if champion else None
    reasons = model_quality.compare(cand_q, champ_q, cfg.gate)
    approved = not reasons
    decision = {
        "candidate": candidate.uri, "champion": champion.uri if champion else None, "approved": approved,
        "reasons": reasons or ["not worse than the champion" if champion else "meets gate.min_accuracy"],
        "tolerance": cfg.gate.tolerance, "class_tolerance": cfg.gate.class_tolerance,
        "min_accuracy": cfg.gate.min_accuracy, "candidate_quality": cand_q, "champion_quality": champ_q,
    }
    verdict = T.APPROVED if approved else T.REJECTED
    with tracking.start_run(cfg, "gate") as active:
        metrics = {"gate/approved": float(approved), **model_quality.summary_metrics("candidate", cand_q)}
        if champ_q:
            metrics.update(model_quality.summary_metrics("champion", champ_q))
        tracking.log_metrics(metrics)
        mlflow.log_dict(decision, "gate_decision.json")
        tracking.set_tags({T.GATE_CANDIDATE: candidate.uri, T.GATE_DECISION: verdict})
    registry.set_tags(candidate, {
        T.GATE_DECISION: verdict, T.GATE_REASONS: "; ".join(decision["reasons"]),
        T.GATE_COMPARED_TO: champion.uri if champion else "none (first champion)",
        T.GATE_ACCURACY: f"{cand_q['accuracy']:.6f}", T.GATE_RUN_ID: active.info.run_id, T.GATE_ENV: cfg.env.name})
    against = f"champion {champion.uri} ({champ_q['accuracy']:.4f})" if champion else "no champion yet"
    if not approved:
        raise MnistopsError(f"gate refused {candidate.uri} (accuracy {cand_q['accuracy']:.4f}, against {against}): "
                            + "; ".join(reasons))
    if champion is not None:
        registry.set_tags(candidate, {T.PREVIOUS_CHAMPION: champion.version})
    registry.set_alias(candidate.name, T.CHAMPION, candidate.version)
    print(f"gate approved {candidate.uri} (accuracy {cand_q['accuracy']:.4f}, against {against}): "
          f"it is now @{T.CHAMPION}")
    print(f"  decision: {json.dumps(decision['reasons'])}")
    return StageResult("gate", run_id=active.info.run_id, model_uri=candidate.uri, metrics=metrics)
