"""stage=deploy: serve a registered version on the env's endpoint, blue/green, on every flavour. The
new version goes into the deployment that takes no traffic, must load and answer a real request
pinned to it there, and only then does traffic move (to `endpoint.traffic`, or 100 % to it), with
`endpoint.mirror_traffic`. The same version again with the same traffic: no change."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

from omegaconf import DictConfig

from mnistops.errors import MnistopsError
from mnistops.serving import traffic_split
from mnistops.stages import StageResult

SLOTS = ("blue", "green")


def percent_map(cfg: DictConfig, key: str) -> Dict[str, int]:
    """endpoint.<key> as {deployment: percent} (``traffic_split.percentages``); null means empty."""
    value = cfg.endpoint[key]
    if value is None:
        return {}
    try:
        return traffic_split.percentages(value, f"endpoint.{key}")
    except traffic_split.SplitError as exc:
        raise MnistopsError(str(exc)) from None


def desired_traffic(cfg: DictConfig, target: str) -> Dict[str, int]:
    """endpoint.traffic (else 100 % to `target`), checked with endpoint.mirror_traffic by the rule
    the admin route uses (``traffic_split``)."""
    traffic = percent_map(cfg, "traffic") or {target: 100}
    try:
        traffic_split.split(traffic, percent_map(cfg, "mirror_traffic"), prefix="endpoint.")
    except traffic_split.SplitError as exc:
        raise MnistopsError(str(exc)) from None
    return traffic


def pick_slot(live: list, requested: Optional[str]) -> str:
    """deploy.deployment, else the first slot taking no live traffic."""
    if requested:
        return requested
    idle = [s for s in SLOTS if s not in live]
    return idle[0] if idle else SLOTS[0]


def run(cfg: DictConfig) -> StageResult:
    from mnistops import backends
    from mnistops.serving_client import sample_request

    backend = backends.get(cfg)
    model = backend.registry().resolve(cfg.deploy.model, "deploy.model")
    endpoint = backend.endpoint()
    mirror = percent_map(cfg, "mirror_traffic")
    started = endpoint.ensure()
    state = endpoint.state()

    slot = state.serving(model.uri)
    if slot and not cfg.deploy.deployment:
        traffic = desired_traffic(cfg, slot)
        if state.traffic == traffic and state.mirror == mirror:
            if started:  # a restart is news: the server was down and now serves its state again
                print(f"{model.uri} serves again on endpoint {endpoint.name} ({cfg.env.name}, {slot}, "
                      f"traffic {traffic}) [endpoint started]")
            else:
                print(f"{model.uri} already serves on endpoint {endpoint.name} ({cfg.env.name}, {slot}, "
                      f"traffic {traffic}): no change")
            return _result(cfg, endpoint, model, changed=False)
    else:
        slot = pick_slot(state.live(), cfg.deploy.deployment)
        if state.traffic.get(slot, 0) > 0 and not cfg.endpoint.traffic:
            raise MnistopsError(f"deploy.deployment={slot} takes traffic now; deploy into an idle deployment")
        endpoint.load(slot, model)
        traffic = desired_traffic(cfg, slot)
    # the deployment must answer a real request pinned to it before any traffic moves to it
    target = endpoint.target()
    if target is not None:
        status, body = sample_request(target.url, target.key, deployment=slot)
        if status != 200:
            raise MnistopsError(f"deployment {slot} ({model.uri}) loaded but answered {status}: {body}; "
                                "traffic unchanged")
    moved = endpoint.set_traffic(traffic, mirror)
    print(f"deployed {model.uri} to {slot} on endpoint {endpoint.name} ({cfg.env.name})"
          f"{' [endpoint started]' if started else ''}")
    print(f"  traffic: {traffic}" + (f"  mirror: {mirror}" if mirror else ""))
    return _result(cfg, endpoint, model, changed=True, previews=moved.previews)


def _result(cfg: DictConfig, endpoint, model, changed: bool, previews=()) -> StageResult:
    for line in endpoint.hints(model):
        print(line)
    target = endpoint.target()
    artifacts = {"scoring_url": f"{target.url}/score"} if target is not None else {}
    if target is not None and target.key_file:
        artifacts["key_file"] = target.key_file
    artifacts.update({Path(p).stem: p for p in previews})  # a dry run's specs, e.g. online-endpoint-mnist-dev
    return StageResult("deploy", model_uri=model.uri, metrics={"deploy/changed": float(changed)},
                       artifacts=artifacts, endpoint_url=target.url if target is not None else None)
