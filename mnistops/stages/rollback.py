"""stage=rollback: put the endpoint back to its previous deployments and traffic."""

from __future__ import annotations

from omegaconf import DictConfig

from mnistops.errors import MnistopsError
from mnistops.stages import StageResult


def run(cfg: DictConfig) -> StageResult:
    from mnistops import backends

    endpoint = backends.get(cfg).endpoint()
    state = endpoint.state()
    if not state.exists:
        raise MnistopsError(f"endpoint {endpoint.name} ({cfg.env.name}) is not there: nothing to roll back")
    if not state.can_roll_back:
        raise MnistopsError(f"endpoint {endpoint.name} ({cfg.env.name}) has no previous deployment that took traffic: "
                            "nothing to roll back to")
    state = endpoint.rollback()
    print(f"rolled back endpoint {endpoint.name} ({cfg.env.name}): traffic {state.traffic}, "
          f"deployments {state.deployments}")
    live = [state.deployments[d] for d in state.live() if d in state.deployments]
    target = endpoint.target()
    return StageResult("rollback", model_uri=live[0] if len(live) == 1 else None,
                       endpoint_url=target.url if target is not None else None)
