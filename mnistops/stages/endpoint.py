"""stage=endpoint: `endpoint.action=status` shows the env's endpoint; `stop` stops it;
`regenerate-keys` rotates one scoring key (`endpoint.key`) while the other keeps working."""

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
    if action == "stop":
        stopped = endpoint.stop()
        print(f"endpoint {endpoint.name} ({cfg.env.name}): {'stopped' if stopped else 'was not running'}")
        return StageResult("endpoint", metrics={"endpoint/running": 0.0})
    if action == "regenerate-keys":
        which = str(cfg.endpoint.get("key", "primary"))
        where = endpoint.regenerate_key(which)
        print(f"endpoint {endpoint.name} ({cfg.env.name}): new {which} key in {where}; the other key still works")
        return StageResult("endpoint", metrics={"endpoint/running": 1.0})
    for line in endpoint.describe():
        print(line)
    running = endpoint.state().exists
    target = endpoint.target() if running else None
    return StageResult("endpoint", metrics={"endpoint/running": float(running)},
                       endpoint_url=target.url if target is not None else None,
                       artifacts={"url": target.url} if target is not None else {})
