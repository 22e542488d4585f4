"""What libraries print, reduced to what a user can act on, the same way for the CLI and the API.

Each rule is for one message or logger, with why it goes; nothing else is filtered.
"""

from __future__ import annotations

import logging
import os
import warnings

CHATTY = (
    "httpx", "httpcore",  # one line per HTTP call
    "great_expectations",  # GX's registration notices
    "mlflow.store.db.utils",  # "Creating initial MLflow database tables...", "Updating database tables"
    "mlflow.pyfunc",  # "Validating input example against model signature" (register checks it itself)
    "azureml.mlflow",  # on Azure, "Parsing artifact uri ..." and "Fetched cloud name ..." per run file
)

# Warnings libraries raise on every run that carry no action for a user of mnistops:
UNACTIONABLE_WARNINGS = (
    # MLflow's hint about the registered signature's integer output column (`digit`): a digit is never
    # missing, so the advice (declare it float64) does not apply
    (r"Hint: Inferred schema contains integer column", UserWarning),
    # Lightning calling a torch pytree API that newer torch deprecates: Lightning's to fix, not ours
    (r".*isinstance\(treespec, LeafSpec\)` is deprecated", Warning),
)


class ConsoleFormatter(logging.Formatter):
    """Log lines as people read them: the message, with the level in front only from WARNING up
    (Hydra's default console format puts a timestamp and the logger's name on every line; the
    job's .log file keeps that format)."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return f"{record.levelname}: {message}" if record.levelno >= logging.WARNING else message


class NoAdverts(logging.Filter):
    """Lightning's "💡 Tip: try installing litlogger/litmodels" lines: adverts, printed on every fit."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def quiet_libraries() -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # local copies: noise, not progress
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.WARNING)
    for message, category in UNACTIONABLE_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, NoAdverts) for f in rank_zero.filters):
        rank_zero.addFilter(NoAdverts())


def lightning_logs_once() -> None:
    """Call after importing lightning. `import lightning` gives the "lightning" logger a console
    handler of its own ("INFO: ...") while the logger still propagates to the root logger, so where
    the root logger has handlers (the CLI: Hydra's job logging) every Lightning message is printed
    twice. There, the root's handlers alone print (and the job's .log file gets the lines); with no
    root handler (the API in a script or notebook), Lightning's own handler does. This is the rule
    Lightning itself applies to its "lightning.pytorch" and "lightning.fabric" loggers."""
    logger = logging.getLogger("lightning")
    if not logging.getLogger().hasHandlers():
        return
    for handler in list(logger.handlers):
        if type(handler) is logging.StreamHandler:  # Lightning's console handler (not a file handler)
            logger.removeHandler(handler)
