"""Backend flavours: `env.backend` picks one; stages use it through `get(cfg)` and the interfaces in
base.py. Importing this package is free: a flavour (and its SDK) loads when first asked for."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Dict, Tuple

from mnistops.errors import MnistopsError

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from mnistops.backends.base import Backend

# name -> (module, class): the flavours there are
FLAVOURS: Dict[str, Tuple[str, str]] = {
    "local": ("mnistops.backends.local", "LocalBackend"),
    "azure": ("mnistops.backends.azure", "AzureBackend"),
}


def check(name: str) -> None:
    if name not in FLAVOURS:
        raise MnistopsError(f"env.backend={name!r} is not one of {', '.join(FLAVOURS)}")


def get(cfg: "DictConfig") -> "Backend":
    """The flavour `cfg.env.backend` names, bound to this config."""
    check(cfg.env.backend)
    module, cls = FLAVOURS[cfg.env.backend]
    return getattr(importlib.import_module(module), cls)(cfg)
