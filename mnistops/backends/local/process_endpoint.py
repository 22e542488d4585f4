"""The local flavour's endpoint: the env's endpoint server on this machine (server.py starts and
supervises it), driven through its admin routes. Its files live under <home>/<env>/endpoints/<name>/."""

from __future__ import annotations

from typing import List, Mapping

from mnistops.backends.base import Endpoint, EndpointState, ModelRegistry, ModelVersion, ScoringTarget
from mnistops.errors import MnistopsError


class ProcessEndpoint(Endpoint):
    def __init__(self, cfg, registry: ModelRegistry):
        from mnistops.backends.local.server import EndpointServer

        if cfg.endpoint.kind != "local":
            raise MnistopsError(f"endpoint.kind={cfg.endpoint.kind!r}: env.backend=local serves endpoint=local "
                                "(endpoint=azure_managed needs env.backend=azure)")
        self.server = EndpointServer(cfg)
        self.registry = registry
        self.name, self.env = self.server.name, cfg.env.name

    def _running(self) -> bool:
        return bool(self.server.pid() and self.server.healthy())

    def state(self) -> EndpointState:
        if not self._running():
            return EndpointState(exists=False)
        raw = self.server.state()
        previous = raw.get("previous") or {}
        return EndpointState(
            exists=True,
            deployments={d: info.get("model_uri", "") for d, info in raw.get("deployments", {}).items()},
            traffic=dict(raw.get("traffic") or {}), mirror=dict(raw.get("mirror_traffic") or {}),
            can_roll_back=any(pct > 0 for pct in (previous.get("traffic") or {}).values()))

    def ensure(self) -> bool:
        return self.server.ensure_running()

    def load(self, slot: str, version: ModelVersion) -> None:
        model_dir = self.registry.download(version, self.server.models_dir)
        self.server.admin("POST", f"/admin/deployments/{slot}", {
            "path": str(model_dir), "model_name": version.name, "version": version.version,
            "model_uri": version.uri})

    def set_traffic(self, traffic: Mapping[str, int], mirror: Mapping[str, int]) -> EndpointState:
        self.server.admin("PUT", "/admin/traffic", {"traffic": dict(traffic), "mirror_traffic": dict(mirror)})
        return self.state()

    def unload(self, slot: str) -> EndpointState:
        self.server.admin("DELETE", f"/admin/deployments/{slot}")
        return self.state()

    def rollback(self) -> EndpointState:
        self.server.admin("POST", "/admin/rollback")
        return self.state()

    def target(self) -> ScoringTarget:
        if not self.server.healthy():
            raise MnistopsError(f"endpoint {self.name} ({self.env}) is not running at {self.server.url}: "
                                "run stage=deploy first")
        return ScoringTarget(self.server.url, self.server.key(), self.name, str(self.server.key_file))

    def stop(self) -> bool:
        return self.server.stop()

    def describe(self) -> List[str]:
        st = self.server.status()
        where = f"endpoint {self.name} ({self.env})"
        if not st["running"]:
            return [f"{where}: not running (dir {self.server.dir})"]
        lines = [f"{where}: running, pid {st['pid']} (master {st['master_pid']}, workers {st['worker_pids']}), {st['url']}",
                 f"  up {st['uptime_s']:.0f}s; restarts: master {st['restarts']['master']}, workers {st['restarts']['workers']}",
                 f"  traffic {st['traffic']}  mirror {st['mirror_traffic'] or {}}  (generation {st['generation']})"]
        for name, dep in sorted(st["deployments"].items()):
            lines.append(f"  {name:6} {dep.get('model_uri')}  loaded={dep.get('loaded')}  deployed {dep.get('loaded_at')}"
                         f", served by this server since {dep.get('serving_since') or '-'}")
        keys = st["key_files"]
        lines.append(f"  scoring keys: {keys['primary']}, {keys['secondary']}   admin key: {keys['admin']}")
        lines.append(f"  log: {st['log_file']}")
        return lines

    def regenerate_key(self, which: str):
        return self.server.regenerate_key(which)

    def hints(self, version: ModelVersion) -> List[str]:
        """How to call it, printed after a deploy."""
        from mnistops.serving_client import SAMPLE_PNG

        url, key_file = self.server.url, self.server.key_file
        return [f"  scoring URL: {url}/score   (also /invocations, /v2/models/{version.name}/infer, /predict)",
                f"  key: {key_file}",
                f"  draw a digit: {url}/",
                f"  try it: curl -s {url}/predict -H \"Authorization: Bearer $(cat {key_file})\" -F file=@{SAMPLE_PNG}"]
