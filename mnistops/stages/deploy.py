"""stage=deploy: serve a registered version on the env's endpoint, blue/green. The new version goes
into the deployment that takes no traffic, must load and answer a pinned request there, and only
then does traffic move (to `endpoint.traffic`, or 100 % to it). Same version again: no change."""

from __future__ import annotations

from typing import Dict, Optional

from omegaconf import DictConfig

from mnistops.errors import MnistopsError
from mnistops.stages import StageResult

SLOTS = ("blue", "green")


def percent_map(cfg: DictConfig, key: str) -> Dict[str, int]:
    """endpoint.<key> as {deployment: percent}; null means empty."""
    value = cfg.endpoint[key]
    if value is None:
        return {}
    if not isinstance(value, DictConfig) or not all(isinstance(v, int) and 0 <= v <= 100 for v in value.values()):
        raise MnistopsError(f"endpoint.{key}={value} must map deployments to integer percentages 0..100")
    return {str(k): int(v) for k, v in value.items()}


def desired_traffic(cfg: DictConfig, target: str) -> Dict[str, int]:
    traffic = percent_map(cfg, "traffic") or {target: 100}
    if sum(traffic.values()) != 100:
        raise MnistopsError(f"endpoint.traffic={traffic} must be percentages that sum to 100")
    return traffic


def pick_slot(state: dict, requested: Optional[str]) -> str:
    if requested:
        return requested
    live = {d for d, pct in state.get("traffic", {}).items() if pct > 0}
    idle = [s for s in SLOTS if s not in live]
    return idle[0] if idle else SLOTS[0]


def serving(state: dict, version_uri: str) -> Optional[str]:
    """The deployment that already holds this version, if any."""
    for name, dep in state.get("deployments", {}).items():
        if dep.get("model_uri") == version_uri:
            return name
    return None


def run(cfg: DictConfig) -> StageResult:
    from mnistops.backends.local import registry
    from mnistops.backends.local.server import LocalEndpoint
    from mnistops.serving_client import sample_request

    if cfg.endpoint.kind != "local":
        raise MnistopsError(f"endpoint.kind={cfg.endpoint.kind!r}: only 'local' endpoints are deployed by this backend")
    model = registry.resolve(cfg, cfg.deploy.model)
    endpoint = LocalEndpoint(cfg)
    model_dir = registry.fetch(model, endpoint.models_dir)
    started = endpoint.ensure_running()
    state = endpoint.state()

    slot = serving(state, model.uri)
    mirror = percent_map(cfg, "mirror_traffic")
    if slot and not cfg.deploy.deployment:
        traffic = desired_traffic(cfg, slot)
        if state.get("traffic") == traffic and state.get("mirror_traffic", {}) == mirror:
            print(f"{model.uri} already serves on {endpoint.url} ({slot}, traffic {traffic}): no change")
            return _result(endpoint, model, slot, traffic, changed=False)
    else:
        slot = pick_slot(state, cfg.deploy.deployment)
        if slot in state.get("traffic", {}) and state["traffic"][slot] > 0 and not cfg.endpoint.traffic:
            raise MnistopsError(f"deploy.deployment={slot} takes traffic now; deploy into an idle deployment")
        endpoint.admin("POST", f"/admin/deployments/{slot}", {
            "path": str(model_dir), "model_name": model.name, "version": model.version, "model_uri": model.uri})
        traffic = desired_traffic(cfg, slot)
    # the new deployment must answer a real, pinned request before any traffic moves to it
    status, body = sample_request(endpoint.url, endpoint.key(), deployment=slot)
    if status != 200:
        raise MnistopsError(f"deployment {slot} ({model.uri}) loaded but answered {status}: {body}; traffic unchanged")
    endpoint.admin("PUT", "/admin/traffic", {"traffic": traffic, "mirror_traffic": mirror})
    print(f"deployed {model.uri} to {slot} on endpoint {endpoint.name} ({cfg.env.name}){' [server started]' if started else ''}")
    return _result(endpoint, model, slot, traffic, changed=True)


def _result(endpoint, model, slot: str, traffic: Dict[str, int], changed: bool) -> StageResult:
    sample = endpoint.dir / "sample.png"
    if not sample.is_file():
        from mnistops.data import mirrors
        from mnistops.data.idx import read_idx
        from mnistops.serving_client import write_sample_png

        write_sample_png(read_idx(mirrors.fetch(endpoint.cfg)["test_images"])[0], sample)
    print(f"  traffic: {traffic}")
    print(f"  scoring URL: {endpoint.url}/score   (also /invocations, /v2/models/{model.name}/infer, /predict)")
    print(f"  key: {endpoint.key_file}")
    print(f"  draw a digit: {endpoint.url}/")
    print(f"  try it: curl -s {endpoint.url}/predict -H \"Authorization: Bearer $(cat {endpoint.key_file})\" "
          f"-F file=@{sample}")
    return StageResult("deploy", model_uri=model.uri, metrics={"deploy/changed": float(changed)},
                       artifacts={"scoring_url": f"{endpoint.url}/score", "key_file": str(endpoint.key_file)})
