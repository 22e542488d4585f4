"""The unit tier guard of tests/conftest.py, checked from a unit test (where it is on): starting the
CLI, listening on a socket or fitting a Lightning model fails the test with a message that says to
mark it integration. The refusals happen before anything starts."""

from __future__ import annotations

import contextlib
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
