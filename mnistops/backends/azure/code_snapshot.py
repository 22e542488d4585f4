"""The source snapshot that jobs run and deployments serve from: a code asset `azure.code_asset`
whose version is the digest of the files Azure ML uploads (the SDK's own rules: the checkout minus
.amlignore, else .gitignore). One checkout is uploaded once, whatever number of jobs and
deployments use it, and each of them names the exact snapshot it ran. A dry run renders the local
path instead: what `az ml job create -f` / `az ml online-deployment create -f` upload themselves."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

SCORING_SCRIPT = "mnistops/backends/azure/score.py"  # relative to the snapshot's root


def root() -> Path:
    """The source checkout's root or, installed, the directory holding the mnistops package."""
    return Path(__file__).resolve().parents[3]  # <root>/mnistops/backends/azure/code_snapshot.py


def digest(path: Path) -> str:
    from azure.ai.ml._utils._asset_utils import get_ignore_file, get_object_hash

    return get_object_hash(path, get_ignore_file(path))[:16]


def ensure(ml, cfg: DictConfig) -> str:
    """The ARM id of `<code_asset>:<digest>` (what jobs and deployments take as their code),
    uploaded first if the workspace does not have it yet. The SDK keeps its code operations and
    entity private (MLClient._code); its public path would upload a snapshot per job."""
    from azure.ai.ml.entities._assets._artifacts.code import Code
    from azure.core.exceptions import ResourceNotFoundError

    path = root()
    name, version = cfg.azure.code_asset, digest(path)
    try:
        code = ml._code.get(name=name, version=version)
    except ResourceNotFoundError:
        print(f"uploading the source snapshot {name}:{version} ({path})")
        code = ml._code.create_or_update(Code(name=name, version=version, path=str(path),
                                              description="mnistops source snapshot (python -m mnistops, score.py)"))
    return code.id
