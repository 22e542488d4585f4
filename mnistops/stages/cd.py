"""stage=cd: deploy the env's champion, smoke-test it through the endpoint, and roll back
automatically when the smoke test fails (the command still fails, with the smoke report's reason)."""

from __future__ import annotations

import copy

from omegaconf import DictConfig

from mnistops.errors import MnistopsError
from mnistops.stages import StageResult, run_step


def record_smoke(cfg: DictConfig, model_uri: str, outcome: str) -> None:
    """Tag the version with this env's smoke outcome: promotion out of this env requires `passed`."""
    from mlflow.tracking import MlflowClient

    name, version = model_uri[len("models:/"):].split("/")
    MlflowClient().set_model_version_tag(name, version, f"mnistops.smoke.{cfg.env.name}", outcome)


def run(cfg: DictConfig) -> StageResult:
    cfg = copy.deepcopy(cfg)
    cfg.deploy.model = f"models:/{cfg.env.model_name}@champion"
    deployed = run_step("deploy", cfg)
    try:
        smoke = run_step("smoke", cfg)
        record_smoke(cfg, deployed.model_uri, "passed")
    except MnistopsError as err:
        record_smoke(cfg, deployed.model_uri, "failed")
        if deployed.metrics.get("deploy/changed"):
            run_step("rollback", cfg)
            raise MnistopsError(f"{err}; rolled back the endpoint to its previous deployment") from err
        raise
    return StageResult("cd", run_id=smoke.run_id, model_uri=deployed.model_uri,
                       metrics={**smoke.metrics}, artifacts={**deployed.artifacts, **smoke.artifacts})
