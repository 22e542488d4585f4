"""MLflow for one env: where its store is, runs (nested under pipelines and sweeps), params,
lookups of earlier runs, and the git commit for lineage. Every env has its own store."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import mlflow
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from mnistops import layout, tags
from mnistops.errors import MnistopsError

SWEEP_TAG = "mnistops.sweep_dir"
STAGE_TAG = "mnistops.stage"


def store_uri(cfg: DictConfig, env: Any = None) -> str:
    """The tracking + registry URI of this env, or of `env` (another env's section, from
    config.other_env): its `tracking_uri` (a server), else its own sqlite store."""
    env = cfg.env if env is None else env
    if env.tracking_uri:
        return str(env.tracking_uri)
    # timeout: sqlite's busy wait, so parallel writers (sweeps, DDP ranks, servers) queue, not fail
    return f"sqlite:///{layout.tracking_db(cfg, env.name)}?timeout=60"


def tracking_uri(cfg: DictConfig) -> str:
    return store_uri(cfg)


def configure(cfg: DictConfig) -> str:
    """Point MLflow at the env's store and return the experiment id (created on first use)."""
    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return ensure_experiment(MlflowClient(), cfg, cfg.env.name, uri)


@contextlib.contextmanager
def global_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's global tracking URI set to `uri` for the while. azureml-mlflow's artifact repository
    (azureml:// run files) takes its workspace (host, scope, token) from MLflow's global tracking store,
    not from the URI it is handed: another workspace's run files must be read with that workspace's
    URI set globally, or they are looked up in this one's."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def ensure_experiment(client: MlflowClient, cfg: DictConfig, env: str, uri: str) -> str:
    """The id of the experiment (`experiment_name`) in `env`'s store at `uri`, created on first use (a
    sqlite store keeps its artifacts beside it, in layout.artifacts_dir). A store that refuses (a role
    the identity lacks on a workspace's MLflow, a server that is down) is one line naming it: the first
    call every stage makes on its store."""
    try:
        return _ensure_experiment(client, cfg, env, uri)
    except mlflow.exceptions.MlflowException as err:
        raise MnistopsError(f"cannot use env {env}'s tracking store ({uri}): {refusal(err)}") from None


def refusal(err: "mlflow.exceptions.MlflowException") -> str:
    """What a store said when it refused a call: the first line of MLflow's message (the service's code
    and reason; the rest is its traceback text)."""
    return (err.message or str(err)).strip().splitlines()[0][:500]


def _ensure_experiment(client: MlflowClient, cfg: DictConfig, env: str, uri: str) -> str:
    name = cfg.experiment_name
    if uri.startswith("sqlite:"):
        layout.env_dir(cfg, env).mkdir(parents=True, exist_ok=True)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    artifacts = layout.artifacts_dir(cfg, env).as_uri() if uri.startswith("sqlite:") else None
    try:
        return client.create_experiment(name, artifact_location=artifacts)
    except mlflow.exceptions.MlflowException:  # created meanwhile by a parallel process
        return client.get_experiment_by_name(name).experiment_id


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def hydra_output_dir() -> Optional[str]:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.output_dir if HydraConfig.initialized() else None


_RUN_DIRS: list = []  # output dirs of the runs open in this process (start_run), innermost last


def output_dir(cfg: DictConfig, stage: str) -> Path:
    """The open run's output dir; else Hydra's run dir; else (API, tests) a fresh one under the env."""
    if _RUN_DIRS:
        return _RUN_DIRS[-1]
    out = hydra_output_dir()
    if out is None:
        import time
        import uuid

        out = layout.outputs_dir(cfg) / f"{time.strftime('%Y-%m-%d/%H-%M-%S')}-{stage}-{uuid.uuid4().hex[:8]}"
    Path(out).mkdir(parents=True, exist_ok=True)
    return Path(out)


_API_OVERRIDES: list = []  # the overrides of the mnistops.run() call under way (no Hydra there)


def task_overrides() -> list:
    """What the stage was run with: Hydra's task overrides on the CLI, mnistops.run()'s in the API."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else list(_API_OVERRIDES)


@contextlib.contextmanager
def api_overrides(overrides: list) -> Iterator[None]:
    """mnistops.run() runs a stage with these overrides (what task_overrides() answers meanwhile)."""
    saved = list(_API_OVERRIDES)
    _API_OVERRIDES[:] = list(overrides)
    try:
        yield
    finally:
        _API_OVERRIDES[:] = saved


def _sweep_parent(cfg: DictConfig, experiment_id: str) -> Optional[str]:
    """In a multirun, the run that every trial of this sweep is a child of (created once)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    sweep_dir = os.path.abspath(HydraConfig.get().sweep.dir)
    return find_or_create_sweep_run(experiment_id, sweep_dir)


def find_or_create_sweep_run(experiment_id: str, sweep_dir: str) -> str:
    client = MlflowClient()
    found = client.search_runs([experiment_id], filter_string=f"tags.`{SWEEP_TAG}` = '{sweep_dir}'", max_results=1)
    if found:
        return found[0].info.run_id
    run = client.create_run(
        experiment_id, run_name=f"sweep {Path(sweep_dir).name}",
        tags={SWEEP_TAG: sweep_dir, STAGE_TAG: "sweep", "mnistops.git_commit": git_commit()},
    )
    return run.info.run_id


@contextlib.contextmanager
def start_run(cfg: DictConfig, stage: str, run_id: Optional[str] = None) -> Iterator[Run]:
    """A run for `stage`, nested under the active run (a pipeline) or the sweep's parent run.
    With `run_id`, continue that run instead (resume)."""
    experiment_id = configure(cfg)
    out = output_dir(cfg, stage)
    tags = {
        STAGE_TAG: stage,
        "mnistops.env": cfg.env.name,
        "mnistops.git_commit": git_commit(),
        "mnistops.output_dir": str(out),
        "mnistops.overrides": " ".join(task_overrides()),
    }
    if run_id is None and mlflow.active_run() is None:
        parent = _sweep_parent(cfg, experiment_id)
        if parent:
            tags["mlflow.parentRunId"] = parent
    nested = mlflow.active_run() is not None
    with mlflow.start_run(run_id=run_id, experiment_id=experiment_id, nested=nested,
                          run_name=None if run_id else stage, tags=tags) as run:
        _RUN_DIRS.append(out)
        try:
            yield run
        finally:
            _RUN_DIRS.pop()


def flatten(d: Any, prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = d
    return out


def log_config(cfg: DictConfig) -> None:
    """The whole resolved config: as flattened params (searchable) and as config.yaml."""
    container = OmegaConf.to_container(cfg, resolve=True)
    params = {k: ("" if v is None else str(v))[:6000] for k, v in flatten(container).items()}
    existing = mlflow.active_run().data.params if mlflow.active_run() else {}
    mlflow.log_params({k: v for k, v in params.items() if k not in existing})
    mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")


def set_tags(values: Dict[str, Any]) -> None:
    """Tags on the active run (values cut to what every MLflow store accepts)."""
    mlflow.set_tags({k: str(v)[:4900] for k, v in values.items()})


def log_metrics(metrics: Dict[str, float]) -> None:
    if metrics:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})


def latest_run(cfg: DictConfig, stage: str, *, finished: Optional[bool] = None,
               extra_filter: str = "") -> Optional[Run]:
    """The newest run of `stage` in the env's experiment (optionally only finished/unfinished)."""
    experiment_id = configure(cfg)
    flt = f"tags.`{STAGE_TAG}` = '{stage}'"
    if finished is True:
        flt += " and attributes.status = 'FINISHED'"
    if extra_filter:
        flt += f" and {extra_filter}"
    runs = MlflowClient().search_runs([experiment_id], filter_string=flt, order_by=["attributes.start_time DESC"], max_results=20)
    if finished is False:
        runs = [r for r in runs if r.info.status != "FINISHED"]
    return runs[0] if runs else None


def latest_run_tagged(cfg: DictConfig, key: str, value: str) -> Optional[Run]:
    """The newest finished run of the env's experiment carrying tag `key`=`value`, or None."""
    experiment_id = configure(cfg)
    runs = MlflowClient().search_runs([experiment_id], filter_string=f"tags.`{key}` = '{value}' and "
                                      "attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"],
                                      max_results=1)
    return runs[0] if runs else None


def get_run(run_id: str) -> Run:
    try:
        return MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException as err:
        raise MnistopsError(f"run {run_id!r} not found in {mlflow.get_tracking_uri()}") from err


def log_dataset(cfg: DictConfig, images: Any, labels: Any, context: str) -> None:
    """An MLflow dataset entry (its digest is the files' checksums, so equal data -> equal digest)."""
    import warnings

    from mnistops.data import catalog

    source = layout.data_cache(cfg).as_uri()
    split = "train" if context == "training" else context
    with warnings.catch_warnings():  # "source can be interpreted in multiple ways": it is a local dir
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_numpy(images, targets=labels, source=source, name=f"{cfg.data.name}-{split}",
                                         digest=f"{catalog.digest(cfg)}-{split}")
    mlflow.log_input(dataset, context=context)
    mlflow.set_tag(tags.DATASET_DIGEST, catalog.digest(cfg))


def log_training_dataset(cfg: DictConfig) -> None:
    from mnistops.data import catalog

    train = catalog.load(cfg, "train")
    log_dataset(cfg, train.images, train.labels, "training")
