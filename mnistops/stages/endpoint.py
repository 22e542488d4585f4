"""stage=endpoint: `endpoint.action=status` shows the env's endpoint (processes, restarts, traffic,
deployments, key files); `stop` stops it; `regenerate-keys` replaces the `endpoint.key` scoring key
(primary | secondary) while the other keeps working."""

from __future__ import annotations

from omegaconf import DictConfig

from mnistops.errors import MnistopsError
from mnistops.stages import StageResult

ACTIONS = ("status", "stop", "regenerate-keys")


def run(cfg: DictConfig) -> StageResult:
    from mnistops import backends

    action = cfg.endpoint.action
    if action not in ACTIONS:
        raise MnistopsError(f"endpoint.action={action!r} is not one of {', '.join(ACTIONS)}")
    endpoint = backends.get(cfg).endpoint()
    where = f"endpoint {endpoint.name} ({cfg.env.name})"
    if action == "stop":
        stopped = endpoint.stop()
        print(f"{where}: {'stopped' if stopped else 'was not running'}")
        return StageResult("endpoint", metrics={"endpoint/running": 0.0})
    if action == "regenerate-keys":
        path = endpoint.regenerate_key(cfg.endpoint.key)
        print(f"{where}: new {cfg.endpoint.key} key in {path} (the other scoring key still works)")
        return StageResult("endpoint", artifacts={"key_file": str(path)})
    for line in endpoint.describe():
        print(line)
    running = endpoint.state().exists
    target = endpoint.target() if running else None
    return StageResult("endpoint", metrics={"endpoint/running": float(running)},
                       endpoint_url=target.url if target is not None else None,
                       artifacts={"url": target.url} if target is not None else {})
