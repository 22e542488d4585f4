"""Each env's local endpoint listens on its own port (dev 5080, qa 5081, prod 5082: `endpoint.port` in
conf/env/<env>.yaml), and a deploy refuses a port that another process holds, in one line naming
`endpoint.port`, before it starts anything."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import TINY, compose, fresh_home, run_cli

HOLD_A_PORT = ("import socket, sys\ns = socket.socket()\ns.bind(('127.0.0.1', 0))\ns.listen()\n"
               "print(s.getsockname()[1], flush=True)\nsys.stdin.read()\n")


def test_each_env_has_its_own_port():
    ports = {env: compose([f"env={env}"]).endpoint.port for env in ("dev", "qa", "prod")}
    assert ports == {"dev": 5080, "qa": 5081, "prod": 5082}
    assert compose(["env=qa", "endpoint.port=6000"]).endpoint.port == 6000  # the one knob


@pytest.mark.integration  # trains a tiny model, runs the CLI
def test_a_port_another_process_holds_is_refused(tmp_path_factory, data_cache):
    home = fresh_home(tmp_path_factory, data_cache, "ports-home")
    run_cli(["model=logreg", *TINY], home, check=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_A_PORT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        port = int(holder.stdout.readline())  # the holder bound it: no window for anyone else to take it
        proc = run_cli(["stage=deploy", f"endpoint.port={port}", "endpoint.workers=1"], home, timeout=300)
        assert holder.poll() is None, "the holder still holds the port"
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (f"endpoint.port={port} is in use by another process (not endpoint 'mnist' of env 'dev'); "
            "pick another port") in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.strip()]) == 1, proc.stderr
    endpoint_dir = home / "dev" / "endpoints" / "mnist"
    assert not (endpoint_dir / "server.log").exists() and not list(endpoint_dir.glob("*.pid")), "a server was started"
