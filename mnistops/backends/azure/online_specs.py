"""The SDK entities of a managed online endpoint (key auth) and its blue/green deployments: the
registered model, the pinned inference environment, score.py from the source snapshot, instance
type/count, request settings, liveness/readiness probes and the data collector.

The collector has three collections (data_collector_rows.py has their columns): `model_inputs` and
`model_outputs` (per deployment, what the monitoring schedule compares and stage=monitor reads) and
`ground_truth`, the feedback score.py receives, which every deployment of the endpoint appends to
one asset (azure.monitoring.ground_truth) so the true labels outlive a blue/green swap. The files
roll hourly (<collection>/YYYY/MM/DD/HH/*.jsonl), the layout stage=monitor reads a window from.
The SDK gives every collection the one sampling rate (endpoint.collect.sampling_rate): feedback is
sampled at that rate too."""

from __future__ import annotations

from omegaconf import DictConfig

from mnistops import tags as T
from mnistops.backends.azure import data_assets
from mnistops.backends.azure.data_collector_rows import GROUND_TRUTH, INPUTS, OUTPUTS

ROLLING_RATE = "Hour"  # the collector's folders: .../YYYY/MM/DD/HH/ (data_collector_reader.py reads them)


def endpoint(cfg: DictConfig, name: str):
    """A new endpoint, taking no traffic yet (deploy moves traffic once a deployment answers)."""
    from azure.ai.ml.entities import ManagedOnlineEndpoint

    return ManagedOnlineEndpoint(name=name, auth_mode="key", tags={T.ENV: cfg.env.name, T.ENDPOINT: cfg.endpoint.name},
                                 description=f"mnistops {cfg.endpoint.name} ({cfg.env.name})")


def probe(p: DictConfig):
    from azure.ai.ml.entities import ProbeSettings

    return ProbeSettings(initial_delay=p.initial_delay, period=p.period, timeout=p.timeout,
                         success_threshold=p.success_threshold, failure_threshold=p.failure_threshold)


def collector(cfg: DictConfig, endpoint_name: str, ground_truth: str):
    from azure.ai.ml.entities import DataCollector, DeploymentCollection
    from azure.ai.ml.entities._deployment.data_asset import DataAsset

    if not cfg.endpoint.collect.enabled:
        return None
    collections = {c: DeploymentCollection(enabled="true") for c in (INPUTS, OUTPUTS)}
    collections[GROUND_TRUTH] = DeploymentCollection(enabled="true", data=DataAsset(
        name=ground_truth, version=data_assets.GROUND_TRUTH_VERSION,  # a string: the SDK registers it as a Data version
        path=data_assets.ground_truth_path(endpoint_name)))
    return DataCollector(collections=collections, sampling_rate=cfg.endpoint.collect.sampling_rate,
                         rolling_rate=ROLLING_RATE)


def deployment(cfg: DictConfig, endpoint_name: str, slot: str, model_name: str, model_version: str, env_ref: str,
               code: str, ground_truth: str):
    from azure.ai.ml.entities import CodeConfiguration, ManagedOnlineDeployment, OnlineRequestSettings

    from mnistops.backends.azure.code_snapshot import SCORING_SCRIPT

    ep = cfg.endpoint
    uri = f"models:/{model_name}/{model_version}"
    return ManagedOnlineDeployment(
        name=slot, endpoint_name=endpoint_name, model=f"azureml:{model_name}:{model_version}",
        environment=env_ref, code_configuration=CodeConfiguration(code=code, scoring_script=SCORING_SCRIPT),
        instance_type=ep.instance_type, instance_count=ep.instance_count,
        request_settings=OnlineRequestSettings(request_timeout_ms=ep.request_timeout_ms,
                                               max_concurrent_requests_per_instance=ep.max_concurrent_requests_per_instance,
                                               max_queue_wait_ms=ep.max_queue_wait_ms),
        liveness_probe=probe(ep.liveness_probe), readiness_probe=probe(ep.readiness_probe),
        data_collector=collector(cfg, endpoint_name, ground_truth),
        environment_variables={"MNISTOPS_MODEL_NAME": model_name, "MNISTOPS_MODEL_VERSION": str(model_version),
                               "MNISTOPS_DEPLOYMENT": slot},
        tags={T.MODEL_URI: uri, T.ENV: cfg.env.name},
    )
