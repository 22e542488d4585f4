"""What the training job's environment installs, read from the spec this flavour renders
(backends/azure/environments.py), against what the steps inside the job import and what the agent
installs (pyproject's `azure` extra, through `make setup`). Unit tier: nothing is installed."""

from __future__ import annotations

import ast
import functools
from importlib import metadata
from pathlib import Path
from typing import Dict, Iterable, Set

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from conftest import REPO, compose, needs_module

tomllib = needs_module("tomllib", "Python >= 3.11 (it reads pyproject.toml)")

from mnistops.stage_table import COMPUTE, STAGES  # noqa: E402

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
AZURE_EXTRA = [Requirement(r) for r in PYPROJECT["optional-dependencies"]["azure"]]
# azureml_mlflow-1.62.0.post6-py3-none-any.whl, METADATA (the newest release, read with
# `pip download --no-deps azureml-mlflow`); the installed distribution's own metadata wins when present
AZUREML_MLFLOW_REQUIRES = ["mlflow-skinny<=3.15.0", "azure-storage-blob<=12.27.1,>=12.5.0", "azure-identity",
                           "azure-core!=1.22.0,<2.0.0,>=1.8.0", "pytz<=2025.2"]
# modules the job imports that are not installed here to look up
NOT_HERE = {"azureml.mlflow": "azureml-mlflow"}


def train_spec(tmp_path) -> Dict[str, Requirement]:
    from mnistops.backends.azure import environments

    cfg = compose(["env=qa", "env.backend=azure", "azure.dry_run=true"], tmp_path)
    env = environments.train_environment(cfg)
    pip = next(d["pip"] for d in env.conda_file["dependencies"] if isinstance(d, dict))
    reqs = [Requirement(line) for line in pip]
    names = [canonicalize_name(r.name) for r in reqs]
    assert len(names) == len(set(names)), f"a distribution twice in the job's spec: {names}"
    return dict(zip(names, reqs))


def azureml_mlflow_requires():
    try:
        return [Requirement(r.split(";")[0]) for r in metadata.requires("azureml-mlflow") or [] if "extra ==" not in r]
    except metadata.PackageNotFoundError:
        return [Requirement(r) for r in AZUREML_MLFLOW_REQUIRES]


def imports_of(paths: Iterable[Path]) -> Set[str]:
    """Every module imported (at any depth of the file) by `paths`, absolute imports only."""
    found = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module)
    return found


@functools.lru_cache(maxsize=1)
def module_files() -> Dict[str, str]:
    """{"azure/ai/ml/__init__.py": "azure-ai-ml", ...} for the top-level packages the job's Azure side uses."""
    index = {}
    for dist in metadata.distributions():
        if not canonicalize_name(dist.metadata["Name"] or "").startswith(("azure", "mlflow")):
            continue  # only these distributions hold azure/, azureml/ and mlflow/ (reading every RECORD is slow)
        for f in dist.files or ():
            name = str(f)
            if name.startswith(("azure/", "azureml/", "mlflow/")) and name.endswith(".py"):
                index[name] = canonicalize_name(dist.metadata["Name"])
    return index


def distribution_of(module: str) -> str:
    """The installed distribution whose files hold `module` (namespace packages such as azure.* are
    shared by many distributions, so the top-level name is not enough)."""
    if module in NOT_HERE:
        return NOT_HERE[module]
    parts = module.split(".")
    for depth in range(len(parts), 0, -1):
        stem = "/".join(parts[:depth])
        for name in (f"{stem}/__init__.py", f"{stem}.py"):
            if name in module_files():
                return module_files()[name]
    raise AssertionError(f"no installed distribution holds {module}")


def closure(names: Iterable[str]) -> Set[str]:
    """`names` and everything they require, as far as this machine's metadata knows."""
    seen: Set[str] = set()
    todo = list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        if name == "azureml-mlflow":
            todo += [r.name for r in azureml_mlflow_requires()]
            continue
        try:
            todo += [Requirement(r).name for r in metadata.requires(name) or [] if "extra ==" not in r]
        except metadata.PackageNotFoundError:
            pass
    return seen


def test_the_azure_extra_installs_the_workspace_mlflow_plugin():
    """Issue 17 (1): `make setup` installed no azureml-mlflow, so every Azure step whose tracking URI
    is the workspace's azureml:// stopped with "pip install azureml-mlflow"."""
    assert "azureml-mlflow" in {canonicalize_name(r.name) for r in AZURE_EXTRA}
    assert any(r.startswith("mnistops[azure") for r in PYPROJECT["optional-dependencies"]["test"]), \
        "make setup installs .[test], which must carry the azure extra"


@pytest.mark.parametrize("inside_job", [False, True])
def test_without_azureml_mlflow_the_workspace_store_fails_in_one_line_naming_the_remedy(inside_job, monkeypatch):
    """Inside a job, a training environment without the plugin failed deep in MLflow's registry
    (KeyError: 'azureml'); the agent's one line says `pip install`, the job's says where its environment
    comes from."""
    import importlib.util

    from mnistops.backends.azure import AzureBackend
    from mnistops.errors import MnistopsError

    uri = "azureml://westeurope.api.azureml.ms/mlflow/v1.0/subscriptions/s/resourceGroups/g/providers/x/workspaces/w"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    backend = AzureBackend(compose(["env=qa", "env.backend=azure", f"azure.inside_job={str(inside_job).lower()}"]))
    if not inside_job:
        monkeypatch.setattr(backend.connection, "mlflow_tracking_uri", lambda: uri)
    assert backend.tracking_uri() == uri  # with the plugin (the azure extra), the workspace's store
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "azureml.mlflow" else real(name, *a))
    with pytest.raises(MnistopsError) as refused:
        backend.tracking_uri()
    said = str(refused.value)
    assert "azureml-mlflow" in said and "\n" not in said
    if inside_job:
        assert "job's environment" in said and "azure extra of pyproject.toml" in said
    else:
        assert "pip install -e '.[azure]'" in said


def test_project_extra_and_azureml_mlflow_agree_on_one_mlflow():
    """Issue 17 (11): azureml-mlflow admits mlflow-skinny<=3.15.0 and azure-storage-blob<=12.27.1. The
    extra says so, and the project's own range still admits that mlflow (the local default, without
    the extra, keeps the whole range)."""
    caps = {canonicalize_name(r.name): r.specifier for r in azureml_mlflow_requires()}
    extra = {canonicalize_name(r.name): r.specifier for r in AZURE_EXTRA}
    base = next(Requirement(r) for r in PYPROJECT["dependencies"] if Requirement(r).name == "mlflow").specifier
    versions = [f"3.{minor}.{patch}" for minor in range(0, 40) for patch in range(0, 5)]
    with_extra = [v for v in versions if v in base and v in extra["mlflow"]]
    assert with_extra, "the azure extra leaves no mlflow the project admits"
    assert all(v in caps["mlflow-skinny"] for v in with_extra), \
        f"the azure extra admits mlflow {set(with_extra) - set(caps['mlflow-skinny'].filter(with_extra))}, which azureml-mlflow refuses"
    assert max(with_extra, key=lambda v: tuple(map(int, v.split(".")))) in caps["mlflow-skinny"]
    blob = [f"12.{minor}.{patch}" for minor in range(19, 40) for patch in range(0, 3)]
    assert all(v in caps["azure-storage-blob"] for v in extra["azure-storage-blob"].filter(blob))
    assert any(v not in extra["mlflow"] for v in versions if v in base), "without the extra, mlflow stays free"


def test_the_job_installs_what_the_agent_installs_and_one_mlflow(tmp_path):
    spec = train_spec(tmp_path)
    for req in AZURE_EXTRA:  # every line of the extra, with at least its constraints
        name = canonicalize_name(req.name)
        assert name in spec, f"the job's environment lacks {req} (the agent installs it)"
        assert not (req.specifier and str(req.specifier) not in str(spec[name].specifier)
                    and not str(spec[name].specifier).startswith("==")), (req, spec[name])
    mlflow = spec["mlflow"].specifier
    here = metadata.version("mlflow")
    extra_mlflow = next(r for r in AZURE_EXTRA if r.name == "mlflow").specifier
    if here in extra_mlflow:  # an agent installed with the extra: the job runs exactly its mlflow
        assert str(mlflow) == f"=={here}"
    else:  # an environment installed before the cap: the job keeps the extra's range
        assert set(mlflow.filter(["3.15.0", "3.17.2"])) == {"3.15.0"}


def test_the_job_environment_holds_what_every_in_job_step_imports(tmp_path):
    """Issue 17 (3): the training environment had no azure-ai-ml: register, baseline and gate (which
    run inside the job, through this flavour) crashed after training."""
    spec = train_spec(tmp_path)
    in_job = [REPO / "mnistops" / "stages" / f"{name}.py" for name, stage in STAGES.items()
              if stage.runs == COMPUTE and not stage.steps]
    flavour = [p for p in (REPO / "mnistops" / "backends" / "azure").glob("*.py") if p.name != "score.py"]
    modules = {m for m in imports_of(in_job + flavour) if m.split(".")[0] in ("azure", "azureml", "mlflow")}
    modules.add("azureml.mlflow")  # MLflow loads it for the azureml:// tracking URI Azure ML sets in the job
    assert {"azure.ai.ml", "azure.identity", "mlflow"} <= {".".join(m.split(".")[:3]) for m in modules} | modules
    installed = closure(spec)
    missing = {m: d for m in sorted(modules) if (d := distribution_of(m)) not in installed}
    assert not missing, f"imported inside the job, not in its environment: {missing}"
