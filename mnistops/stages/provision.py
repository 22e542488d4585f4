"""stage=provision: ensure, idempotently, what the env needs before jobs run, through the flavour's
provisioner (Azure ML: the environments and data assets; the clusters belong to Terraform)."""

from __future__ import annotations

from omegaconf import DictConfig

from mnistops.errors import MnistopsError
from mnistops.stages import StageResult


def run(cfg: DictConfig) -> StageResult:
    from mnistops import backends

    backend = backends.get(cfg)
    if backend.provisioner is None:
        raise MnistopsError(f"stage=provision: the {backend.name} backend needs nothing provisioned (its stores are "
                            "made on first use); it is for a flavour with a provisioner, e.g. the azure one "
                            "(azure.dry_run=true previews it)")
    return backend.provisioner.provision(cfg)
