"""mnistops: config-driven MLOps for MNIST (Hydra, Lightning, MLflow).

Importing the package is cheap on purpose: torch, lightning and mlflow load inside the stages.
"""

__version__ = "0.1.0"
