"""The source snapshot that jobs run and deployments serve from: a code asset `azure.code_asset`
whose version is the digest of the files Azure ML uploads (the SDK's own rules: the checkout minus
the checkout's .amlignore — no .git, tests, benchmarks, virtualenvs or site-packages — so the same
code is the same version whatever fetched it). One checkout is uploaded once, whatever number of jobs
and deployments use it, and each of them names the exact snapshot it ran. Installed from a wheel
(no checkout), the snapshot is a copy of the installed packages alone, never the site-packages
around them. A dry run renders the local path instead: what `az ml job create -f` /
`az ml online-deployment create -f` upload themselves."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from omegaconf import DictConfig

SCORING_SCRIPT = "mnistops/backends/azure/score.py"  # relative to the snapshot's root
PACKAGES = ("mnistops", "hydra_plugins/mnistops_optuna_sweeper")  # what an installed snapshot holds
IGNORE = ".amlignore"  # Azure ML's ignore file at the snapshot's root (it wins over .gitignore)


def is_checkout(path: Path) -> bool:
    """`path` is this project's source checkout (its pyproject.toml and .amlignore beside mnistops/)."""
    pyproject = path / "pyproject.toml"
    return pyproject.is_file() and 'name = "mnistops"' in pyproject.read_text() and (path / IGNORE).is_file()


def installed_snapshot(site: Path) -> Path:
    """An installed mnistops: its own packages copied into one folder (the same every time, so the
    same digest), without __pycache__; uploading `site` itself would send every installed package."""
    target = Path(tempfile.gettempdir()) / f"mnistops-code-snapshot-{os.getuid() if hasattr(os, 'getuid') else 0}"
    staging = Path(tempfile.mkdtemp(prefix=target.name + "-", dir=target.parent))
    for package in PACKAGES:
        if (site / package).is_dir():
            shutil.copytree(site / package, staging / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (staging / IGNORE).write_text("__pycache__\n*.pyc\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)  # whole or not at all: a half copy is never uploaded
    return target


def root() -> Path:
    """The source checkout's root or, installed, a snapshot of the installed packages alone."""
    here = Path(__file__).resolve().parents[3]  # <root>/mnistops/backends/azure/code_snapshot.py
    return here if is_checkout(here) else installed_snapshot(here)


def digest(path: Path) -> str:
    from azure.ai.ml._utils._asset_utils import get_ignore_file, get_object_hash

    return get_object_hash(path, get_ignore_file(path))[:16]


def uploaded(path: Path) -> list:
    """The files Azure ML uploads from `path` (relative names), by the SDK's own walk and ignore file."""
    from azure.ai.ml._utils._asset_utils import get_ignore_file, get_upload_files_from_folder

    return sorted(name for _, name in get_upload_files_from_folder(path, ignore_file=get_ignore_file(path)))


def staged(path: Path) -> Path:
    """The files Azure ML uploads from `path`, copied into a folder of their own (with the ignore
    file, so the SDK hashes it to the same digest). The SDK's upload walks every folder below what
    it is given and asks the ignore file file by file, .venv and node_modules included: minutes on a
    checkout where `make setup` ran. Here an ignored folder is never entered."""
    from azure.ai.ml._utils._asset_utils import get_ignore_file

    ignore = get_ignore_file(path)
    target = Path(tempfile.gettempdir()) / f"mnistops-code-staged-{os.getuid() if hasattr(os, 'getuid') else 0}-{digest(path)}"
    if target.is_dir():
        return target
    staging = Path(tempfile.mkdtemp(prefix=target.name + "-", dir=target.parent))
    for folder, dirs, files in os.walk(path, followlinks=True):
        dirs[:] = [d for d in dirs if not ignore.is_file_excluded(Path(folder) / d)]
        for name in files:
            source = Path(folder) / name
            if not ignore.is_file_excluded(source):
                copy = staging / source.relative_to(path)
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, copy)
    if (path / IGNORE).is_file():
        shutil.copy2(path / IGNORE, staging / IGNORE)
    try:
        staging.rename(target)  # whole or not at all
    except OSError:  # another process staged the same digest meanwhile
        shutil.rmtree(staging, ignore_errors=True)
    return target


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
        code = ml._code.create_or_update(Code(name=name, version=version, path=str(staged(path)),
                                              description="mnistops source snapshot (python -m mnistops, score.py)"))
    return code.id
