"""The compute cluster of `compute=azure_*_cluster`: VM size, tier, node range and idle scale-down."""

from __future__ import annotations

from omegaconf import DictConfig

from mnistops.errors import MnistopsError


def require_cluster(cfg: DictConfig) -> str:
    if not cfg.compute.cluster:
        raise MnistopsError(f"compute={cfg.compute.name} is not an Azure ML cluster (compute.cluster is null): "
                            "use compute=azure_cpu_cluster or compute=azure_gpu_cluster with env.backend=azure")
    if cfg.compute.instance_count > cfg.compute.max_nodes:
        raise MnistopsError(f"compute.instance_count={cfg.compute.instance_count} > compute.max_nodes="
                            f"{cfg.compute.max_nodes}: the job would never start")
    return cfg.compute.cluster


def cluster(cfg: DictConfig):
    from azure.ai.ml.entities import AmlCompute

    name = require_cluster(cfg)
    if not cfg.compute.vm_size:
        raise MnistopsError(f"compute.vm_size is not set for cluster {name}")
    return AmlCompute(name=name, size=cfg.compute.vm_size, tier=cfg.compute.tier,
                      min_instances=cfg.compute.min_nodes, max_instances=cfg.compute.max_nodes,
                      idle_time_before_scale_down=cfg.compute.idle_time_before_scale_down,
                      description=f"mnistops {cfg.compute.name}")
