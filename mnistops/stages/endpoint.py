"""stage=endpoint: `endpoint.action=status` shows the env's endpoint (processes, restarts, traffic,
deployments, key files); `stop` stops it; `regenerate-keys` replaces the `endpoint.key` scoring key
(primary | secondary) while the other keeps working."""

from __future__ import annotations

from omegaconf import DictConfig

from mnistops.errors import MnistopsError
from mnistops.stages import StageResult

ACTIONS = ("status", "stop", "regenerate-keys")


def run(cfg: DictConfig) -> StageResult:
    from mnistops.backends.local.server import LocalEndpoint

    action = cfg.endpoint.action
    if action not in ACTIONS:
        raise MnistopsError(f"endpoint.action={action!r} is not one of {', '.join(ACTIONS)}")
    endpoint = LocalEndpoint(cfg)
    where = f"endpoint {endpoint.name} ({cfg.env.name})"
    if action == "stop":
        stopped = endpoint.stop()
        print(f"{where}: {'stopped' if stopped else 'was not running'}")
        return StageResult("endpoint", metrics={"endpoint/running": 0.0})
    if action == "regenerate-keys":
        path = endpoint.regenerate_key(cfg.endpoint.key)
        print(f"{where}: new {cfg.endpoint.key} key in {path} (the other scoring key still works)")
        return StageResult("endpoint", artifacts={"key_file": str(path)})
    st = endpoint.status()
    if not st["running"]:
        print(f"{where}: not running (dir {endpoint.dir})")
        return StageResult("endpoint", metrics={"endpoint/running": 0.0})
    print(f"{where}: running, pid {st['pid']} (master {st['master_pid']}, workers {st['worker_pids']}), {st['url']}")
    print(f"  up {st['uptime_s']:.0f}s; restarts: master {st['restarts']['master']}, workers {st['restarts']['workers']}")
    print(f"  traffic {st['traffic']}  mirror {st['mirror_traffic'] or {}}  (generation {st['generation']})")
    for name, dep in sorted(st["deployments"].items()):
        print(f"  {name:6} {dep.get('model_uri')}  loaded={dep.get('loaded')}  since {dep.get('loaded_at')}")
    keys = st["key_files"]
    print(f"  scoring keys: {keys['primary']}, {keys['secondary']}   admin key: {keys['admin']}")
    print(f"  log: {st['log_file']}")
    return StageResult("endpoint", metrics={"endpoint/running": 1.0,
                                            "endpoint/restarts": float(sum(st["restarts"].values()))},
                       artifacts={"url": endpoint.url})
