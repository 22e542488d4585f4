"""stage=provision (env.backend=azure): ensure the Azure ML compute cluster of `compute`, the
training and inference environments and the data assets, idempotently. See mnistops/backends/azure/backend.py."""

from __future__ import annotations

from omegaconf import DictConfig

from mnistops.errors import MnistopsError
from mnistops.stages import StageResult


def run(cfg: DictConfig) -> StageResult:
    raise MnistopsError("stage=provision creates Azure ML resources: run it with env.backend=azure "
                        "(azure.dry_run=true to preview them)")
