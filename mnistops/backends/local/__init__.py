"""The local flavour (`env.backend=local`, the default): everything on this machine. The registry is
the env's MLflow store (sqlite, or the tracking server in `env.tracking_uri`); the endpoint is a
supervised server process; jobs run in this process; `stage=monitor` computes the signals here;
`stage=batch` scores on this machine's cores (batch_scoring.py)."""

from __future__ import annotations

from typing import Optional

from mnistops.backends.base import Backend, BatchScoring, JobRunner, ModelRegistry, MonitoringSchedule
from mnistops.errors import MnistopsError


class HereRunner(JobRunner):
    remote = False


class MonitoringHere(MonitoringSchedule):
    """The endpoint's data collector writes under <home>/<env>/monitoring/<endpoint>/ on this host."""

    remote = False

    def read_window(self, cfg, start: float, end: float, stats, id_prefix=None):
        from mnistops import layout
        from mnistops.monitoring import request_log_reader

        return request_log_reader.load_window(layout.endpoint_monitoring_dir(cfg), start, end, stats, id_prefix)

    def answers(self, cfg, start: float, end: float, deployments):
        """The collector's records of `deployments`, mirrored copies included (route "mirror")."""
        from mnistops import layout
        from mnistops.monitoring import request_log_reader
        from mnistops.quality import canary

        where = layout.endpoint_monitoring_dir(cfg)
        feedback = request_log_reader.read_feedback(where)
        wanted = set(deployments)
        return canary.answers_frame(canary.record_answer(rec, feedback) for rec in
                                    request_log_reader.iter_records(where, start, end, mirrored=True)
                                    if rec.get("deployment") in wanted)


class LocalBackend(Backend):
    name = "local"

    def registry(self, env: Optional[str] = None) -> ModelRegistry:
        from mnistops import layout, tracking
        from mnistops.backends.local.mlflow_registry import MlflowRegistry
        from mnistops.config import other_env

        cfg = self.cfg
        if env is None or env == cfg.env.name:
            return MlflowRegistry(cfg.env.name, tracking.tracking_uri(cfg))
        if env == cfg.promote.source_env and cfg.promote.source_tracking_uri:
            return MlflowRegistry(env, cfg.promote.source_tracking_uri)
        uri = tracking.store_uri(cfg, other_env(cfg, env))
        if uri.startswith("sqlite:") and not layout.tracking_db(cfg, env).is_file():
            raise MnistopsError(f"env {env!r} has no store at {layout.tracking_db(cfg, env)} (set "
                                f"MNISTOPS_{env.upper()}_TRACKING_URI to its tracking server)")
        return MlflowRegistry(env, uri)

    def endpoint(self):
        from mnistops.backends.local.process_endpoint import ProcessEndpoint

        return ProcessEndpoint(self.cfg, self.registry())

    @property
    def jobs(self) -> JobRunner:
        return HereRunner()

    @property
    def monitoring(self) -> MonitoringSchedule:
        return MonitoringHere()

    @property
    def batch(self) -> BatchScoring:
        from mnistops.backends.local.batch_scoring import ScoreHere

        return ScoreHere(self.cfg, self.registry())
