"""The azure flavour's own config (as a ZenML flavour owns its ``config_class``): the fields only
Azure ML needs, joined to the shared schema (mnistops/config.py) under the keys users type:

    azure.*                  how stages become Azure ML entities (AzureConfig)
    env.azure.*              the env's workspace
    endpoint.<managed knob>  a managed online endpoint's instances, concurrency and probes
    compute.cluster, compute.instance_count, compute.process_count_per_instance   a compute cluster

mnistops/config.py finds this module by its place (``mnistops/backends/<flavour>/config.py``) and
reads ``FLAVOUR``; a new flavour brings its own module and edits nothing there. Only dataclasses
here: composition and ``--help`` never load the Azure SDKs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from omegaconf import MISSING

from mnistops.config import FlavourConfig


@dataclass
class AzureWorkspaceConfig:
    """The env's Azure ML workspace (env.backend=azure); conf/env/<env>.yaml fills it from environment
    variables, so no id is ever committed. Authentication is DefaultAzureCredential's chain."""

    subscription_id: Optional[str] = None
    resource_group: Optional[str] = None
    workspace: Optional[str] = None


@dataclass
class WorkspaceFields:
    """env.* (env.backend=azure)."""

    azure: AzureWorkspaceConfig = field(default_factory=AzureWorkspaceConfig)


@dataclass
class ProbeConfig:
    """An Azure ML online deployment's liveness or readiness probe (seconds)."""

    initial_delay: int = 10
    period: int = 10
    timeout: int = 2
    success_threshold: int = 1
    failure_threshold: int = 30


@dataclass
class ManagedEndpointFields:
    """endpoint.* for kind=azure_managed: a managed online endpoint (conf/endpoint/azure_managed.yaml)."""

    instance_type: str = "Standard_DS3_v2"
    instance_count: int = 1
    max_concurrent_requests_per_instance: int = 4
    max_queue_wait_ms: int = 500
    liveness_probe: ProbeConfig = field(default_factory=ProbeConfig)
    readiness_probe: ProbeConfig = field(default_factory=lambda: ProbeConfig(failure_threshold=3))


@dataclass
class ClusterFields:
    """compute.* for compute=azure_cpu_cluster|azure_gpu_cluster: an Azure ML compute cluster, created
    and sized by Terraform (infra/); null cluster: the stage runs on this machine."""

    cluster: Optional[str] = None
    instance_count: int = 1  # nodes a training job uses (Lightning num_nodes)
    process_count_per_instance: int = 1  # DDP processes per node (Lightning devices)


@dataclass
class AzureEnvironmentConfig:
    """An Azure ML environment: a base image plus a conda file written from this project's dependencies."""

    name: str = MISSING
    image: str = "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04"


@dataclass
class AzureSweepConfig:
    max_concurrent_trials: int = 4
    timeout_s: int = 86400  # the whole sweep
    trial_timeout_s: int = 7200


@dataclass
class AzureMonitoringConfig:
    emails: List[str] = field(default_factory=list)  # alert notification; empty: Azure Monitor only
    instance_type: str = "standard_e4s_v3"  # the serverless Spark pool that computes the signals
    runtime_version: str = "3.4"
    # the data asset the deployments' `ground_truth` collection appends feedback to (the true `label`
    # of scored requests by `correlation_id`); null: <azure endpoint name>-ground-truth
    ground_truth: Optional[str] = None


@dataclass
class AzureConfig:
    """env.backend=azure: how stages become Azure ML entities (the workspace itself is env.azure)."""

    dry_run: bool = False  # write every entity as `az ml ... create -f` YAML; no network, no credentials
    # set on the command line of the jobs this flavour submits: the steps run there, not submitted again
    inside_job: bool = False
    experiment_name: str = "${experiment_name}"  # jobs log into the same MLflow experiment as local runs
    stream_logs: bool = True  # follow a submitted job until it ends and exit with its status
    code_asset: str = "mnistops-code"  # the source snapshot jobs and deployments run (version: its digest)
    train_environment: AzureEnvironmentConfig = field(default_factory=lambda: AzureEnvironmentConfig(
        name="mnistops-train"))
    inference_environment: AzureEnvironmentConfig = field(default_factory=lambda: AzureEnvironmentConfig(
        name="mnistops-inference", image="mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04"))
    data_asset: str = "${data.name}-raw"  # the verified raw files, version = dataset digest
    reference_asset: str = "${data.name}-reference-features"  # training-image features: the drift baseline
    # endpoint names are unique per Azure region; null: <endpoint.name>-<env>-<6 hex of sha1(subscription/env)>,
    # the name infra/ gives the endpoint it creates (its output endpoint_name)
    endpoint_name: Optional[str] = None
    sweep: AzureSweepConfig = field(default_factory=AzureSweepConfig)
    monitoring: AzureMonitoringConfig = field(default_factory=AzureMonitoringConfig)


@dataclass
class RootFields:
    azure: AzureConfig = field(default_factory=AzureConfig)


FLAVOUR = FlavourConfig(
    name="azure",
    endpoint_kind="azure_managed",  # env.backend=azure alone serves on a managed online endpoint
    kind_defaults={"startup_timeout_s": 1800.0},  # a managed deployment takes minutes
    sections={"": RootFields, "env": WorkspaceFields, "endpoint": ManagedEndpointFields, "compute": ClusterFields},
)
