"""Monitoring on Azure, in two places that read the same collected files:

- the platform: `stage=monitor` creates or updates the model-monitoring schedule (monitoring_specs.py)
  on the endpoint's live deployment, after making sure the ground-truth asset it joins feedback
  from exists; Azure then computes its signals on `monitor.schedule` on serverless Spark. The
  endpoint calls `follow` after every traffic change, so the schedule keeps watching the deployment
  that takes the traffic after a blue/green swap or a rollback, with its thresholds unchanged;
- here: `collected` reads what the deployments' data collector wrote for the endpoint in a window
  (data_collector_reader.py: every deployment, ground truth joined), so `stage=monitor` computes every
  signal the local monitor does, raises its alerts and hands the feedback-labelled images over."""

from __future__ import annotations

from omegaconf import DictConfig

from mnistops.backends.base import EndpointState, MonitoringSchedule
from mnistops.errors import MnistopsError
from mnistops.result import StageResult


class AzureMonitoringSchedule(MonitoringSchedule):
    remote = True

    def __init__(self, cfg: DictConfig, connection, endpoint_name: str):
        self.cfg, self.connection, self.endpoint = cfg, connection, endpoint_name

    def _live(self, state: EndpointState) -> str:
        live = state.live()
        if not state.exists or not live:
            raise MnistopsError(f"endpoint {self.endpoint} ({self.cfg.env.name}) has no deployment taking traffic: "
                                "run stage=cd first, then stage=monitor")
        return live[0]

    def endpoint_name(self, cfg: DictConfig) -> str:
        return self.endpoint  # the managed endpoint (azure.endpoint_name), not the local endpoint.name

    def read_window(self, cfg: DictConfig, start: float, end: float, stats, id_prefix=None):
        """What every deployment of the endpoint collected in [start, end], from the workspace's blob
        datastore; None in a dry run (nothing is read)."""
        if cfg.azure.dry_run:
            return None
        from mnistops.backends.azure.data_collector_reader import CollectorFiles, read_window

        return read_window(CollectorFiles.of_workspace(self.connection), self.endpoint, start, end, stats, id_prefix)

    def answers(self, cfg: DictConfig, start: float, end: float, deployments):
        """Each deployment's answers from its collected model_outputs (Azure discards a mirrored
        deployment's responses, its score.py collects them); None in a dry run."""
        if cfg.azure.dry_run:
            return None
        from mnistops.backends.azure.data_collector_reader import CollectorFiles, read_answers
        from mnistops.monitoring.request_log_reader import ReadStats

        return read_answers(CollectorFiles.of_workspace(self.connection), self.endpoint, start, end, deployments,
                            ReadStats())

    def apply(self, cfg: DictConfig) -> StageResult:
        from mnistops.backends.azure import monitoring_specs, naming, render

        truth = naming.ground_truth_asset(cfg, self.endpoint)
        if cfg.azure.dry_run:  # the deployment endpoint.traffic would make live, else the first slot
            traffic = dict(cfg.endpoint.traffic or {})
            live = max(traffic, key=lambda d: traffic[d]) if traffic else (cfg.deploy.deployment or "blue")
            (path,) = render.emit(cfg, [monitoring_specs.schedule(cfg, self.endpoint, live, truth)])
            return StageResult("monitor", artifacts={"schedule": str(path)})
        from mnistops.backends.azure.managed_endpoint import ManagedEndpoint

        live = self._live(ManagedEndpoint(cfg, self.connection, self.endpoint, self).state())
        self._ensure_ground_truth(truth)
        ml = self.connection.ml
        created = ml.schedules.begin_create_or_update(monitoring_specs.schedule(cfg, self.endpoint, live, truth)).result()
        print(f"monitoring schedule {created.name} on {self.endpoint}:{live} ({cfg.monitor.schedule}, window "
              f"{cfg.monitor.window}): data_drift, prediction_drift, data_quality, model_performance (ground truth "
              f"{truth}); not on Azure: {', '.join(monitoring_specs.NOT_ON_AZURE)}")
        return StageResult("monitor", artifacts={"schedule": created.name, "deployment": live})

    def _ensure_ground_truth(self, name: str) -> None:
        """The asset the deployments' ground_truth collection appends to, registered if missing (a
        schedule may not refer to an asset that is not there yet)."""
        from azure.core.exceptions import ResourceNotFoundError

        from mnistops.backends.azure import data_assets

        ml = self.connection.ml
        try:
            ml.data.get(name, version=data_assets.GROUND_TRUTH_VERSION)
        except ResourceNotFoundError:
            ml.data.create_or_update(data_assets.ground_truth(name, self.endpoint))
            print(f"data asset {name}:{data_assets.GROUND_TRUTH_VERSION}: created "
                  f"({data_assets.ground_truth_path(self.endpoint)})")

    def follow(self, endpoint_state: EndpointState) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        from mnistops.backends.azure import monitoring_specs

        live = endpoint_state.live()
        if self.cfg.azure.dry_run or not live:
            return
        ml = self.connection.ml
        try:
            existing = ml.schedules.get(monitoring_specs.schedule_name(self.endpoint))
        except ResourceNotFoundError:
            return
        if monitoring_specs.followed_deployment(existing) == live[0]:
            return
        monitoring_specs.follow_deployment(existing, self.endpoint, live[0])
        ml.schedules.begin_create_or_update(existing).result()
        print(f"  monitoring schedule {existing.name} now watches {self.endpoint}:{live[0]}")
