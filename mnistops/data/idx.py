"""The IDX file format of MNIST: a magic number, the dimensions, then raw unsigned bytes."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from mnistops.errors import MnistopsError

UBYTE = 0x08


def read_idx(path: Path) -> np.ndarray:
    """Parse an uncompressed IDX file of unsigned bytes, checking the header against the size."""
    raw = bytearray(Path(path).read_bytes())  # writable: torch.from_numpy wants that
    if len(raw) < 4:
        raise MnistopsError(f"corrupt IDX file {path}: {len(raw)} bytes, no header")
    zero, dtype, ndim = struct.unpack(">HBB", bytes(raw[:4]))
    if zero != 0 or dtype != UBYTE or not 1 <= ndim <= 4:
        raise MnistopsError(f"corrupt IDX file {path}: bad magic number {raw[:4].hex()}")
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", bytes(raw[4:header]))
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise MnistopsError(f"corrupt IDX file {path}: {len(raw)} bytes, header {dims} says {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)
