"""stage=promote (run with env=prod): copy the source env's approved champion into this env's
registry — a separate store — with its lineage. Refuses versions the source env's gate did not
approve, never retrains, and is idempotent (the same source version is copied once)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from omegaconf import DictConfig

from mnistops.errors import MnistopsError
from mnistops.stages import StageResult

SOURCE_VERSION_TAG = "mnistops.source_version"


def source_uri(cfg: DictConfig) -> str:
    if cfg.promote.source_tracking_uri:
        return cfg.promote.source_tracking_uri
    db = Path(cfg.paths.home) / cfg.promote.source_env / "mlflow.db"
    if not db.is_file():
        raise MnistopsError(f"promote.source_env={cfg.promote.source_env!r} has no store at {db}")
    return f"sqlite:///{db}?timeout=60"


def check_promotable(source_tags: dict, name: str, version, src_env: str) -> None:
    """Only a version the source env's gate approved and whose source-env smoke test passed moves on."""
    if source_tags.get("mnistops.gate.decision") != "approved":
        raise MnistopsError(f"{src_env} version {name}/{version} was not approved by the {src_env} gate "
                            f"(decision: {source_tags.get('mnistops.gate.decision', 'none')})")
    if source_tags.get(f"mnistops.smoke.{src_env}") != "passed":
        raise MnistopsError(f"{src_env} version {name}/{version} has not passed a smoke test in {src_env} "
                            f"(stage=cd env={src_env}; smoke: {source_tags.get(f'mnistops.smoke.{src_env}', 'never run')})")


def run(cfg: DictConfig) -> StageResult:
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from mnistops import tracking
    from mnistops.backends.local.registry import MODEL_URI

    if cfg.promote.source_env == cfg.env.name:
        raise MnistopsError(f"promote.source_env={cfg.promote.source_env!r} is this env: promote copies between envs "
                            f"(e.g. env=prod promote.source_env=qa)")
    match = MODEL_URI.match(cfg.promote.model)
    if not match:
        raise MnistopsError(f"promote.model={cfg.promote.model!r} is not a models:/ URI")
    src = MlflowClient(tracking_uri=source_uri(cfg), registry_uri=source_uri(cfg))
    name = match["name"]
    try:
        mv = src.get_model_version_by_alias(name, match["alias"]) if match["alias"] else \
            src.get_model_version(name, match["version"])
    except MlflowException as err:
        raise MnistopsError(f"{cfg.promote.model} not found in the {cfg.promote.source_env} registry") from err
    source_tags = dict(mv.tags)
    src_env = cfg.promote.source_env
    check_promotable(source_tags, name, mv.version, src_env)

    tracking.configure(cfg)
    dst = MlflowClient()
    existing = [v for v in dst.search_model_versions(f"name = '{name}'")
                if v.tags.get(SOURCE_VERSION_TAG) == str(mv.version) and v.tags.get("mnistops.source_env") == cfg.promote.source_env]
    if existing:
        version = existing[0]
        dst.set_registered_model_alias(name, cfg.promote.alias, version.version)
        print(f"{cfg.promote.source_env} {name}/{mv.version} is already {cfg.env.name} {name}/{version.version}: no change")
        return StageResult("promote", model_uri=f"models:/{name}/{version.version}", metrics={"promote/copied": 0.0})

    src_run = src.get_run(mv.run_id) if mv.run_id else None
    lineage = {
        "mnistops.source_env": cfg.promote.source_env, SOURCE_VERSION_TAG: str(mv.version),
        "mnistops.source_run_id": mv.run_id or "", "mnistops.source_uri": f"models:/{name}/{mv.version}",
        **{k: v for k, v in source_tags.items() if k.startswith("mnistops.") and k != "mnistops.env"},
        "mnistops.env": cfg.env.name,
    }
    with tempfile.TemporaryDirectory() as tmp:
        # the version's files by their storage location: a models:/ URI would resolve in this env's registry
        location = src.get_model_version_download_uri(name, mv.version)
        local = mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=tmp)
        with tracking.start_run(cfg, "promote") as active:
            mlflow.log_artifacts(local, "model")
            mlflow.set_tags({k: v[:4900] for k, v in lineage.items() if k != "mnistops.config"})
            if src_run is not None:
                tracking.log_metrics({f"source/{k}": v for k, v in src_run.data.metrics.items() if k.startswith("test/")})
            model_source = f"{active.info.artifact_uri}/model"
    try:
        dst.get_registered_model(name)
    except MlflowException:
        dst.create_registered_model(name, description=f"promoted from {src_env}")
    created = dst.create_model_version(name, model_source, run_id=active.info.run_id, tags=lineage,
                                       description=f"promoted from {cfg.promote.source_env} {name}/{mv.version}: "
                                                   f"{mv.description or ''}"[:4900])
    dst.set_registered_model_alias(name, cfg.promote.alias, created.version)
    print(f"promoted {cfg.promote.source_env} {name}/{mv.version} -> {cfg.env.name} {name}/{created.version} "
          f"(@{cfg.promote.alias}), weights sha256 {lineage.get('mnistops.weights_sha256', '?')[:12]}, "
          f"gate: {source_tags.get('mnistops.gate.reasons', '')}")
    return StageResult("promote", run_id=active.info.run_id, model_uri=f"models:/{name}/{created.version}",
                       metrics={"promote/copied": 1.0})
