"""The managed online endpoint (key auth) and its blue/green deployments: the registered model, the
pinned inference environment, score.py from the code snapshot, instance type/count, request
settings, liveness/readiness probes and the data collector (model_inputs, model_outputs).
The endpoint's tags keep the previous traffic, so stage=rollback can restore it."""

from __future__ import annotations

import json
from typing import Dict, Optional

from omegaconf import DictConfig

PREVIOUS_TAG = "mnistops.previous_traffic"
SCORING_SCRIPT = "mnistops/backends/azure/score.py"


def endpoint(cfg: DictConfig, traffic: Optional[Dict[str, int]] = None, mirror: Optional[Dict[str, int]] = None,
             previous: Optional[dict] = None):
    from azure.ai.ml.entities import ManagedOnlineEndpoint

    tags = {"mnistops.env": cfg.env.name, "mnistops.endpoint": cfg.endpoint.name}
    if previous is not None:
        tags[PREVIOUS_TAG] = json.dumps(previous, sort_keys=True)
    return ManagedOnlineEndpoint(name=cfg.azure.endpoint_name, auth_mode="key", traffic=traffic or None,
                                 mirror_traffic=mirror or None, tags=tags,
                                 description=f"mnistops {cfg.endpoint.name} ({cfg.env.name})")


def probe(p: DictConfig):
    from azure.ai.ml.entities import ProbeSettings

    return ProbeSettings(initial_delay=p.initial_delay, period=p.period, timeout=p.timeout,
                         success_threshold=p.success_threshold, failure_threshold=p.failure_threshold)


def deployment(cfg: DictConfig, slot: str, model_name: str, model_version: str, env_ref: str):
    from azure.ai.ml.entities import (CodeConfiguration, DataCollector, DeploymentCollection,
                                      ManagedOnlineDeployment, OnlineRequestSettings)

    from mnistops.backends.azure.jobs import code_root

    ep = cfg.endpoint
    collector = None
    if ep.collect.enabled:
        collector = DataCollector(collections={"model_inputs": DeploymentCollection(enabled="true"),
                                               "model_outputs": DeploymentCollection(enabled="true")},
                                  sampling_rate=ep.collect.sampling_rate)
    return ManagedOnlineDeployment(
        name=slot, endpoint_name=cfg.azure.endpoint_name, model=f"azureml:{model_name}:{model_version}",
        environment=env_ref, code_configuration=CodeConfiguration(code=str(code_root()), scoring_script=SCORING_SCRIPT),
        instance_type=ep.instance_type, instance_count=ep.instance_count,
        request_settings=OnlineRequestSettings(request_timeout_ms=ep.request_timeout_ms,
                                               max_concurrent_requests_per_instance=ep.max_concurrent_requests_per_instance,
                                               max_queue_wait_ms=ep.max_queue_wait_ms),
        liveness_probe=probe(ep.liveness_probe), readiness_probe=probe(ep.readiness_probe),
        data_collector=collector,
        environment_variables={"MNISTOPS_MODEL_NAME": model_name, "MNISTOPS_MODEL_VERSION": str(model_version),
                               "MNISTOPS_DEPLOYMENT": slot},
        tags={"mnistops.model_uri": f"models:/{model_name}/{model_version}", "mnistops.env": cfg.env.name},
    )
