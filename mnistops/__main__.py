"""The entrypoint: compose the Hydra config, run the chosen stage, turn user errors into one line.

    python -m mnistops [stage=NAME] [group=option ...] [key=value ...]
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from mnistops.config import config_path  # importing it registers the structured configs
from mnistops.errors import MnistopsError


@hydra.main(version_base="1.3", config_path=config_path(), config_name="config")
def main(cfg: DictConfig) -> float | None:
    from mnistops.stages import run_stage

    from mnistops.quiet import quiet_libraries

    quiet_libraries()
    try:
        result = run_stage(cfg)
    except MnistopsError as err:
        print(f"mnistops: error: {err}", file=sys.stderr)
        raise SystemExit(getattr(err, "exit_code", 2)) from None
    return result.score


if __name__ == "__main__":
    main()
