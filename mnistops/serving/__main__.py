"""``python -m mnistops.serving --endpoint-dir DIR``: serve one endpoint with uvicorn.

Reads ``DIR/server.json`` (host, port, limits) and ``DIR/key``; loads the deployments listed in
``DIR/state.json``; writes ``DIR/server.pid`` while it runs (removed on a clean shutdown, SIGTERM or
Ctrl-C). Logs (one line per request, never the key) go to stdout.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mnistops.serving", description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint-dir", required=True, type=Path, help="the endpoint dir (holds server.json)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)

    logging.basicConfig(stream=sys.stdout, level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    log = logging.getLogger("mnistops.serving")

    import uvicorn

    from mnistops.serving.app import create_app
    from mnistops.serving.settings import ConfigError

    endpoint_dir = args.endpoint_dir.resolve()
    try:
        app = create_app(endpoint_dir, freeze_gc=True)
    except ConfigError as exc:
        print(f"mnistops.serving: {exc}", file=sys.stderr)
        return 2
    cfg = app.state.server.cfg
    pid_path = endpoint_dir / "server.pid"
    tmp = pid_path.with_name(f".server.pid.{os.getpid()}")
    tmp.write_text(f"{os.getpid()}\n")
    os.replace(tmp, pid_path)
    log.info("endpoint %s (%s) pid %d serving on http://%s:%d (auth %s)", cfg.name, cfg.env, os.getpid(), cfg.host,
             cfg.port, "on" if cfg.auth else "off")
    try:
        config = uvicorn.Config(app, host=cfg.host, port=cfg.port, loop="uvloop", http="httptools",
                                access_log=False, log_config=None, log_level=args.log_level, lifespan="on",
                                timeout_keep_alive=30, server_header=False, proxy_headers=False)
        server = uvicorn.Server(config)
        # uvicorn re-raises the SIGTERM it caught once it has shut down: exit cleanly then (pid file removed)
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
        server.run()
        return 0 if server.started else 3
    finally:
        try:
            if pid_path.read_text().strip() == str(os.getpid()):
                pid_path.unlink()
        except OSError:
            pass
        log.info("endpoint %s stopped", cfg.name)


if __name__ == "__main__":
    sys.exit(main())
