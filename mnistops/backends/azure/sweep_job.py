"""`hparams_search=optuna` on Azure: one Azure ML sweep job over the same search space
(hydra.sweeper.params, parsed by our Optuna sweeper's own parser), the same objective (the train
run's best `optimized_metric`, logged as `best_<metric>`) and direction, and n_trials trials.

Translation: float interval -> uniform (loguniform for tag(log, ...): Azure's bounds are natural
logs); int interval/range and choice -> choice (exact values, ints stay ints). Azure's Bayesian
sampling takes no loguniform, so a space with one uses random sampling."""

from __future__ import annotations

import math
import re
from typing import Dict, Tuple

from omegaconf import DictConfig

from mnistops import tags as T
from mnistops.errors import MnistopsError


def input_name(key: str) -> str:
    return re.sub(r"\W", "_", key)


def azure_space(params: Dict[str, str]) -> Tuple[Dict[str, object], Dict[str, str], bool]:
    """(input name -> Azure distribution, input name -> config key, any log scale)."""
    from azure.ai.ml.sweep import Choice, LogUniform, QUniform, Uniform
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    try:  # where the sweeper keeps its parser (moved into a module of its own to keep --help fast)
        from hydra_plugins.mnistops_optuna_sweeper._search_space import parse_search_space
    except ImportError:
        from hydra_plugins.mnistops_optuna_sweeper.optuna_sweeper import parse_search_space

    try:
        space, fixed = parse_search_space([f"{k}={v}" for k, v in params.items()])
    except ValueError as err:
        raise MnistopsError(str(err)) from None
    if fixed:
        raise MnistopsError(f"hydra.sweeper.params {sorted(fixed)} are not sweeps: put fixed values in the config")
    out, keys, log = {}, {}, False
    for key, dist in space.items():
        name = input_name(key)
        keys[name] = key
        if isinstance(dist, CategoricalDistribution):
            out[name] = Choice(list(dist.choices))
        elif isinstance(dist, IntDistribution):
            out[name] = Choice(list(range(dist.low, dist.high + 1, dist.step)))
        elif isinstance(dist, FloatDistribution) and dist.log:
            out[name], log = LogUniform(min_value=math.log(dist.low), max_value=math.log(dist.high)), True
        elif isinstance(dist, FloatDistribution) and dist.step:
            out[name] = QUniform(min_value=dist.low, max_value=dist.high, q=dist.step)
        else:
            out[name] = Uniform(min_value=dist.low, max_value=dist.high)
    return out, keys, log


def sweep_job(cfg: DictConfig, sweeper: DictConfig, env_ref: str, code: str):
    """One sweep job of `n_trials` train runs: a trial is the train command job with the sampled values."""
    from azure.ai.ml import PyTorchDistribution, command

    from mnistops.backends.azure import command_job as jobs

    params = dict(sweeper.get("params") or {})
    if not params:
        raise MnistopsError("hydra.sweeper.params is empty: nothing to sweep")
    space, keys, log = azure_space(params)
    direction = str(sweeper.get("direction", "maximize")).lower()
    distributed = jobs.is_distributed(cfg, ["train"])
    trial_args = [f"{key}=${{{{inputs.{name}}}}}" for name, key in keys.items()]
    common = jobs.common(cfg, env_ref, code, "train")
    defaults = {name: _first(dist) for name, dist in space.items()}
    trial = command(
        command=jobs.command_line(cfg, ["train"], distributed, trial_args, drop=("hparams_search",)),  # one run
        inputs={**common.pop("inputs"), **defaults},
        instance_count=cfg.compute.instance_count if distributed else 1,
        distribution=PyTorchDistribution(process_count_per_instance=cfg.compute.process_count_per_instance)
        if distributed else None,
        **common,
    )
    node = trial(**space).sweep(
        compute=cfg.compute.cluster, sampling_algorithm="random" if log else "bayesian",
        primary_metric=f"best_{cfg.optimized_metric}", goal="Maximize" if direction.startswith("max") else "Minimize")
    node.set_limits(max_total_trials=int(sweeper.get("n_trials", 20)),
                    max_concurrent_trials=cfg.azure.sweep.max_concurrent_trials,
                    timeout=cfg.azure.sweep.timeout_s, trial_timeout=cfg.azure.sweep.trial_timeout_s)
    job = node._to_job()
    job.experiment_name = cfg.azure.experiment_name
    job.display_name = f"mnistops sweep ({cfg.env.name}): {', '.join(keys.values())}"
    job.tags = {**common["tags"], T.STAGE: "sweep"}
    return job


def _first(dist):
    """A placeholder default for the trial's input (the sweep overrides it)."""
    values = getattr(dist, "values", None)
    if values:
        return values[0]
    return dist.min_value
