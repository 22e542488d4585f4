"""Shared fixtures: the real MNIST files through a file:// mirror, a verified data cache made once
per session, fresh per-test stores (MNISTOPS_HOME) and helpers to compose configs and run the CLI.

Test tiers: a test that trains, starts a server or runs the CLI is marked `integration`; the rest
is the unit tier (`pytest -m unit`, `make test-unit`; marked `unit` by the collection hook below). The guard keeps
the marks honest: while an unmarked test (or a fixture it sets up) runs, starting `python -m
mnistops...`, listening on a socket or calling Lightning's `Trainer.fit` fails it, saying so.
"""

from __future__ import annotations

import importlib.abc
import os
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

import pytest

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"
DEFAULT_MIRROR = (REPO.parent / "shared" / "datasets" / "mnist").resolve()
# a few batches of real data: enough to check behaviour, small enough for a 2-core CI
# enough training for a model that predicts digits (logreg, 60 batches: ~0.85-0.9 test accuracy)
QUICK = ["model=logreg", "trainer.max_epochs=1", "trainer.limit_train_batches=60", "trainer.limit_val_batches=2"]
TINY = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
        "data.batch_size=32", "data.eval_batch_size=500",
        "train.ood_fit_images=1000"]  # the calibration's Mahalanobis fit (default 10,000 images) costs more than the training


def mirror_url() -> str:
    return os.environ.get("MNISTOPS_DATA_MIRROR") or DEFAULT_MIRROR.as_uri()


os.environ.setdefault("MNISTOPS_DATA_MIRROR", mirror_url())  # tests never reach for the public mirrors

# --- "in CI": the one rule every skip in tests/ follows ----------------------------------------
# GitHub Actions sets CI=true, Azure DevOps and most others CI=True/1. In CI a missing tool or extra is
# an error (the agent was meant to have it: .ci/run installs it), never a silent skip.
IN_CI = os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def needs_tool(reason: str) -> None:
    """A tool or package this test needs is missing: fail in CI, skip elsewhere, saying `reason`."""
    if IN_CI:
        pytest.fail(f"{reason} (CI={os.environ.get('CI')}: in CI every tool the tests use must be there; "
                    f"bash .ci/run installs them)", pytrace=False)
    pytest.skip(reason)


def needs_module(name: str, install: str = "pip install -e '.[test]'"):
    """`import name`, or needs_tool(): the importorskip of tests/ that fails instead of skipping in CI.
    At module level it turns a broken extra into one failure per module in CI, not silent skips."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as err:
        if IN_CI:  # pytest.fail at collection would be a collection error: raise the real ImportError
            raise ImportError(f"{name} cannot be imported ({err}); CI={os.environ.get('CI')}: "
                              f"the test extra must be installed ({install})") from err
        pytest.skip(f"{name} is not installed ({install})", allow_module_level=True)


# --- the unit tier guard -----------------------------------------------------------------------
_unit_test: Optional[str] = None  # the unmarked test whose setup or call is running
_violations: List[str] = []


def _refuse(what: str) -> None:
    if _unit_test is None:
        return
    message = (f"{_unit_test} {what}, but is not marked integration: mark it @pytest.mark.integration "
               f"(or its module: pytestmark = pytest.mark.integration); the unit tier starts no server, "
               f"runs no CLI and trains nothing")
    _violations.append(message)
    pytest.fail(message, pytrace=False)  # a BaseException: no `except Exception` in the code under test hides it


def _runs_the_cli(args) -> bool:
    argv = [os.fspath(a) if isinstance(a, os.PathLike) else str(a) for a in
            ([args] if isinstance(args, (str, bytes, os.PathLike)) else list(args))]
    if len(argv) == 1:
        argv = shlex.split(argv[0])
    for i, arg in enumerate(argv):
        if arg == "-m" and i + 1 < len(argv) and argv[i + 1].split(".")[0] == "mnistops":
            return True  # python -m mnistops ..., python -m mnistops.serving ...
        if os.path.basename(arg) == "mnistops":
            return True  # the console script
    return False


_popen_init = subprocess.Popen.__init__
_listen = socket.socket.listen


def _guarded_popen_init(self, args, *a, **kw):
    if _unit_test is not None and _runs_the_cli(args):
        _refuse(f"started the mnistops CLI ({' '.join(map(str, args)) if not isinstance(args, str) else args})")
    return _popen_init(self, args, *a, **kw)


def _guarded_listen(self, *a, **kw):
    _refuse(f"listened on a socket ({self.getsockname()})")
    return _listen(self, *a, **kw)


def _guard_trainer(module) -> None:
    fit = module.Trainer.fit

    def guarded_fit(self, *a, **kw):
        _refuse("called Lightning's Trainer.fit")
        return fit(self, *a, **kw)

    module.Trainer.fit = guarded_fit


class _AfterImport(importlib.abc.MetaPathFinder):
    """Patches Lightning's Trainer when a test first imports it (importing it here would cost seconds)."""

    NAME = "lightning.pytorch.trainer.trainer"

    def find_spec(self, fullname, path, target=None):
        if fullname != self.NAME:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                exec_module = spec.loader.exec_module

                def exec_then_guard(module, exec_module=exec_module):
                    exec_module(module)
                    _guard_trainer(module)

                spec.loader.exec_module = exec_then_guard
                return spec
        return None


subprocess.Popen.__init__ = _guarded_popen_init
socket.socket.listen = _guarded_listen
if _AfterImport.NAME in sys.modules:
    _guard_trainer(sys.modules[_AfterImport.NAME])
else:
    sys.meta_path.insert(0, _AfterImport())


# The longest modules (measured with `make test`'s --durations) are collected first: `make test` runs two
# xdist workers that take whole modules in collection order (--dist loadfile --no-loadscope-reorder),
# so these start at once instead of one of them running alone after everything else (the rehearsal's
# first CI runs the whole unit tier inside, on a fresh clone).
LONGEST_FIRST = ("test_pipelines_rehearsal.py", "test_azure_release_chain.py", "test_canary.py", "test_cicd.py",
                 "test_monitoring.py", "test_azure_steps_as_processes.py", "test_azure_job_execution.py",
                 "test_label_quality.py", "test_notebook.py", "test_train.py")


# The tiers, selected by what a test is (this hook runs before pytest's own -m selection): an
# `azure_live` test is an integration test too, so `-m "not integration"` never picks it up; every test
# marked neither gets `unit`, the tier `-m unit` selects (make test-unit, stage=ci's tests step).


# --- stage=ci with training: the costliest thing a test does, on a budget ------------------------
# A test that runs stage=ci with its train step (through the CLI, the API, a pipeline file, the
# monitor's retraining trigger or a notebook) is marked @pytest.mark.ci_training(runs=N);
# tests/test_ci_steps.py fails an unmarked one and a total over CI_TRAINING_BUDGET, and every run
# ends with a line listing the marked tests that ran (grep "stage=ci with training"). Tests that only
# need a store after CI build it with the stages (pipeline, baseline, gate), or run one CI step alone.
# issue 20's three: the rehearsal (its first CI on a fresh clone, and the queued retraining) and the notebook;
# issue 17's Azure release chain starts with ci.yml's ci step, whose job took the place of the README
# quickstart's training job in test_azure_job_execution.py (the trainings per `make test` stay as many)
CI_TRAINING_BUDGET = 4
CI_TRAINING = "ci_training"
_ci_training_runs: List[tuple] = []


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", f"{CI_TRAINING}(runs=1): runs stage=ci with its train step `runs` times "
                                      f"(at most CI_TRAINING_BUDGET in all: tests/conftest.py)")


def ci_training_runs(item) -> int:
    marker = item.get_closest_marker(CI_TRAINING)
    return 0 if marker is None else int(marker.kwargs.get("runs", 1))


def pytest_runtest_logreport(report) -> None:
    """Collects the ci_training tests that ran (here, or on the xdist workers: their user_properties)."""
    runs = dict(report.user_properties).get(CI_TRAINING)
    if runs and report.when == "call":
        _ci_training_runs.append((report.nodeid, runs, report.outcome))


def pytest_terminal_summary(terminalreporter) -> None:
    if _ci_training_runs:
        total = sum(runs for _, runs, _ in _ci_training_runs)
        terminalreporter.write_line(f"stage=ci with training: {total} run(s) in {len(_ci_training_runs)} test(s) "
                                    f"(budget {CI_TRAINING_BUDGET}):")
        for nodeid, runs, outcome in sorted(_ci_training_runs):
            terminalreporter.write_line(f"  stage=ci with training x{runs}: {nodeid} ({outcome})")


def pytest_collection_modifyitems(items) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keeps its order
    for item in items:
        if ci_training_runs(item):
            item.user_properties.append((CI_TRAINING, ci_training_runs(item)))
        if item.get_closest_marker("azure_live") and not item.get_closest_marker("integration"):
            item.add_marker(pytest.mark.integration)
        if not item.get_closest_marker("integration"):
            item.add_marker(pytest.mark.unit)


def _guarded_phase(item):
    global _unit_test
    _unit_test = None if item.get_closest_marker("integration") is not None else item.nodeid
    del _violations[:]
    try:
        result = yield
    finally:
        _unit_test = None
    if _violations:  # refused in another thread (a server's), where the failure did not reach the test
        pytest.fail(_violations[0], pytrace=False)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    return (yield from _guarded_phase(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    return (yield from _guarded_phase(item))


@pytest.fixture(scope="session")
def mirror_dir() -> Path:
    url = mirror_url()
    assert url.startswith("file://"), "tests read the real MNIST files through a file:// mirror"
    return Path(url[len("file://"):])


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> Path:
    """A verified data cache, fetched once per session through the real fetch code."""
    home = tmp_path_factory.mktemp("cache-home")
    from mnistops.data import catalog

    catalog.files(compose(["stage=data"], home))
    return home / "data"


@pytest.fixture
def home(tmp_path, data_cache, monkeypatch) -> Path:
    """A fresh MNISTOPS_HOME whose data cache is the session's verified one (stores are fresh)."""
    h = tmp_path / "home"
    h.mkdir()
    shutil.copytree(data_cache, h / "data")
    monkeypatch.setenv("MNISTOPS_HOME", str(h))
    monkeypatch.setenv("MNISTOPS_DATA_MIRROR", mirror_url())
    return h


def fresh_home(tmp_path_factory, data_cache: Path, name: str) -> Path:
    """A new MNISTOPS_HOME for a module's shared stores, with the session's verified data cache."""
    home = tmp_path_factory.mktemp(name)
    shutil.copytree(data_cache, home / "data")
    return home


def mnist_split(home: Path, split: str = "test", n: Optional[int] = None):
    """(images, labels) of a split of the real MNIST in `home`'s data cache, through the catalog."""
    from mnistops.data import catalog

    data = catalog.load(compose([], home), split)
    return data.images[:n], data.labels[:n]


PORTS_BASE, PORTS_PER_WORKER = 20000, 1000  # below Linux's ephemeral ports (32768-), where bind(0) draws
_next_port: List[int] = []


def free_port() -> int:
    """A port for a server a test starts. Each xdist worker draws from its own range (gw0: 20000-20999,
    gw1: 21000-21999, ...), in turn from a random start, so two workers can never be handed the same
    port between this check and the server's bind (the race of bind-to-0-then-close); a port something
    else holds is skipped. Below the ephemeral range, no client socket takes it meanwhile either."""
    import random

    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    low = PORTS_BASE + (index % 12) * PORTS_PER_WORKER
    if not _next_port:
        _next_port.append(random.randrange(PORTS_PER_WORKER))
    for _ in range(PORTS_PER_WORKER):
        port = low + _next_port[0] % PORTS_PER_WORKER
        _next_port[0] += 1
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {low}-{low + PORTS_PER_WORKER - 1}")


def failing_tests(tmp_path: Path) -> str:
    """The ci.pytest_args override of a tests step whose one test runs and fails (pytest exit 1), not a
    missing file (exit 4): what a broken commit gives the tests step."""
    test = tmp_path / "test_a_broken_commit.py"
    test.write_text("def test_a_broken_commit():\n    assert sum([1, 1]) == 3\n")
    return f"ci.pytest_args=[-q,-p,no:cacheprovider,{test}]"


def compose(overrides: List[str], home: Optional[Path] = None):
    """The config the CLI would build, through Hydra's compose API."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import mnistops.config  # noqa: F401  (schemas)

    extra = [f"paths.home={home}"] if home is not None else []
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides) + extra)


def run_cli(args: List[str], home: Path, timeout: float = 600, env: Optional[dict] = None,
            check: bool = False) -> subprocess.CompletedProcess:
    """`python -m mnistops ARGS` as a user runs it, with its own store under `home`."""
    full_env = {**os.environ, "MNISTOPS_HOME": str(home), "MNISTOPS_DATA_MIRROR": mirror_url(),
                "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "mnistops", *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"mnistops {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def mlflow_client(home: Path, env: str = "dev"):
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{home / env / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(uri, uri)


def runs_of(client, stage: str, experiment: str = "mnistops"):
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], filter_string=f"tags.`mnistops.stage` = '{stage}'")
