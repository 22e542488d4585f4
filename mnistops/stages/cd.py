"""stage=cd: deploy the env's champion, smoke-test it through the endpoint, record the outcome on the
version (promotion out of this env needs `passed`), and roll back automatically when the smoke test
fails (the command still fails, with the smoke report's reason). With `cd.canary` (prod's default)
the version is first judged on mirrored live traffic (stage=canary) and traffic moves only on its
promotion."""

from __future__ import annotations

import copy

from omegaconf import DictConfig

from mnistops import tags as T
from mnistops.errors import Held, MnistopsError
from mnistops.stages import StageResult, run_step


def _canary_first(cfg: DictConfig):
    """cd.canary: the champion version is judged on mirrored live traffic before traffic moves. A
    promotion counts as the deploy; a rejection fails (exit 2) and a hold stops (exit 3) with the
    traffic unchanged; without live traffic (or nothing live yet) the deploy and smoke test decide."""
    from mnistops.quality.canary import HOLD, PROMOTE, REJECT
    from mnistops.stages import canary

    out = canary.analyse(cfg)
    if out.decision == REJECT:
        raise MnistopsError(out.message)
    if out.decision == HOLD:
        raise Held(out.message)
    if out.decision == PROMOTE:
        return StageResult("deploy", run_id=out.run_id, model_uri=out.model_uri, endpoint_url=out.endpoint_url,
                           metrics={"deploy/changed": 1.0, **(out.metrics or {})},
                           artifacts={"canary_report": out.report} if out.report else {})
    print(f"{out.message}; the deploy and smoke test decide")
    return None


def run(cfg: DictConfig) -> StageResult:
    from mnistops import backends

    cfg = copy.deepcopy(cfg)
    cfg.deploy.model = T.model_uri(cfg.env.model_name, T.CHAMPION)
    registry = backends.get(cfg).registry()
    deployed = _canary_first(cfg) if cfg.cd.canary else None
    if deployed is None:
        deployed = run_step("deploy", cfg)
    version = registry.resolve(deployed.model_uri)
    try:
        smoke = run_step("smoke", cfg)
    except MnistopsError as err:
        registry.set_tags(version, {T.smoke(cfg.env.name): "failed"})
        if deployed.metrics.get("deploy/changed"):
            run_step("rollback", cfg)
            raise MnistopsError(f"{err}; rolled back the endpoint to its previous deployment") from err
        raise
    registry.set_tags(version, {T.smoke(cfg.env.name): "passed"})
    return StageResult("cd", run_id=smoke.run_id, model_uri=deployed.model_uri, endpoint_url=smoke.endpoint_url,
                       metrics={**smoke.metrics}, artifacts={**deployed.artifacts, **smoke.artifacts})
