"""The dataset catalog: a split of `cfg.data` by name, verified and read once per process.

    from mnistops.data import catalog
    test = catalog.load(cfg, "test")          # test.images uint8 (N, 28, 28), test.labels int64 (N,)

Splits: `train` (the whole training file), `test` (the official test file), and the two the
training DataModule uses: `val`, a seeded hold-out of `data.val_size` training images (`seed`), and
`fit`, the rest of the training file plus `data.extra_train`. Files come through `mirrors.fetch`
(download, verify, cache); arrays are read once per process and handed out read-only, so a stage
that asks twice reads once and no caller can change what another one sees.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
from omegaconf import DictConfig

from mnistops.errors import MnistopsError

SPLITS = ("train", "test", "fit", "val")
_lock = threading.Lock()
_files: Dict[tuple, tuple] = {}  # (cache dir, file specs) -> (verified paths, their stamps)
_arrays: Dict[tuple, np.ndarray] = {}  # (path, size, mtime) -> read-only array


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # uint8 (N, 28, 28), read-only
    labels: np.ndarray  # int64 (N,), read-only

    def __len__(self) -> int:
        return len(self.labels)


def _stamp(path: Path) -> tuple:
    st = path.stat()
    return str(path), st.st_size, st.st_mtime_ns


def files(cfg: DictConfig) -> Dict[str, Path]:
    """The dataset's four raw files, verified: fetched (or checked in the cache) once per process,
    again only if a cached file changed on disk since."""
    from mnistops.data import mirrors

    key = (str(mirrors.cache_dir(cfg)),) + tuple(
        (k, cfg.data[k].name, cfg.data[k].size, cfg.data[k].md5, cfg.data[k].get("sha256"), cfg.data[k].gz_md5)
        for k in mirrors.FILE_KEYS)
    with _lock:
        paths, stamps = _files.get(key, ({}, None))
        if stamps is None or not all(p.is_file() for p in paths.values()) or \
                stamps != tuple(_stamp(p) for p in paths.values()):
            paths = mirrors.fetch(cfg)
            _files[key] = (paths, tuple(_stamp(p) for p in paths.values()))
        return dict(paths)


def _read(path: Path, labels: bool = False) -> np.ndarray:
    from mnistops.data.idx import read_idx

    key = _stamp(path) + (labels,)
    with _lock:
        arr = _arrays.get(key)
        if arr is None:
            arr = read_idx(path)
            if labels:
                arr = arr.astype(np.int64)
            arr.flags.writeable = False
            _arrays[key] = arr
        return arr


def _read_pair(cfg: DictConfig, which: str) -> Tuple[np.ndarray, np.ndarray]:
    paths = files(cfg)
    return _read(paths[f"{which}_images"]), _read(paths[f"{which}_labels"], labels=True)


def _frozen(images: np.ndarray, labels: np.ndarray) -> Split:
    images.flags.writeable = False
    labels.flags.writeable = False
    return Split(images, labels)


def holdout(cfg: DictConfig, n: int) -> Tuple[np.ndarray, np.ndarray]:
    """(val indices, fit indices) into the training file: a permutation seeded by `seed`."""
    order = np.random.default_rng(cfg.seed).permutation(n)
    return order[: cfg.data.val_size], order[cfg.data.val_size:]


def load(cfg: DictConfig, split: str) -> Split:
    """`split` of `cfg.data`: train | test | fit | val (see the module docstring)."""
    if split not in SPLITS:
        raise MnistopsError(f"unknown dataset split {split!r}; splits: {', '.join(SPLITS)}")
    if split in ("train", "test"):
        return Split(*_read_pair(cfg, split))
    images, labels = _read_pair(cfg, "train")
    val_idx, fit_idx = holdout(cfg, len(images))
    if split == "val":
        return _frozen(images[val_idx], labels[val_idx])
    fit_x, fit_y = images[fit_idx], labels[fit_idx]
    for path in cfg.data.get("extra_train") or ():
        extra = read_extra(path)
        fit_x, fit_y = np.concatenate([fit_x, extra.images]), np.concatenate([fit_y, extra.labels])
    return _frozen(fit_x, fit_y)


def read_extra(path: str) -> Split:
    """A `data.extra_train` file: `images` uint8 (N, 28, 28) and `labels` 0..9, checked before use."""
    try:
        with np.load(path) as f:
            images, labels = f["images"], f["labels"]
    except (OSError, ValueError, KeyError) as exc:
        raise MnistopsError(f"data.extra_train: cannot read {path} as an .npz with 'images' and 'labels' "
                            f"({type(exc).__name__}: {exc})") from None
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise MnistopsError(f"data.extra_train: {path}: 'images' must be uint8 (N, 28, 28), "
                            f"got {images.dtype} {images.shape}")
    labels = np.asarray(labels).astype(np.int64)
    if labels.shape != (len(images),) or (len(labels) and (labels.min() < 0 or labels.max() > 9)):
        raise MnistopsError(f"data.extra_train: {path}: 'labels' must be {len(images)} digits 0..9")
    return _frozen(images, labels)


def digest(cfg: DictConfig) -> str:
    """The dataset's identity (its files' names, sizes and checksums), as MLflow records it."""
    from mnistops.data import mirrors

    return mirrors.digest(cfg)


def clear() -> None:
    """Forget what this process has read (tests that rewrite a cache in place)."""
    with _lock:
        _files.clear()
        _arrays.clear()
