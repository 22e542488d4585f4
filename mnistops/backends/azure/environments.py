"""The Azure ML environments: a base image plus a conda file written from this project's own
dependency spec. Training gets the package's dependencies (its ranges) plus azureml-mlflow; the
online deployments get only what the scoring script imports, pinned to the versions tested here,
in a separate environment (Azure's no-code MLflow deployment cannot serve MLflow 3 models).
The version is a digest of the conda file: the same spec is the same version (idempotent)."""

from __future__ import annotations

import hashlib
import sys
from importlib import metadata
from typing import List

from omegaconf import DictConfig

# Azure-side additions: MLflow tracking to the workspace inside jobs; the inference server + collector
TRAIN_EXTRA = ["azureml-mlflow>=1.57"]
INFERENCE = ["numpy", "pandas", "orjson", "onnxruntime"]  # what score.py imports (via mnistops.serving)
INFERENCE_SERVER = ["azureml-inference-server-http==1.5.1", "azureml-ai-monitoring==1.0.0"]


def project_requirements() -> List[str]:
    """[project].dependencies of the mnistops distribution (the installed/editable metadata)."""
    try:
        reqs = metadata.requires("mnistops") or []
    except metadata.PackageNotFoundError:
        from mnistops.errors import MnistopsError

        raise MnistopsError("the mnistops distribution is not installed (pip install -e .): its "
                            "dependency list builds the Azure ML environment") from None
    return [r.split(";")[0].strip() for r in reqs if "extra ==" not in r]


def pinned(names: List[str]) -> List[str]:
    return [f"{n}=={metadata.version(n)}" for n in names]


def conda_spec(name: str, pip: List[str]) -> dict:
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    return {"name": name, "channels": ["conda-forge"], "dependencies": [f"python={python}", "pip", {"pip": pip}]}


def version_of(spec: dict, image: str) -> str:
    return hashlib.sha256(f"{image}\n{spec}".encode()).hexdigest()[:16]


def build(env_cfg: DictConfig, pip: List[str], description: str):
    from azure.ai.ml.entities import Environment

    spec = conda_spec(env_cfg.name, pip)
    return Environment(name=env_cfg.name, version=version_of(spec, env_cfg.image), image=env_cfg.image,
                       conda_file=spec, description=description, tags={"mnistops.kind": "environment"})


def train_environment(cfg: DictConfig):
    return build(cfg.azure.train_environment, project_requirements() + TRAIN_EXTRA,
                 "mnistops training: `python -m mnistops` with the project's dependencies")


def inference_environment(cfg: DictConfig):
    return build(cfg.azure.inference_environment, pinned(INFERENCE) + INFERENCE_SERVER,
                 "mnistops online scoring (mnistops/backends/azure/score.py), pinned")


def reference(env) -> str:
    return f"azureml:{env.name}:{env.version}"
