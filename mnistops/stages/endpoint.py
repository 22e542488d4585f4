"""stage=endpoint: `endpoint.action=status` shows the env's endpoint; `endpoint.action=stop` stops it."""

from __future__ import annotations

from omegaconf import DictConfig

from mnistops.errors import MnistopsError
from mnistops.stages import StageResult

ACTIONS = ("status", "stop")


def run(cfg: DictConfig) -> StageResult:
    from mnistops.backends.local.server import LocalEndpoint

    action = cfg.endpoint.action
    if action not in ACTIONS:
        raise MnistopsError(f"endpoint.action={action!r} is not one of {', '.join(ACTIONS)}")
    endpoint = LocalEndpoint(cfg)
    if action == "stop":
        stopped = endpoint.stop()
        print(f"endpoint {endpoint.name} ({cfg.env.name}): {'stopped' if stopped else 'was not running'}")
        return StageResult("endpoint", metrics={"endpoint/running": 0.0})
    pid = endpoint.pid()
    if not (pid and endpoint.healthy()):
        print(f"endpoint {endpoint.name} ({cfg.env.name}): not running (dir {endpoint.dir})")
        return StageResult("endpoint", metrics={"endpoint/running": 0.0})
    state = endpoint.state()
    print(f"endpoint {endpoint.name} ({cfg.env.name}): running, pid {pid}, {endpoint.url}")
    print(f"  traffic {state.get('traffic')}  mirror {state.get('mirror_traffic') or {}}")
    for name, dep in sorted(state.get("deployments", {}).items()):
        print(f"  {name:6} {dep.get('model_uri')}  loaded={dep.get('loaded')}  since {dep.get('loaded_at')}")
    print(f"  key: {endpoint.key_file}   log: {endpoint.log_file}")
    return StageResult("endpoint", metrics={"endpoint/running": 1.0}, artifacts={"url": endpoint.url})
