"""``python -m mnistops.serving.master --endpoint-dir DIR``: the endpoint's gunicorn master.

gunicorn runs ``endpoint.workers`` uvicorn worker processes behind one listening socket and
restarts any that dies or hangs (a missed heartbeat for ``WORKER_TIMEOUT_S``); each worker builds
its own app (``create_app``: own models, own micro-batchers) after the fork. Connections spread
over the workers by ``balancer.py``: the least-connected worker accepts the next one (a shared
``Board`` the master makes before it forks and keeps one slot of per worker). The master's hooks keep
``run/master.json`` (its pid, when it was ready, how many workers it forked) for ``stage=endpoint``,
and retire a dead worker's metrics and control registration. ``supervisor.py`` runs this process
and starts it again if it dies.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Optional

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from uvicorn.server import Server
from uvicorn_worker import UvicornWorker

from mnistops.serving.balancer import BalancedServer, Board
from mnistops.serving.settings import RUN_DIR, ConfigError, ServerSettings, load_settings

MASTER_FILE = "master.json"
WORKER_TIMEOUT_S = 60  # a worker silent this long (a hung event loop) is killed and replaced
GRACEFUL_TIMEOUT_S = 15  # on stop: in-flight requests get this long to finish


class ServerWorker(UvicornWorker):
    """uvicorn in a gunicorn worker: the lifespan must succeed (models loaded) before it serves."""

    CONFIG_KWARGS = {"loop": "auto", "http": "auto", "lifespan": "on", "server_header": False,
                     "access_log": False}
    board: Board  # set by the master's pre_fork, with board_slot
    board_slot: Optional[int]

    async def _serve(self) -> None:
        """uvicorn_worker's ``_serve`` with the balanced server in place of uvicorn's own."""
        self.config.app = self.wsgi
        if self.board_slot is None:  # no slot left on the board: uvicorn's own accept loop
            server = Server(config=self.config)
        else:
            server = BalancedServer(self.config, self.board, self.board_slot)
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


class ServerMaster(BaseApplication):
    def __init__(self, endpoint_dir: Path, settings: ServerSettings, log_level: str):
        self.endpoint_dir = endpoint_dir
        self.settings = settings
        self.log_level = log_level
        self.run_dir = endpoint_dir / RUN_DIR
        self.status = {"pid": os.getpid(), "workers": settings.workers, "forks": 0, "ready_at": None}
        self.board = Board(max(8, 2 * settings.workers))  # before any fork: every worker shares it
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        shm = Path("/dev/shm")
        options = {
            "bind": [f"{s.host}:{s.port}"], "workers": s.workers,
            "worker_class": "mnistops.serving.master.ServerWorker", "control_socket_disable": True,
            "timeout": WORKER_TIMEOUT_S, "graceful_timeout": GRACEFUL_TIMEOUT_S, "keepalive": 30,
            "accesslog": None, "errorlog": "-", "loglevel": self.log_level,
            "proc_name": f"mnistops-endpoint-{s.name}-{s.env}",
            "worker_tmp_dir": str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None,
            "when_ready": self.when_ready, "pre_fork": self.pre_fork, "child_exit": self.child_exit,
        }
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self):
        from mnistops.serving.app import create_app

        return create_app(self.endpoint_dir, freeze_gc=True)

    # ------------------------------------------------------------------ hooks (in the master)
    def _save(self) -> None:
        write_json(self.run_dir / MASTER_FILE, self.status)

    def when_ready(self, server) -> None:
        self.status["ready_at"] = time.time()
        self._save()

    def pre_fork(self, server, worker) -> None:
        worker.board, worker.board_slot = self.board, self.board.claim()
        self.status["forks"] += 1  # forks beyond `workers` are restarts of workers that died
        self._save()

    def child_exit(self, server, worker) -> None:
        from prometheus_client import multiprocess

        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            multiprocess.mark_process_dead(worker.pid)
        (self.run_dir / "workers" / f"{worker.pid}.json").unlink(missing_ok=True)
        self.board.release(getattr(worker, "board_slot", None))


def configure_logging(level: str) -> None:
    """One line per record, one write per line: several processes share the log file safely."""
    stream = open(sys.stdout.fileno(), "w", buffering=1, closefd=False)
    logging.basicConfig(stream=stream, level=getattr(logging, level.upper()),
                        format="%(asctime)s %(levelname)s %(process)d %(name)s %(message)s", force=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mnistops.serving.master", description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint-dir", required=True, type=Path)
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    endpoint_dir = args.endpoint_dir.resolve()
    try:
        settings = load_settings(endpoint_dir)
    except ConfigError as exc:
        print(f"mnistops.serving: {exc}", file=sys.stderr)
        return 2
    (endpoint_dir / RUN_DIR).mkdir(parents=True, exist_ok=True)
    import mnistops.serving.app  # noqa: F401  (imported once here: workers fork with it, restarts are quicker)

    ServerMaster(endpoint_dir, settings, args.log_level).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
