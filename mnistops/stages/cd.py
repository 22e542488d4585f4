"""stage=cd: deploy the env's champion, smoke-test it through the endpoint, record the outcome on the
version (promotion out of this env needs `passed`), and roll back automatically when the smoke test
fails (the command still fails, with the smoke report's reason)."""

from __future__ import annotations

import copy

from omegaconf import DictConfig

from mnistops import tags as T
from mnistops.errors import MnistopsError
from mnistops.stages import StageResult, run_step


def run(cfg: DictConfig) -> StageResult:
    from mnistops import backends

    cfg = copy.deepcopy(cfg)
    cfg.deploy.model = f"models:/{cfg.env.model_name}@champion"
    registry = backends.get(cfg).registry()
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
