"""The training-time augmentation (mnistops.data.datamodule.augment): affine jitter plus an optional
elastic distortion, both one grid_sample over the batch. Unit tests: nothing trains."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf

from mnistops.data.datamodule import augment, elastic_field


def cfg(**values):
    base = {"enabled": True, "max_shift": 0.0, "max_rotate": 0.0, "max_scale": 0.0, "elastic": 0.0, "elastic_cells": 4}
    return OmegaConf.create({**base, **values})


def strokes(n: int = 16) -> torch.Tensor:
    """n 28x28 images with a thick vertical and horizontal bar each, at shifted places."""
    x = torch.zeros(n, 1, 28, 28)
    for i in range(n):
        x[i, 0, 6:22, 10 + i % 6:13 + i % 6] = 1.0
        x[i, 0, 12 + i % 4:15 + i % 4, 6:20] = 1.0
    return x


def test_no_jitter_is_the_identity():
    x = strokes()
    assert torch.allclose(augment(x, cfg()), x, atol=1e-5)


def test_elastic_field_is_bounded_smooth_and_not_zero():
    g = torch.Generator().manual_seed(0)
    field = elastic_field(64, 28, 2.0, 4, "cpu", g) * 28 / 2  # back to pixels
    assert field.shape == (64, 28, 28, 2)
    assert field.abs().max() <= 2.0 * 1.3  # bicubic overshoots the lattice's +-2 px a little at most
    assert field.abs().mean() > 0.5  # it does move the pixels
    step = (field[:, 1:] - field[:, :-1]).abs().mean()  # neighbours move together: elastic, not noise
    assert step < 0.3 * field.abs().mean()  # (independent noise per pixel: ~1.3)


def test_elastic_distorts_beyond_the_affine_jitter_and_keeps_the_ink():
    x = strokes()
    affine = cfg(max_shift=2.0, max_rotate=10.0, max_scale=0.1)
    plain = augment(x, affine, torch.Generator().manual_seed(1))
    bent = augment(x, cfg(max_shift=2.0, max_rotate=10.0, max_scale=0.1, elastic=2.0), torch.Generator().manual_seed(1))
    assert (bent - plain).abs().sum(dim=(1, 2, 3)).min() > 1.0  # every image changed
    ink, kept = x.sum(dim=(1, 2, 3)), bent.sum(dim=(1, 2, 3))
    change = (kept / ink - 1).abs()  # local stretch/squeeze thins or thickens 3-px strokes; none vanish
    assert change.max() < 0.6 and change.mean() < 0.3


def test_same_generator_same_batch():
    x, c = strokes(), cfg(max_shift=2.0, max_rotate=10.0, max_scale=0.1, elastic=2.0)
    a = augment(x, c, torch.Generator().manual_seed(7))
    b = augment(x, c, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
