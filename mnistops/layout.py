"""Where an env's local stores live on disk: the one module that knows the layout, so no other
module joins `paths.home` and an env name itself.

    <home>/data/<dataset>/              verified raw files, shared by every env
    <home>/<env>/mlflow.db              MLflow tracking + registry (unless env.tracking_uri is set)
    <home>/<env>/artifacts/             that store's artifacts
    <home>/<env>/downloads/             the store's artifacts fetched here (baselines, hand-overs)
    <home>/<env>/endpoints/<name>/      a local endpoint's state, key, logs
    <home>/<env>/monitoring/            alerts.jsonl, and per endpoint what it collected
    <home>/<env>/monitoring/<endpoint>/ requests/*.jsonl, feedback.jsonl, labelled/*.npz
    <home>/<env>/outputs/               a run's output dir (Hydra's, or the API's)
    <home>/<env>/optuna.db              Optuna studies (conf/hparams_search/optuna.yaml)
    <home>/<env>/ui.log                 the MLflow UI's server log (stage=ui)

Every function takes the composed config; `env` picks another env of the same home (promotion
reads the source env's store). Nothing here creates a folder: callers that write make theirs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from omegaconf import DictConfig


def home(cfg: DictConfig) -> Path:
    return Path(cfg.paths.home)


def env_dir(cfg: DictConfig, env: Optional[str] = None) -> Path:
    return home(cfg) / (env or cfg.env.name)


def tracking_db(cfg: DictConfig, env: Optional[str] = None) -> Path:
    """The env's own sqlite MLflow store (used when env.tracking_uri is not set)."""
    return env_dir(cfg, env) / "mlflow.db"


def artifacts_dir(cfg: DictConfig, env: Optional[str] = None) -> Path:
    return env_dir(cfg, env) / "artifacts"


def models_cache(cfg: DictConfig) -> Path:
    """Registered versions' files fetched to this machine (gate, baseline, monitor): a cache only."""
    return env_dir(cfg) / "models"


def downloads_cache(cfg: DictConfig) -> Path:
    """Run artifacts of the env's store fetched to this machine (baselines, handed-over datasets), one
    folder per run: a cache only, the store keeps the originals."""
    return env_dir(cfg) / "downloads"


def outputs_dir(cfg: DictConfig) -> Path:
    return env_dir(cfg) / "outputs"


def data_cache(cfg: DictConfig, dataset: Optional[str] = None) -> Path:
    """The verified raw files of `dataset` (default: cfg.data.name), shared by every env."""
    return home(cfg) / "data" / (dataset or cfg.data.name)


def endpoint_dir(cfg: DictConfig, name: Optional[str] = None) -> Path:
    return env_dir(cfg) / "endpoints" / (name or cfg.endpoint.name)


def monitoring_dir(cfg: DictConfig) -> Path:
    return env_dir(cfg) / "monitoring"


def endpoint_monitoring_dir(cfg: DictConfig, endpoint: Optional[str] = None) -> Path:
    """What one endpoint collected (default: monitor.endpoint, else endpoint.name)."""
    return monitoring_dir(cfg) / (endpoint or cfg.monitor.endpoint or cfg.endpoint.name)


def alerts_file(cfg: DictConfig) -> Path:
    return monitoring_dir(cfg) / "alerts.jsonl"


def ui_log(cfg: DictConfig) -> Path:
    return env_dir(cfg) / "ui.log"
