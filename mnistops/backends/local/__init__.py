"""The local flavour (`env.backend=local`, the default): everything on this machine. The registry is
the env's MLflow store (sqlite, or the tracking server in `env.tracking_uri`); the endpoint is a
supervised server process; jobs run in this process; `stage=monitor` computes the signals here."""

from __future__ import annotations

from typing import Optional

from mnistops.backends.base import Backend, JobRunner, ModelRegistry, MonitoringSchedule


class HereRunner(JobRunner):
    remote = False


class MonitorHere(MonitoringSchedule):
    remote = False


class LocalBackend(Backend):
    name = "local"

    def registry(self, env: Optional[str] = None) -> ModelRegistry:
        from mnistops import tracking
        from mnistops.backends.local.mlflow_registry import MlflowRegistry
        from mnistops.config import other_env

        cfg = self.cfg
        if env is None or env == cfg.env.name:
            return MlflowRegistry(cfg.env.name, tracking.tracking_uri(cfg))
        if env == cfg.promote.source_env and cfg.promote.source_tracking_uri:
            return MlflowRegistry(env, cfg.promote.source_tracking_uri)
        return MlflowRegistry(env, tracking.store_uri(cfg, other_env(cfg, env)))

    def endpoint(self):
        from mnistops.backends.local.process_endpoint import ProcessEndpoint

        return ProcessEndpoint(self.cfg, self.registry())

    @property
    def jobs(self) -> JobRunner:
        return HereRunner()

    @property
    def monitoring(self) -> MonitoringSchedule:
        return MonitorHere()
