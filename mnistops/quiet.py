"""Libraries whose chatter drowns what the stages say, quieted the same way by the CLI and the API."""

from __future__ import annotations

import logging
import os

CHATTY = ("httpx", "httpcore", "great_expectations")


def quiet_libraries() -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # local copies: noise, not progress
    for name in CHATTY:  # one line per HTTP call, GX's registration notices
        logging.getLogger(name).setLevel(logging.WARNING)
