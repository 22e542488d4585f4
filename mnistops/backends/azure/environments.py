"""The Azure ML environments: a base image plus a conda file written from this project's own
dependency spec. Training gets the package's dependencies and its `azure` extra — exactly what the
agent installs (`make setup`), so the steps inside a job (register, baseline and gate call azure-ai-ml;
MLflow reaches the workspace through azureml-mlflow) have what they import — with mlflow pinned to
the agent's own version, so agent and job run one mlflow. The online deployments get only what the
scoring script imports, pinned to the versions tested here, in a separate environment (Azure's no-code
MLflow deployment cannot serve MLflow 3 models). The version is a digest of the conda file: the same
spec is the same version (idempotent)."""

from __future__ import annotations

import hashlib
import sys
from importlib import metadata
from pathlib import Path
from typing import Dict, List, Optional

from omegaconf import DictConfig

AZURE_EXTRA = "azure"  # the pyproject extra the agent and the training job install
INFERENCE = ["numpy", "pandas", "orjson", "onnxruntime"]  # what score.py imports (via mnistops.serving)
INFERENCE_SERVER = ["azureml-inference-server-http==1.5.1", "azureml-ai-monitoring==1.0.0"]
ONE_VERSION = ("mlflow",)  # pinned in the job to the agent's version: runs, models and registry calls agree


def _declared() -> Optional[dict]:
    """[project] of the source checkout's pyproject.toml (what the code snapshot carries), or None when
    running from an installed wheel (its metadata says the same) or on Python 3.10 (no tomllib)."""
    path = Path(__file__).resolve().parents[3] / "pyproject.toml"
    try:
        import tomllib
    except ImportError:
        return None
    if not path.is_file():
        return None
    project = tomllib.loads(path.read_text()).get("project", {})
    return project if project.get("name") == "mnistops" else None


def project_requirements(extra: Optional[str] = None) -> List[str]:
    """[project].dependencies of mnistops (extra=None), or those of one extra: from the checkout's
    pyproject.toml, else the installed distribution's metadata."""
    project = _declared()
    if project is not None:
        reqs = project.get("dependencies", []) if extra is None else project.get("optional-dependencies", {}).get(extra, [])
        return [r.split(";")[0].strip() for r in reqs]
    try:
        reqs = metadata.requires("mnistops") or []
    except metadata.PackageNotFoundError:
        from mnistops.errors import MnistopsError

        raise MnistopsError("the mnistops distribution is not installed (pip install -e .): its "
                            "dependency list builds the Azure ML environment") from None
    if extra is None:
        return [r.split(";")[0].strip() for r in reqs if "extra ==" not in r]
    return [r.split(";")[0].strip() for r in reqs if f'extra == "{extra}"' in r.replace("'", '"')]


def merged(requirements: List[str]) -> List[str]:
    """One line per distribution, its specifiers combined (`mlflow>=3.1,<4` + `mlflow<=3.15.0`), in
    first-seen order; `mnistops[...]` self-references dropped."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    out: Dict[str, Requirement] = {}
    for line in requirements:
        req = Requirement(line)
        key = canonicalize_name(req.name)
        if key == "mnistops":
            continue
        if key in out:
            out[key].specifier &= req.specifier
            out[key].extras |= req.extras
        else:
            out[key] = req
    return [str(r) for r in out.values()]


def one_version(requirements: List[str]) -> List[str]:
    """ONE_VERSION's distributions pinned to the version installed here when the spec admits it; a
    stale environment (installed before the caps) keeps the range, and says so."""
    from packaging.requirements import Requirement

    out = []
    for line in requirements:
        req = Requirement(line)
        if req.name in ONE_VERSION:
            try:
                here = metadata.version(req.name)
            except metadata.PackageNotFoundError:
                here = None
            if here and req.specifier.contains(here, prereleases=True):
                line = f"{req.name}=={here}"
            elif here:
                print(f"  (warning: {req.name} {here} here is outside the job's {line}: pip install -e '.[{AZURE_EXTRA}]' "
                      "so that this machine and the job run one version)")
        out.append(line)
    return out


def train_requirements() -> List[str]:
    return one_version(merged(project_requirements() + project_requirements(AZURE_EXTRA)))


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
    return build(cfg.azure.train_environment, train_requirements(),
                 "mnistops training: `python -m mnistops` with the project's dependencies")


def inference_environment(cfg: DictConfig):
    return build(cfg.azure.inference_environment, pinned(INFERENCE) + INFERENCE_SERVER,
                 "mnistops online scoring (mnistops/backends/azure/score.py), pinned")


def reference(env) -> str:
    return f"azureml:{env.name}:{env.version}"
