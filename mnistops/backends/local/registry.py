"""Resolve a model reference (models:/name@alias, models:/name/3, models:/name/latest) in the env's
registry, and fetch a version's files once, verified against the weights digest it was registered
with."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict

from omegaconf import DictConfig

from mnistops.errors import MnistopsError

MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w.-]+)|/(?P<version>\d+|latest))$")


@dataclass
class ResolvedModel:
    name: str
    version: str
    uri: str  # models:/name/version
    tags: Dict[str, str]


def resolve(cfg: DictConfig, reference: str) -> ResolvedModel:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from mnistops import tracking

    match = MODEL_URI.match(reference or "")
    if not match:
        raise MnistopsError(f"deploy.model={reference!r} is not models:/<name>@<alias>, models:/<name>/<version> "
                            "or models:/<name>/latest")
    tracking.configure(cfg)
    client = MlflowClient()
    name = match["name"]
    try:
        if match["alias"]:
            mv = client.get_model_version_by_alias(name, match["alias"])
        elif match["version"] == "latest":
            versions = client.search_model_versions(f"name = '{name}'")
            if not versions:
                raise MlflowException(f"no versions of {name}")
            mv = max(versions, key=lambda v: int(v.version))
        else:
            mv = client.get_model_version(name, match["version"])
    except MlflowException as err:
        raise MnistopsError(f"model {reference} not found in the {cfg.env.name} registry "
                            f"({tracking.tracking_uri(cfg)})") from err
    return ResolvedModel(name, str(mv.version), f"models:/{name}/{mv.version}", dict(mv.tags))


def fetch(model: ResolvedModel, into: Path) -> Path:
    """The version's model dir under `into` (downloaded once, atomically, digest-checked)."""
    import mlflow

    from mnistops.models.export import sha256_of

    final = Path(into) / f"{model.name}-v{model.version}"
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model.uri, dst_path=str(scratch)))
        onnx = local / "artifacts" / "model.onnx"
        expected = model.tags.get("mnistops.weights_sha256")
        if expected and onnx.is_file() and sha256_of(onnx) != expected:
            raise MnistopsError(f"{model.uri}: model.onnx does not match the registered weights digest")
        os.replace(local, final)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return final
