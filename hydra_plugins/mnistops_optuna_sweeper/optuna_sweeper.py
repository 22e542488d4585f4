"""A Hydra Sweeper backed by Optuna >= 4, config-compatible with the official plugin's main keys.

Resuming: with a persistent ``storage`` and a fixed ``study_name`` the same command continues
the study (``load_if_exists=True``). ``n_trials`` counts the NEW trials of each invocation; old
trials stay in the study and inform the sampler; trials left RUNNING by a killed process are
marked FAIL first. A seeded sampler gets ``seed + <trials already in the study>`` so a resumed
run stays reproducible without re-proposing the first run's points.

Hydra imports this module whenever it scans for plugins (``--help``, every run), so it imports
optuna only inside the methods a sweep calls: optuna costs ~0.3 s to import.
"""

# No `from __future__ import annotations`: Hydra's scan runs this module before it is in
# sys.modules, where dataclasses cannot resolve string annotations.
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import get_method, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

if TYPE_CHECKING:
    import optuna
    from optuna.trial import Trial

log = logging.getLogger(__name__)


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.mnistops_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    # The sweeper instantiates the sampler itself (to offset its seed on resume).
    _recursive_: bool = False
    # Any optuna sampler: {_target_: optuna.samplers.RandomSampler, seed: 0}; null = optuna default.
    sampler: Any = field(
        default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": None}
    )
    direction: Any = "minimize"  # minimize | maximize (single objective only)
    storage: Optional[str] = None  # e.g. sqlite:////abs/path/optuna.db; null = in memory
    study_name: Optional[str] = None  # needed (with storage) to resume a study
    n_trials: int = 20  # NEW trials per invocation, also when resuming
    n_jobs: int = 1  # trials asked and launched together as one launcher batch
    params: Optional[Dict[str, Any]] = None  # key -> sweep string (or a fixed value)
    custom_search_space: Optional[str] = None  # dotted path of fn(cfg, trial) suggesting more
    fail_running_trials: bool = True  # on load, RUNNING trials (a killed run's) become FAIL


ConfigStore.instance().store(
    group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="mnistops"
)


class OptunaSweeper(Sweeper):
    """Ask Optuna for ``n_jobs`` trials, launch them as one batch, tell it the results."""

    def __init__(self, sampler: Any, direction: Any, storage: Optional[str],
                 study_name: Optional[str], n_trials: int, n_jobs: int,
                 params: Optional[DictConfig], custom_search_space: Optional[str] = None,
                 fail_running_trials: bool = True) -> None:
        if n_trials < 0 or n_jobs < 1:
            raise ValueError(f"need n_trials >= 0 and n_jobs >= 1, got {n_trials}, {n_jobs}")
        self.sampler_conf, self.storage, self.study_name = sampler, storage, study_name
        self.direction = self._direction(direction)
        self.n_trials, self.n_jobs, self.params = n_trials, n_jobs, params
        self.custom = get_method(custom_search_space) if custom_search_space else None
        self.fail_running_trials = fail_running_trials
        self.job_idx = 0

    @staticmethod
    def _direction(direction: Any) -> str:
        if isinstance(direction, (list, tuple, ListConfig)):
            if len(direction) != 1:
                raise ValueError(f"Optuna sweeper: multi-objective direction {list(direction)} "
                                 "is not supported; use one of minimize|maximize")
            direction = direction[0]
        name = str(getattr(direction, "name", direction)).lower()
        if name not in ("minimize", "maximize"):
            raise ValueError(f"Optuna sweeper: direction must be minimize|maximize, got {name!r}")
        return name

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)

    def _make_sampler(self, n_existing: int) -> Optional["optuna.samplers.BaseSampler"]:
        if self.sampler_conf is None:
            return None
        conf = OmegaConf.to_container(OmegaConf.create(self.sampler_conf), resolve=True)
        if n_existing and conf.get("seed") is not None:
            conf["seed"] += n_existing
        return instantiate(conf)

    def _load_study(self) -> "optuna.Study":
        import optuna
        from optuna.trial import TrialState

        if self.storage and self.storage.startswith("sqlite:///"):  # sqlite makes the file, not its folder
            Path(self.storage[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        study = optuna.create_study(study_name=self.study_name, storage=self.storage,
                                    direction=self.direction, load_if_exists=True)
        if study.direction.name.lower() != self.direction:
            raise ValueError(f"study {study.study_name!r} in storage optimizes "
                             f"{study.direction.name.lower()}, but direction={self.direction}")
        if self.fail_running_trials:
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                log.warning(f"Marking trial {t.number}, left RUNNING by an earlier run, as FAIL")
                study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        n_existing = len(study.get_trials(deepcopy=False))
        sampler = self._make_sampler(n_existing)
        if sampler is not None:
            study.sampler = sampler
        log.info(f"Study {study.study_name!r} in {self.storage or 'memory'}: {n_existing} trials "
                 f"so far, {self.n_trials} new; sampler {type(study.sampler).__name__}, "
                 f"{self.direction}")
        return study

    def _overrides(self, trial: "Trial", fixed: Dict[str, str]) -> List[str]:
        if self.custom is not None:
            self.custom(self.config, trial)
        if trial.params.keys() & fixed.keys():
            raise ValueError(f"fixed and searched params overlap: {trial.params.keys() & fixed.keys()}")
        for k, v in fixed.items():
            trial.set_user_attr(k, v)
        return [f"{k}={v}" for k, v in {**trial.params, **fixed}.items()]

    @staticmethod
    def _tell(study: "optuna.Study", trial: "Trial", ret: JobReturn) -> Optional[BaseException]:
        """Record one job's outcome; a failed job or a non-float return is a FAIL trial."""
        from optuna.trial import TrialState

        error: Optional[BaseException] = None
        if ret.status != JobStatus.COMPLETED:
            error = ret._return_value if isinstance(ret._return_value, BaseException) \
                else RuntimeError(f"job status {ret.status.name}")
        else:
            try:
                value = float(ret._return_value)
                if value != value:
                    raise ValueError("objective is NaN")
            except (TypeError, ValueError) as e:
                error = ValueError(f"task must return a float, got {ret._return_value!r} ({e})")
        if error is None:
            study.tell(trial, value)
            log.info(f"Trial {trial.number} finished: {value}")
            return None
        trial.set_user_attr("error", f"{type(error).__name__}: {error}"[:1000])
        study.tell(trial, state=TrialState.FAIL)
        log.warning(f"Trial {trial.number} {list(ret.overrides or [])} failed: {error!r}")
        return error

    def sweep(self, arguments: List[str]) -> List[Sequence[JobReturn]]:
        from optuna.trial import TrialState

        from hydra_plugins.mnistops_optuna_sweeper._search_space import parse_search_space

        lines = [f"{k}={'null' if v is None else v}" for k, v in (self.params or {}).items()]
        dists, fixed = parse_search_space(lines + list(arguments))
        log.info(f"Search space: {dists}; fixed: {fixed}")
        study = self._load_study()
        returns: List[Sequence[JobReturn]] = []
        failures: List[Tuple[int, BaseException]] = []
        n_ran = 0
        while n_ran < self.n_trials:
            trials = [study.ask(dists) for _ in range(min(self.n_jobs, self.n_trials - n_ran))]
            try:
                batch = [self._overrides(t, fixed) for t in trials]
                # Subdirs follow trial numbers (when alone on the study): a resume into the
                # same sweep dir doesn't overwrite, and each batch gets new subdirs.
                self.job_idx = max(self.job_idx, trials[0].number)
                results = self.launcher.launch(batch, initial_job_idx=self.job_idx)
            except BaseException:
                for t in trials:  # don't leave them RUNNING
                    study.tell(t, state=TrialState.FAIL, skip_if_finished=True)
                raise
            self.job_idx += len(results)
            n_ran += len(trials)
            returns.append(results)
            for trial, ret in zip(trials, results):
                error = self._tell(study, trial, ret)
                if error is not None:
                    failures.append((trial.number, error))
        if n_ran and len(failures) == n_ran:
            number, error = failures[0]
            raise RuntimeError(f"All {n_ran} Optuna trials failed; first (trial {number}): "
                               f"{type(error).__name__}: {error}") from error
        self._save_results(study)
        return returns

    def _save_results(self, study: "optuna.Study") -> None:
        """Best over the whole study (earlier invocations too), as the official plugin writes it."""
        from optuna.trial import TrialState

        if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            log.warning(f"Study {study.study_name!r} has no completed trial yet")
            return
        best = study.best_trial
        log.info(f"Best trial {best.number}: value {best.value}, params {best.params}")
        out = Path(self.config.hydra.sweep.dir)
        out.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create({
            "name": "optuna", "best_params": best.params, "best_value": best.value,
            "best_trial": best.number, "study_name": study.study_name,
        }), out / "optimization_results.yaml")
