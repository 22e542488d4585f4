"""`stage=provision` on Azure: what Terraform does not own, created idempotently before jobs run:
the training and inference environments (versioned by their conda file's digest), the raw-data
asset and the drift reference (training features), both versioned by the dataset digest. Terraform
owns the workspace, the clusters and the endpoint: a missing cluster is an error naming the
Terraform to apply, never something this stage creates or changes."""

from __future__ import annotations

from omegaconf import DictConfig

from mnistops.backends.base import Provisioner
from mnistops.result import StageResult


class AzureProvisioner(Provisioner):
    def __init__(self, connection):
        self.connection = connection

    def provision(self, cfg: DictConfig) -> StageResult:
        from mnistops.backends.azure import compute, data_assets, environments, render

        train_env, infer_env = environments.train_environment(cfg), environments.inference_environment(cfg)
        raw, reference = data_assets.raw_data(cfg), data_assets.reference_features(cfg)
        if cfg.azure.dry_run:
            paths = render.emit(cfg, [train_env, infer_env, raw, reference])
            print(f"  (compute cluster {compute.require_cluster(cfg)}: Terraform's; checked, never created, at run time)")
            return StageResult("provision", artifacts={p.stem: str(p) for p in paths})
        from azure.core.exceptions import ResourceNotFoundError

        from mnistops.data import mirrors

        ml = self.connection.ml
        compute.check(ml, cfg, cfg.compute.instance_count)
        print(f"compute cluster {cfg.compute.cluster}: there (Terraform's)")
        for env in (train_env, infer_env):
            ml.environments.create_or_update(env)
            print(f"environment {env.name}:{env.version}")
        for asset, prepare in ((raw, lambda: mirrors.fetch(cfg)), (reference, lambda: data_assets.write_reference(cfg))):
            try:
                ml.data.get(asset.name, version=asset.version)
                print(f"data asset {asset.name}:{asset.version}: already there")
            except ResourceNotFoundError:
                prepare()
                ml.data.create_or_update(asset)
                print(f"data asset {asset.name}:{asset.version}: uploaded")
        return StageResult("provision", artifacts={"environment": data_assets.reference(train_env),
                                                   "data": data_assets.reference(raw),
                                                   "reference": data_assets.reference(reference)})
