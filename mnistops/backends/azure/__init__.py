"""The azure flavour (`env.backend=azure`): the flavour interfaces (backends/base.py) on an Azure ML
workspace through azure-ai-ml v2. A name, its config (`env.azure.*` for the workspace, `azure.*`
for the rest) and this implementation; the SDK is imported inside its modules only, so importing
this package is free.

    registry     model_registry.py      model assets; aliases kept as tags; register from a run's files
    endpoint     managed_endpoint.py    a managed online endpoint, deployments = slots, traffic, rollback
    jobs         job_runner.py          compute steps as ONE command (or sweep) job running this entrypoint
    monitoring   monitoring_schedule.py a model-monitoring schedule that follows the live deployment, and
                 data_collector_reader.py what the deployments' data collector wrote, read back for stage=monitor
    provisioner  provisioner.py         environments and data assets (clusters are Terraform's)
    batch        batch_scoring.py       a batch endpoint + model deployment on the cluster (batch_specs.py,
                 batch_score.py: the node's scoring script), its job followed, its rows fetched
    workspace.py (settings, credential, MLClient, the test seam), naming.py (unique names),
    render.py (azure.dry_run=true: every entity as `az ml ... create -f` YAML), the SDK entities
    (command_job, sweep_job, online_specs, monitoring_specs, environments, data_assets, code_snapshot,
    compute), score.py (the online deployments' scoring script) and data_collector_rows.py (the rows it
    hands the data collector, which data_collector_reader.py reads back).

Inside a job it submitted (`azure.inside_job=true`) the flavour is the same, except that its job
runner is not remote: the steps run there, against the workspace's MLflow and registry.
"""

from __future__ import annotations

import os
from typing import Optional

from mnistops.backends.base import (Backend, BatchScoring, Endpoint, JobRunner, ModelRegistry, MonitoringSchedule,
                                    Provisioner)
from mnistops.errors import MnistopsError


class AzureBackend(Backend):
    name = "azure"

    def __init__(self, cfg):
        from mnistops.backends.azure.workspace import Connection, quiet_sdk

        quiet_sdk()
        super().__init__(cfg)
        self.connection = Connection(cfg)
        self._endpoint_name: Optional[str] = None

    @property
    def dry_run(self) -> bool:
        return bool(self.cfg.azure.dry_run)

    def endpoint_name(self) -> str:
        """azure.endpoint_name, else <endpoint.name>-<env>-<suffix of the subscription> (naming.py)."""
        from mnistops.backends.azure import naming

        if self._endpoint_name is None:
            subscription = None
            if not self.cfg.azure.endpoint_name and not self.dry_run:
                subscription = self.connection.workspace.subscription_id
            elif not self.cfg.azure.endpoint_name:  # a dry run: the real name when the setting is there
                subscription = self.cfg.env.azure.subscription_id
                if not subscription:
                    print("  (dry run without env.azure.subscription_id: the endpoint's name lacks its unique suffix)")
            self._endpoint_name = naming.endpoint_name(self.cfg, subscription)
        return self._endpoint_name

    def _mlflow_uri(self, env: Optional[str] = None):
        """The MLflow store that holds a registry's run files: this env's tracking store (the one
        the stages write to), or another env's workspace MLflow (promote.source_tracking_uri first)."""
        from mnistops import tracking

        cfg = self.cfg
        if env is None or env == cfg.env.name:
            return lambda: cfg.env.tracking_uri or self.tracking_uri() or tracking.tracking_uri(cfg)
        from mnistops.backends.azure.workspace import Connection

        if env == cfg.promote.source_env and cfg.promote.source_tracking_uri:
            return lambda: str(cfg.promote.source_tracking_uri)
        return Connection(cfg, env).mlflow_tracking_uri

    def registry(self, env: Optional[str] = None) -> ModelRegistry:
        from mnistops.backends.azure.model_registry import AzureModelRegistry, PreviewRegistry
        from mnistops.backends.azure.workspace import Connection

        name = env or self.cfg.env.name
        if self.dry_run:
            return PreviewRegistry(self.cfg, name)
        connection = self.connection if name == self.cfg.env.name else Connection(self.cfg, name)
        return AzureModelRegistry(name, connection, self._mlflow_uri(name))

    def endpoint(self) -> Endpoint:
        from mnistops.backends.azure.managed_endpoint import ManagedEndpoint

        return ManagedEndpoint(self.cfg, self.connection, self.endpoint_name(), self.monitoring)

    @property
    def jobs(self) -> JobRunner:
        from mnistops.backends.azure.job_runner import AzureJobRunner

        return AzureJobRunner(self.cfg, self.connection)

    @property
    def monitoring(self) -> MonitoringSchedule:
        from mnistops.backends.azure.monitoring_schedule import AzureMonitoringSchedule

        return AzureMonitoringSchedule(self.cfg, self.connection, self.endpoint_name())

    @property
    def batch(self) -> BatchScoring:
        from mnistops.backends.azure.batch_scoring import AzureBatchScoring

        return AzureBatchScoring(self.cfg, self.connection)

    @property
    def provisioner(self) -> Provisioner:
        from mnistops.backends.azure.provisioner import AzureProvisioner

        return AzureProvisioner(self.connection)

    def tracking_uri(self, env: Optional[str] = None) -> Optional[str]:
        """Runs go to the workspace's MLflow: inside a job the URI Azure ML sets (MLFLOW_TRACKING_URI),
        elsewhere the one the workspace reports; a dry run keeps the env's local store."""
        if self.dry_run:
            return None
        if env is not None and env != self.cfg.env.name:  # another env's workspace (a hand-over)
            from mnistops.backends.azure.workspace import Connection

            return Connection(self.cfg, env).mlflow_tracking_uri()
        if self.cfg.azure.inside_job:
            uri = os.environ.get("MLFLOW_TRACKING_URI")
            if not uri:
                raise MnistopsError("azure.inside_job=true but MLFLOW_TRACKING_URI is not set: Azure ML sets it in "
                                    "every job (this is not running in one)")
            if uri.startswith("azureml:"):
                require_azureml_mlflow(inside_job=True)
            return uri
        uri = self.connection.mlflow_tracking_uri()
        if uri.startswith("azureml:"):
            require_azureml_mlflow()
        return uri


def require_azureml_mlflow(inside_job: bool = False) -> None:
    """One line instead of MLflow's registry traceback deep inside a step (KeyError: 'azureml')."""
    import importlib.util

    try:
        found = importlib.util.find_spec("azureml.mlflow") is not None
    except ModuleNotFoundError:
        found = False
    if found:
        return
    if inside_job:
        raise MnistopsError("this Azure ML job's environment has no azureml-mlflow, so MLflow cannot reach the "
                            "workspace (MLFLOW_TRACKING_URI is azureml://...): the training environment is built from "
                            "the azure extra of pyproject.toml, which must list azureml-mlflow; run stage=provision "
                            "again after adding it")
    raise MnistopsError("env.backend=azure keeps runs in the workspace's MLflow (azureml://...), which MLflow "
                        "reaches through the azureml-mlflow plugin of the azure extra: pip install -e '.[azure]' "
                        "(or set env.tracking_uri to another MLflow store)")
