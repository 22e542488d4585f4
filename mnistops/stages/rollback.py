"""stage=rollback: put the endpoint back to its previous deployments and traffic."""

from __future__ import annotations

from omegaconf import DictConfig

from mnistops.errors import MnistopsError
from mnistops.stages import StageResult


def run(cfg: DictConfig) -> StageResult:
    from mnistops.backends.local.server import LocalEndpoint

    endpoint = LocalEndpoint(cfg)
    if not endpoint.healthy():
        raise MnistopsError(f"endpoint {endpoint.name} ({cfg.env.name}) is not running at {endpoint.url}")
    previous = endpoint.state().get("previous") or {}
    if not any(pct > 0 for pct in (previous.get("traffic") or {}).values()):
        raise MnistopsError(f"endpoint {endpoint.name} ({cfg.env.name}) has no previous deployment that took traffic: "
                            "nothing to roll back to")
    state = endpoint.admin("POST", "/admin/rollback")
    traffic = state.get("traffic", {})
    versions = {d: v.get("model_uri") for d, v in state.get("deployments", {}).items()}
    print(f"rolled back endpoint {endpoint.name} ({cfg.env.name}): traffic {traffic}, deployments {versions}")
    live = [versions[d] for d, pct in traffic.items() if pct > 0 and d in versions]
    return StageResult("rollback", model_uri=live[0] if len(live) == 1 else None, metrics={})
