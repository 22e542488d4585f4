"""The code snapshot Azure ML uploads for jobs and deployments (backends/azure/code_snapshot.py), by the
SDK's own walk and ignore rules, on real git repositories made here: what is uploaded, and that its
digest (the code asset's version) follows the code and nothing else. Unit tier: git and files only."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, needs_module, needs_tool

needs_module("azure.ai.ml", "pip install -e '.[azure]'")

from mnistops.backends.azure import code_snapshot  # noqa: E402

FILES = {
    "pyproject.toml": '[project]\nname = "mnistops"\n',
    "mnistops/__init__.py": "VERSION = 1\n",
    "mnistops/backends/azure/score.py": "def init(): pass\n",
    "conf/config.yaml": "seed: 42\n",
    "tests/test_x.py": "def test_x(): pass\n",
    "benchmarks/bench.py": "print('slow')\n",
    "docs/x.md": "# docs\n",
    ".venv/lib/python3.11/site-packages/torch/__init__.py": "# big\n",
    "build/lib/site-packages/x.py": "# an install tree\n",
    "mnistops/__pycache__/x.cpython-311.pyc": "bytes",
}


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "init.defaultBranch=main",
                           *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def checkout(tmp_path) -> Path:
    if shutil.which("git") is None:
        needs_tool("git is not installed")
    repo = tmp_path / "origin"
    for name, text in FILES.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    shutil.copy(REPO / ".amlignore", repo / ".amlignore")  # the project's own rules
    git(repo, "init", "-q")
    git(repo, "add", "pyproject.toml", ".amlignore", "mnistops/__init__.py", "mnistops/backends", "conf", "tests",
        "benchmarks", "docs")
    git(repo, "commit", "-q", "-m", "first")
    return repo


def test_the_snapshot_leaves_out_git_tests_benchmarks_and_installed_packages(checkout):
    """Issue 17 (10): no .amlignore, so .git, tests/, benchmarks/ were uploaded with every job."""
    uploaded = code_snapshot.uploaded(checkout)
    assert "mnistops/__init__.py" in uploaded and "mnistops/backends/azure/score.py" in uploaded
    assert "conf/config.yaml" in uploaded and "pyproject.toml" in uploaded
    for left_out in (".git/", "tests/", "benchmarks/", "docs/", ".venv/", "site-packages/", "__pycache__/"):
        assert not [u for u in uploaded if left_out in f"{u}/" or u.startswith(left_out)], (left_out, uploaded)


def test_the_same_code_is_the_same_version_whatever_fetched_it(checkout, tmp_path):
    """.git entered the digest: every fetch (new objects, a new FETCH_HEAD) made a new code version."""
    first = code_snapshot.digest(checkout)
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(checkout), str(clone))
    for name in (".venv/lib/python3.11/site-packages/torch/__init__.py", "mnistops/__pycache__/x.cpython-311.pyc",
                 "build/lib/site-packages/x.py"):  # a clone's untracked files differ; none is uploaded
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        (clone / name).write_text("other " + name)
    assert code_snapshot.digest(clone) == first
    git(checkout, "commit", "-q", "--allow-empty", "-m", "history moves, code does not")
    git(checkout, "gc", "-q")
    (checkout / "tests" / "test_y.py").write_text("def test_y(): pass\n")
    (checkout / "benchmarks" / "results.md").write_text("| x |\n")
    assert code_snapshot.digest(checkout) == first
    (checkout / "mnistops" / "__init__.py").write_text("VERSION = 2\n")
    assert code_snapshot.digest(checkout) != first, "a code change is a new version"


def test_an_installed_mnistops_uploads_its_own_packages_not_site_packages(tmp_path):
    site = tmp_path / "site-packages"
    for name in ("mnistops/__init__.py", "mnistops/conf/config.yaml", "mnistops/__pycache__/a.pyc",
                 "hydra_plugins/mnistops_optuna_sweeper/__init__.py", "torch/__init__.py", "numpy/__init__.py"):
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_text(name)
    assert not code_snapshot.is_checkout(site)
    snapshot = code_snapshot.installed_snapshot(site)
    uploaded = code_snapshot.uploaded(snapshot)
    assert {"mnistops/__init__.py", "mnistops/conf/config.yaml", "hydra_plugins/mnistops_optuna_sweeper/__init__.py"} <= set(uploaded)
    assert not [u for u in uploaded if u.startswith(("torch/", "numpy/")) or "__pycache__" in u], uploaded
    assert code_snapshot.digest(code_snapshot.installed_snapshot(site)) == code_snapshot.digest(snapshot)


def test_this_checkout_is_its_own_snapshot_root():
    assert code_snapshot.is_checkout(REPO) and code_snapshot.root() == REPO
    uploaded = code_snapshot.uploaded(REPO)
    assert code_snapshot.SCORING_SCRIPT in uploaded
    assert not [u for u in uploaded if u.startswith((".git/", "tests/", "benchmarks/", ".venv/"))]


def test_the_upload_is_staged_without_entering_ignored_folders(checkout):
    """The SDK's upload walks every folder below its path (a checkout's .venv: minutes, found by
    tests/test_azure_steps_as_processes.py); what it is handed is a copy of exactly what it would
    upload, with the same digest."""
    staged = code_snapshot.staged(checkout)
    assert code_snapshot.uploaded(staged) == code_snapshot.uploaded(checkout)
    assert code_snapshot.digest(staged) == code_snapshot.digest(checkout)
    assert not (staged / ".venv").exists() and not (staged / ".git").exists()
