"""Packaging: pyproject.toml lists exactly the packages of the tree (conf/ travels as mnistops.conf),
the wheel builds without a setuptools warning, and an installed (not editable) wheel runs the CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

from conftest import CONF, REPO


def declared_packages() -> set:
    return set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])


def packages_in_the_tree() -> set:
    found = {"hydra_plugins"}  # a namespace package on purpose: Hydra scans it for plugins
    for root in ("mnistops", "hydra_plugins"):
        for init in (REPO / root).rglob("__init__.py"):
            found.add(".".join(init.parent.relative_to(REPO).parts))
    # data-only folders (no __init__.py) inside the package: setuptools ships them only when listed
    found |= {".".join(d.relative_to(REPO).parts) for d in (REPO / "mnistops").rglob("*")
              if d.is_dir() and d.name != "__pycache__" and not (d / "__init__.py").exists()}
    found.add("mnistops.conf")
    found |= {f"mnistops.conf.{d.name}" for d in CONF.iterdir() if d.is_dir() and any(d.glob("*.yaml"))}
    return found


def test_pyproject_lists_every_package_and_config_folder():
    declared, tree = declared_packages(), packages_in_the_tree()
    assert tree - declared == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert declared - tree == set(), "these are listed in pyproject.toml but are not in the tree"
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert {p for p in declared if p.startswith("mnistops.conf")} == {p for p in data if p.startswith("mnistops.conf")}
    assert data["mnistops.serving.static"] == ["*.png"]  # the sample digit deploy hints at


def source_files() -> list[str]:
    """What a user's checkout holds: git's tracked and not-ignored files (never .venv/ or .tools/, GBs)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    return [f for f in listed if f and (REPO / f).is_file()
            and not f.startswith(("notebooks/", "benchmarks/"))]


@pytest.mark.integration
def test_wheel_builds_quietly_and_the_installed_cli_runs(tmp_path):
    """Not editable: the wheel carries conf/ as mnistops.conf and the console script works."""
    source = tmp_path / "src"  # setuptools builds in the source tree: a copy keeps build/ out of the checkout
    for relative in source_files():
        (source / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / relative, source / relative)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v",
                            "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    log = build.stdout + build.stderr
    for noise in ("Package would be ignored", "SetuptoolsDeprecationWarning", "BuildBackendWarning"):
        assert noise not in log, f"setuptools warns while building the wheel: {noise}"
    (wheel,) = (tmp_path / "dist").glob("mnistops-*.whl")
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("mnistops/conf/") and n.endswith(".yaml")}
    expected = {f"mnistops/conf/{p.relative_to(CONF).as_posix()}" for p in CONF.rglob("*.yaml")}
    assert shipped == expected

    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                              str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    env = {**os.environ, "PYTHONPATH": str(target), "MNISTOPS_HOME": str(tmp_path / "home")}
    out = subprocess.run([sys.executable, "-c", "import mnistops.config as c; print(c.config_path())"],
                         cwd=tmp_path, capture_output=True, text=True, env=env, timeout=60)
    assert out.stdout.strip() == "pkg://mnistops.conf", out.stderr
    out = subprocess.run([sys.executable, "-m", "mnistops", "--help"], cwd=tmp_path, capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0 and "model: cnn" in out.stdout and "stage: " in out.stdout, out.stderr
    out = subprocess.run([sys.executable, str(target / "bin" / "mnistops"), "--cfg", "job", "model=logreg"],
                         cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and "LogisticRegression" in out.stdout, out.stderr
