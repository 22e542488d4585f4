"""``python -m mnistops.serving --endpoint-dir DIR``: serve one endpoint, supervised.

Reads ``DIR/server.json`` (host, port, workers, limits; see ``settings.py``) and the key files,
loads the deployments of ``DIR/state.json`` in every worker, and keeps the server up (``supervisor.py``:
a killed worker or master comes back by itself). Writes ``DIR/server.pid`` while it runs (removed on
SIGTERM or Ctrl-C). Logs (one line per request, never a key) go to stdout.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mnistops.serving", description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint-dir", required=True, type=Path, help="the endpoint dir (holds server.json)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)

    from mnistops.serving.master import configure_logging
    from mnistops.serving.settings import ConfigError, load_settings
    from mnistops.serving.supervisor import Supervisor

    configure_logging(args.log_level)
    try:
        load_settings(args.endpoint_dir)  # a broken dir fails here, with one line, before any process starts
    except ConfigError as exc:
        print(f"mnistops.serving: {exc}", file=sys.stderr)
        return 2
    return Supervisor(args.endpoint_dir, args.log_level).run()


if __name__ == "__main__":
    sys.exit(main())
