"""The Python API: the CLI's composition and stages, called from a notebook or a script.

    import mnistops
    cfg = mnistops.compose(["experiment=fast"])           # the config `python -m mnistops` would run
    result = mnistops.run("pipeline", ["experiment=fast"])  # run a stage, get what it produced
    result.run_id, result.metrics["test/acc"], result.model_uri

Same config tree, same stores, same errors as the command line: a bad override raises
`ConfigError` with the message the CLI prints, a stage's own refusal raises `MnistopsError`.
"""

from __future__ import annotations

import contextlib
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterator, Optional, Sequence

from mnistops.errors import MnistopsError
from mnistops.quiet import quiet_libraries

if TYPE_CHECKING:  # Hydra and OmegaConf load on the first call, not with the package
    from omegaconf import DictConfig

PER_CLASS = re.compile(r"_\d+$")  # test/recall_3 and friends: in .metrics, not in the summary
SHOWN_METRICS = 12


class ConfigError(MnistopsError):
    """An override the config tree refuses: misspelt key, unknown group option, wrong type."""


@dataclass(frozen=True)
class Result:
    """What a stage produced: its MLflow run, metrics, files, registered model and endpoint."""

    stage: str
    run_id: Optional[str] = None
    metrics: Dict[str, float] = field(default_factory=dict)
    artifacts: Dict[str, str] = field(default_factory=dict)  # name -> local path or URL
    model_uri: Optional[str] = None
    endpoint_url: Optional[str] = None  # e.g. http://127.0.0.1:5080 (append /score, /predict, ...)
    score: Optional[float] = None  # the value a sweep would optimise
    config: Any = field(default=None, repr=False, compare=False)  # the composed DictConfig it ran

    @property
    def files(self) -> Dict[str, Path]:
        """The artifacts that are files on this machine (plots, reports, checkpoints, specs)."""
        return {k: Path(v) for k, v in self.artifacts.items() if "://" not in v and Path(v).is_file()}

    def __repr__(self) -> str:
        lines = [f"Result(stage={self.stage!r}, run_id={self.run_id!r})"]
        for label, value in (("model", self.model_uri), ("endpoint", self.endpoint_url), ("score", self.score)):
            if value is not None:
                lines.append(f"  {label}: {value}")
        if self.metrics:
            shown = [k for k in sorted(self.metrics) if not PER_CLASS.search(k)][:SHOWN_METRICS]
            more = len(self.metrics) - len(shown)
            lines.append("  metrics: " + ", ".join(f"{k}={self.metrics[k]:.4g}" for k in shown)
                         + (f" (+{more} more in .metrics)" if more else ""))
        lines += [f"  {name}: {value}" for name, value in self.artifacts.items()]
        return "\n".join(lines)


def _config_source() -> tuple:
    """(initializer, its argument): the CLI's own config tree, in a checkout or installed."""
    from hydra import initialize_config_dir, initialize_config_module

    from mnistops.config import config_path

    source = config_path()
    if source.startswith("pkg://"):
        return initialize_config_module, source[len("pkg://"):]
    return initialize_config_dir, source


@contextlib.contextmanager
def _own_hydra() -> Iterator[None]:
    """Hydra's global state for one composition, restored afterwards, so that calls repeat and
    work inside a caller that has initialised Hydra itself."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    backup = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        yield
    finally:
        restore_gh_from_backup(backup)


def cli_message(err: Exception) -> str:
    """The text the CLI prints for a composition error (Hydra's message and its OmegaConf cause)."""
    from omegaconf.errors import OmegaConfBaseException

    message = str(err)
    if isinstance(err.__cause__, OmegaConfBaseException) and str(err.__cause__) not in message:
        message += "\n" + str(err.__cause__)
    return message.strip()


def compose(overrides: Optional[Sequence[str]] = None, *, config_name: str = "config") -> DictConfig:
    """The composed config that `python -m mnistops OVERRIDES` would run."""
    from hydra import compose as hydra_compose
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    import mnistops.config  # noqa: F401  (registers the structured schemas)

    if isinstance(overrides, str):
        raise TypeError(f"overrides must be a list of strings such as [{overrides!r}], not a string")
    initializer, source = _config_source()
    try:
        with _own_hydra(), warnings.catch_warnings():
            # Hydra imports every plugin here; the sweeper's optuna pulls in tqdm.auto, which in a Jupyter
            # kernel without ipywidgets warns, and Hydra re-prints that as "report to plugin author"
            warnings.filterwarnings("ignore", message="IProgress not found")
            with initializer(source, version_base="1.3"):
                cfg = hydra_compose(config_name=config_name, overrides=list(overrides or []))
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(cli_message(err)) from None
    from mnistops.composition_check import check

    try:
        check(cfg)  # what the CLI checks before a run starts (a Hydra callback there)
    except MnistopsError as err:
        raise ConfigError(str(err)) from None
    return cfg


@contextlib.contextmanager
def _no_leaked_runs() -> Iterator[None]:
    """End any MLflow run a stage left open (a failure between start and end), so the next call
    does not nest under it; a run the caller had open stays theirs."""
    mlflow = sys.modules.get("mlflow")
    callers = mlflow.active_run() if mlflow else None
    failed = True
    try:
        yield
        failed = False
    finally:
        mlflow = sys.modules.get("mlflow")
        while mlflow and mlflow.active_run() is not None and (
                callers is None or mlflow.active_run().info.run_id != callers.info.run_id):
            mlflow.end_run("FAILED" if failed else "FINISHED")


def run(stage: str, overrides: Optional[Sequence[str]] = None) -> Result:
    """Run `stage` (data, train, pipeline, deploy, ...) with the CLI's overrides; return its Result.

    Raises ConfigError for an override the config refuses and MnistopsError when the stage refuses
    (an unreachable mirror, a gate that says no, a failed smoke test), as the CLI exits 2."""
    from mnistops.stages import run_stage

    if not isinstance(stage, str) or not stage or "=" in stage:
        raise ConfigError(f"stage must be a stage name such as 'pipeline', got {stage!r}")
    overrides = list(overrides or [])
    if any(o.split("=", 1)[0].lstrip("+~") == "stage" for o in overrides):
        raise ConfigError("pass the stage as run()'s first argument, not as a stage= override")
    cfg = compose([f"stage={stage}", *overrides])
    quiet_libraries()
    from mnistops import tracking  # the stage may pass its overrides on (a job's command line, a run tag)

    with _no_leaked_runs(), tracking.api_overrides([f"stage={stage}", *overrides]):
        result = run_stage(cfg)
    return Result(stage=result.stage, run_id=result.run_id, metrics=dict(result.metrics),
                  artifacts=dict(result.artifacts), model_uri=result.model_uri,
                  endpoint_url=result.endpoint_url, score=result.score, config=cfg)
