"""MNIST-style data as tensors in memory, served in shuffled batches by slicing, not per sample:
at 28x28 the per-sample DataLoader path costs more than the network does."""

from __future__ import annotations

import math
from typing import Iterator, Optional, Tuple

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from mnistops.data import catalog


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float (N, 1, 28, 28) in [0, 1] (a new tensor: the catalog's arrays are read-only)."""
    return torch.from_numpy(np.require(images, requirements=("C", "W"))).unsqueeze(1).float().div_(255.0)


def labels_tensor(labels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.require(labels, dtype=np.int64, requirements=("C", "W")))


class TensorBatches:
    """An iterable of (images, labels) batches over tensors, reshuffled every epoch; under DDP each
    rank takes its own stride of the permutation."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, shuffle: bool, seed: int = 0):
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.epoch = 0

    def _rank_world(self) -> Tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def __len__(self) -> int:
        _, world = self._rank_world()
        return math.ceil(math.ceil(len(self.images) / world) / self.batch_size)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        rank, world = self._rank_world()
        n = len(self.images)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        self.epoch += 1
        if world > 1:  # pad so every rank gets the same number of batches
            order = torch.cat([order, order[: (-n) % world]])[rank::world]
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            yield self.images[idx], self.labels[idx]


def elastic_field(n: int, size: int, pixels: float, cells: int, device, generator=None) -> torch.Tensor:
    """A smooth random displacement field (n, size, size, 2) in grid_sample's [-1, 1] units: uniform
    noise of up to `pixels` on a coarse `cells` x `cells` lattice, upsampled bicubically (Simard et
    al.'s elastic distortion, with the Gaussian smoothing replaced by the cheaper upsampling)."""
    coarse = (torch.rand(n, 2, cells, cells, device=device, generator=generator) * 2 - 1) * (2 * pixels / size)
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)


def augment(x: torch.Tensor, cfg: DictConfig, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Random affine jitter per image (shift, rotation, scale), plus an optional elastic distortion
    (`elastic` pixels, 0 = off), in one grid_sample call over the whole batch."""
    n = x.shape[0]
    rand = lambda: torch.rand(n, device=x.device, generator=generator) * 2 - 1  # noqa: E731
    angle = rand() * math.radians(cfg.max_rotate)
    scale = 1 + rand() * cfg.max_scale
    shift = 2 * cfg.max_shift / x.shape[-1]
    tx, ty = rand() * shift, rand() * shift
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    elastic = cfg.get("elastic", 0.0)
    if elastic:
        grid = grid + elastic_field(n, x.shape[-1], elastic, cfg.get("elastic_cells", 4), x.device, generator)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")


class MNISTDataModule(L.LightningDataModule):
    def __init__(self, cfg: DictConfig):
        super().__init__()
        self.cfg = cfg
        self.train: Optional[TensorBatches] = None

    def prepare_data(self) -> None:
        catalog.files(self.cfg)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train is not None:
            return
        train, val, test = (catalog.load(self.cfg, split) for split in ("fit", "val", "test"))
        bs, ebs, seed = self.cfg.data.batch_size, self.cfg.data.eval_batch_size, self.cfg.seed
        self.train = TensorBatches(to_tensor(train.images), labels_tensor(train.labels), bs, True, seed)
        self.val = TensorBatches(to_tensor(val.images), labels_tensor(val.labels), ebs, False)
        self.test = TensorBatches(to_tensor(test.images), labels_tensor(test.labels), ebs, False)

    def train_dataloader(self) -> TensorBatches:
        return self.train

    def val_dataloader(self) -> TensorBatches:
        return self.val

    def test_dataloader(self) -> TensorBatches:
        return self.test

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        aug = self.cfg.data.augment
        if aug.enabled and self.trainer is not None and self.trainer.training:
            x, y = batch
            return augment(x, aug), y
        return batch
