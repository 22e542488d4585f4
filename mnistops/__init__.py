"""mnistops: config-driven MLOps for MNIST (Hydra, Lightning, MLflow).

Importing the package is cheap on purpose: torch, lightning and mlflow load inside the stages.
"""

import os

# OpenMP threads that spin while they wait stall torch by ~9x whenever another process holds a
# core (a shared laptop, CI); passive waiting costs little on a dedicated machine. It must be set
# before torch loads, so here. Set OMP_WAIT_POLICY yourself to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
