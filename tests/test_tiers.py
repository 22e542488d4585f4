"""The unit tier guard of tests/conftest.py, checked from a unit test (where it is on): starting the
CLI, listening on a socket or fitting a Lightning model fails the test with a message that says to
mark it integration. The refusals happen before anything starts."""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import sys
import types

import pytest

import conftest

SAYS = "is not marked integration: mark it @pytest.mark.integration"


@contextlib.contextmanager
def refused(what: str):
    with pytest.raises(pytest.fail.Exception, match=f"{what}.*{SAYS}"):
        yield
    conftest._violations.clear()  # refused on purpose here: not a failure of this test


def test_starting_the_cli_is_refused():
    for argv in ([sys.executable, "-m", "mnistops", "--help"], [sys.executable, "-m", "mnistops.serving"],
                 "mnistops stage=data"):
        with refused("started the mnistops CLI"):
            subprocess.Popen(argv, shell=isinstance(argv, str))
    done = subprocess.run([sys.executable, "-c", "print('not the CLI')"], capture_output=True, text=True)
    assert done.stdout.strip() == "not the CLI"


def test_listening_on_a_socket_is_refused():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # binding alone (free_port) is fine
        with refused("listened on a socket"):
            s.listen()


def test_fitting_is_refused():
    trainer = types.SimpleNamespace(Trainer=type("Trainer", (), {"fit": lambda self, model: "fitted"}))
    conftest._guard_trainer(trainer)
    with refused("called Lightning's Trainer.fit"):
        trainer.Trainer().fit(None)
    # Lightning's own Trainer gets the same guard when a test first imports it
    assert conftest._AfterImport.NAME in sys.modules or any(isinstance(f, conftest._AfterImport) for f in sys.meta_path)


@pytest.mark.integration
def test_an_integration_test_may_listen():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()


# --- one rule for "in CI", and tiers selected by what a test is ----------------------------------

@pytest.mark.parametrize("value, in_ci", [("true", True), ("True", True), ("1", True), ("yes", True),
                                          ("", False), ("false", False), ("0", False)])
def test_one_rule_says_what_in_ci_is(value, in_ci):
    proc = subprocess.run([sys.executable, "-c", "import conftest; print(conftest.IN_CI)"], cwd=conftest.REPO / "tests",
                          env={"CI": value, "PATH": ""}, capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == str(in_ci), proc.stderr[-2000:]


def test_a_missing_tool_fails_in_ci_and_skips_elsewhere(monkeypatch):
    monkeypatch.setattr(conftest, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match="no-such-tool is not installed.*in CI every tool"):
        conftest.needs_tool("no-such-tool is not installed")
    with pytest.raises(ImportError, match="no_such_extra_pkg cannot be imported.*the test extra must be installed"):
        conftest.needs_module("no_such_extra_pkg")
    monkeypatch.setattr(conftest, "IN_CI", False)
    with pytest.raises(pytest.skip.Exception, match="no-such-tool is not installed"):
        conftest.needs_tool("no-such-tool is not installed")
    with pytest.raises(pytest.skip.Exception, match="no_such_extra_pkg is not installed"):
        conftest.needs_module("no_such_extra_pkg")
    assert conftest.needs_module("json").dumps([1]) == "[1]"  # present: the module itself


def test_no_skip_in_tests_decides_for_itself_what_ci_is():
    """No module reads CI itself, and no importorskip turns a test (or a whole module) into a skip in CI
    (conftest.needs_tool / needs_module decide: fail in CI, skip elsewhere)."""
    offenders = []
    for path in sorted((conftest.REPO / "tests").glob("*.py")):
        text = path.read_text()
        if path.name in ("conftest.py", "test_tiers.py"):  # the rule itself, and this check
            continue
        if re.search(r"""(environ(\.get)?|getenv)\s*[\[(]\s*["']CI["']|IN_CI\s*=""", text):
            offenders.append(f"{path.name}: reads CI itself")
        if "pytest.importorskip(" in text:  # a skip in CI too
            offenders.append(f"{path.name}: pytest.importorskip (a skip in CI too: use conftest.needs_module)")
    assert not offenders, offenders


def collected(*args) -> set:
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
                          cwd=conftest.REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode in (0, 5), proc.stdout[-3000:] + proc.stderr[-3000:]
    return {line.split("::")[1].split("[")[0] for line in proc.stdout.splitlines() if "::" in line}


def test_the_unit_tier_is_what_is_marked_neither_integration_nor_live(request):
    assert request.node.get_closest_marker("unit") is not None  # given by conftest: this test is unmarked
    # `-m "not integration"`, the old way to ask for the unit tier, leaves the live Azure test out too
    selected = collected("-m", "not integration", "tests/test_azure_live.py", "tests/test_tiers.py")
    assert "test_fitting_is_refused" in selected
    assert "test_an_integration_test_may_listen" not in selected
    assert "test_the_qa_quickstart_runs_on_a_real_workspace" not in selected


def test_an_unknown_mark_is_an_error(tmp_path):
    (tmp_path / "test_typo.py").write_text("import pytest\n\n@pytest.mark.integraton\ndef test_x():\n    pass\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           "-c", str(conftest.REPO / "pyproject.toml"), "--rootdir", str(tmp_path), str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "'integraton' not found in `markers`" in proc.stdout + proc.stderr, proc.stdout[-2000:]


def test_free_ports_are_apart_per_xdist_worker(monkeypatch):
    """Two xdist workers never share a port range; one worker never hands out a port twice in a row."""
    handed = {}
    for worker in ("gw0", "gw1"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        monkeypatch.setattr(conftest, "_next_port", [])
        handed[worker] = [conftest.free_port() for _ in range(20)]
        assert len(set(handed[worker])) == 20
    ranges = {w: {p // conftest.PORTS_PER_WORKER for p in ports} for w, ports in handed.items()}
    assert ranges == {"gw0": {20}, "gw1": {21}}
    assert all(p < 32768 for ports in handed.values() for p in ports)  # not an ephemeral port
