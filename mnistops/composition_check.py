"""What the schema's types cannot say, checked the moment the config is composed: before Hydra makes
a run directory, before any stage or store starts. Today that is the endpoint as its server reads it
(``ServerSettings``, pydantic: ``endpoint.max_batch=0`` is refused naming the key, whatever the stage).

Called by the CLI through this Hydra callback (conf/hydra/default.yaml) and by ``mnistops.compose``."""

from __future__ import annotations

import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from mnistops.errors import MnistopsError


def check(cfg: DictConfig) -> None:
    """Raise MnistopsError with one line naming the key at fault."""
    from omegaconf.errors import OmegaConfBaseException

    from mnistops.serving.settings import ConfigError, ServerSettings

    try:
        ServerSettings.check_composed(cfg)
    except ConfigError as err:
        raise MnistopsError(str(err)) from None
    except OmegaConfBaseException as err:  # e.g. an interpolation that does not resolve
        raise MnistopsError(f"endpoint: {err}".splitlines()[0]) from None


class CompositionCheck(Callback):
    """Refuses a composed config with one line and exit 2, before the run (or sweep) directory exists."""

    def _check(self, config: DictConfig) -> None:
        try:
            check(config)
        except MnistopsError as err:
            print(f"mnistops: error: {err}", file=sys.stderr)
            raise SystemExit(2) from None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:  # each trial of a sweep
        self._check(config)
