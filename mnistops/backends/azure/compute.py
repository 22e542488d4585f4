"""The compute cluster a job runs on. Terraform owns the clusters (infra/: `cpu-cluster`, and
`gpu-cluster` where the env has one): this flavour never creates or changes one, it checks that the
cluster `compute.cluster` names is there and big enough, and otherwise says which Terraform to apply."""

from __future__ import annotations

from omegaconf import DictConfig

from mnistops.errors import MnistopsError


def require_cluster(cfg: DictConfig) -> str:
    if not cfg.compute.cluster:
        raise MnistopsError(f"compute={cfg.compute.name} is not an Azure ML cluster (compute.cluster is null): "
                            "use compute=azure_cpu_cluster or compute=azure_gpu_cluster with env.backend=azure")
    return cfg.compute.cluster


# clusters Terraform creates only when a variable says so (infra/variables.tf): cluster -> that variable
OPTIONAL_CLUSTERS = {"gpu-cluster": "gpu_cluster_enabled"}


def missing(cfg: DictConfig, where: str) -> MnistopsError:
    switch = OPTIONAL_CLUSTERS.get(cfg.compute.cluster)
    first = f"set `{switch} = true` in infra/{cfg.env.name}.tfvars and " if switch else ""
    return MnistopsError(f"compute cluster {cfg.compute.cluster} is not in {where}: Terraform owns the clusters, "
                         f"{first}apply it first (terraform -chdir=infra apply -var-file={cfg.env.name}.tfvars); "
                         "stage=provision never creates one")


def check(ml, cfg: DictConfig, nodes: int) -> None:
    """The cluster exists and can give `nodes` nodes (its max_instances, as Terraform set it)."""
    from azure.core.exceptions import ResourceNotFoundError

    name = require_cluster(cfg)
    try:
        cluster = ml.compute.get(name)
    except ResourceNotFoundError:
        raise missing(cfg, f"workspace {ml.workspace_name}") from None
    most = getattr(cluster, "max_instances", None)
    if most is not None and nodes > most:
        raise MnistopsError(f"compute.instance_count={nodes} > the {most} nodes cluster {name} scales to "
                            "(Terraform's cluster_max_nodes): the job would never start")
