"""mnistops: config-driven MLOps for MNIST (Hydra, Lightning, MLflow).

    import mnistops
    result = mnistops.run("pipeline", ["experiment=fast"])   # see mnistops.api

Importing the package is cheap on purpose: torch, lightning and mlflow load inside the stages, and
`compose`/`run` load Hydra only when first used.
"""

import os

# OpenMP threads that spin while they wait stall torch by ~9x whenever another process holds a
# core (a shared laptop, CI); passive waiting costs little on a dedicated machine. It must be set
# before torch loads, so here. Set OMP_WAIT_POLICY yourself to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
__all__ = ["compose", "run", "Result", "ConfigError", "MnistopsError"]


def __getattr__(name: str):
    """The public API, imported on first use (module __getattr__, PEP 562)."""
    if name in ("compose", "run", "Result", "ConfigError"):
        from mnistops import api

        return getattr(api, name)
    if name == "MnistopsError":
        from mnistops.errors import MnistopsError

        return MnistopsError
    raise AttributeError(f"module 'mnistops' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
