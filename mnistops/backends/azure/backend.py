"""The stages on env.backend=azure. Job stages (data, train, evaluate, register, baseline, validate,
gate, tests, and the composites made of them: pipeline, ci) are submitted as one Azure ML command
job that runs this same entrypoint on the cluster against the workspace's MLflow; `hparams_search`
becomes a sweep job. Control stages (provision, deploy, smoke, rollback, cd, promote, endpoint) drive
the workspace from here. With azure.dry_run=true every one of them only writes the YAML of what it
would create (render.py): no network, no credentials."""

from __future__ import annotations

import copy
import tempfile
from typing import Dict, Optional, Tuple

from omegaconf import DictConfig

from mnistops.errors import MnistopsError
from mnistops.stages import StageResult


def connect(cfg: DictConfig, env_name: Optional[str] = None):
    """The MLClient of this env's workspace (or of `env_name`'s), settings and credential checked first."""
    from mnistops.backends.azure import workspace

    return workspace.client(cfg, workspace.settings_of(cfg, env_name) if env_name else None)


def run_step(name: str, cfg: DictConfig) -> StageResult:
    from mnistops.backends.azure import JOB_STAGES

    if name in JOB_STAGES:
        return submit(cfg)
    return {"provision": provision, "deploy": deploy, "smoke": smoke, "rollback": rollback, "cd": cd,
            "promote": promote, "endpoint": endpoint_status}[name](cfg)


# --------------------------------------------------------------------------- jobs

def hydra_sweeper() -> Optional[DictConfig]:
    """hydra.sweeper when `hparams_search` picked one (its params are the search space)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:
        raise MnistopsError("env.backend=azure runs a sweep as one Azure ML sweep job: drop -m "
                            "(python -m mnistops env.backend=azure hparams_search=optuna ...)")
    return hc.sweeper if hc.runtime.choices.get("hparams_search") else None


def submit(cfg: DictConfig) -> StageResult:
    """The stage (single or composite) as one command job, or a sweep job; streamed to its end."""
    from mnistops.backends.azure import environment, jobs, render, sweep

    env = environment.train_environment(cfg)
    sweeper = hydra_sweeper()
    job = sweep.sweep_job(cfg, sweeper, environment.reference(env)) if sweeper is not None else \
        jobs.command_job(cfg, environment.reference(env))
    if cfg.azure.dry_run:
        paths = render.emit(cfg, [job])
        return StageResult(cfg.stage.name, artifacts={"job": str(paths[0])})
    ml = connect(cfg)
    _ensure_provisioned(ml, cfg, env)
    created = ml.jobs.create_or_update(job)
    print(f"submitted Azure ML {created.type} job {created.name} on {cfg.compute.cluster}: {created.studio_url}")
    if not cfg.azure.stream_logs:
        return StageResult(cfg.stage.name, run_id=created.name, artifacts={"studio_url": created.studio_url})
    try:
        ml.jobs.stream(created.name)
    except Exception as err:  # the SDK raises a bare Exception with the job's error when it fails
        print(f"job {created.name}: {str(err).strip().splitlines()[0][:500] if str(err).strip() else err!r}")
    status = ml.jobs.get(created.name).status
    if status != "Completed":
        raise MnistopsError(f"Azure ML job {created.name} ended {status}: {created.studio_url}")
    print(f"job {created.name} completed: {created.studio_url}")
    return StageResult(cfg.stage.name, run_id=created.name, artifacts={"studio_url": created.studio_url})


def _ensure_provisioned(ml, cfg: DictConfig, env) -> None:
    """A job needs its environment, cluster and data asset: say which stage makes them, early."""
    from azure.core.exceptions import ResourceNotFoundError

    from mnistops.data import mirrors

    for what, get in (("compute cluster", lambda: ml.compute.get(cfg.compute.cluster)),
                      ("environment", lambda: ml.environments.get(env.name, version=env.version)),
                      ("data asset", lambda: ml.data.get(cfg.azure.data_asset, version=mirrors.digest(cfg)))):
        try:
            get()
        except ResourceNotFoundError:
            raise MnistopsError(f"the {what} of this job is not in workspace {ml.workspace_name}: run "
                                f"stage=provision env={cfg.env.name} env.backend=azure compute={cfg.compute.name}") from None


# --------------------------------------------------------------------------- provision

def provision(cfg: DictConfig) -> StageResult:
    """Ensure (create or update, idempotently) the cluster, both environments and the data assets."""
    from mnistops.backends.azure import assets, compute, environment, render

    entities = [compute.cluster(cfg), environment.train_environment(cfg), environment.inference_environment(cfg),
                assets.raw_data(cfg), assets.reference_features(cfg)]
    if cfg.azure.dry_run:
        paths = render.emit(cfg, entities)
        return StageResult("provision", artifacts={p.stem: str(p) for p in paths})
    from azure.core.exceptions import ResourceNotFoundError

    from mnistops.data import mirrors

    ml = connect(cfg)
    cluster, train_env, infer_env, raw, reference = entities
    ml.compute.begin_create_or_update(cluster).result()
    print(f"compute cluster {cluster.name}: {cluster.size}, {cluster.min_instances}-{cluster.max_instances} nodes")
    for env in (train_env, infer_env):
        ml.environments.create_or_update(env)
        print(f"environment {env.name}:{env.version}")
    for asset, prepare in ((raw, lambda: mirrors.fetch(cfg)), (reference, lambda: assets.write_reference(cfg))):
        try:
            ml.data.get(asset.name, version=asset.version)
            print(f"data asset {asset.name}:{asset.version}: already there")
        except ResourceNotFoundError:
            prepare()
            ml.data.create_or_update(asset)
            print(f"data asset {asset.name}:{asset.version}: uploaded")
    return StageResult("provision", artifacts={"cluster": cluster.name, "environment": f"{train_env.name}:{train_env.version}"})


# --------------------------------------------------------------------------- endpoints

def live_deployment(cfg: DictConfig, ml) -> str:
    """The deployment that takes the most traffic (dry run: from endpoint.traffic, else blue)."""
    traffic = _percent(cfg, "traffic")
    if ml is not None:
        traffic = dict(ml.online_endpoints.get(cfg.azure.endpoint_name).traffic or {})
    live = [d for d, pct in sorted(traffic.items(), key=lambda kv: -kv[1]) if pct > 0]
    return live[0] if live else (cfg.deploy.deployment or "blue")


def _percent(cfg: DictConfig, key: str) -> Dict[str, int]:
    from mnistops.stages.deploy import percent_map

    return percent_map(cfg, key)


def endpoint_target(cfg: DictConfig, ml=None) -> Tuple[str, str]:
    """(base URL whose /score is the endpoint's scoring URI, primary key) of the managed endpoint."""
    ml = ml or connect(cfg)
    ep = ml.online_endpoints.get(cfg.azure.endpoint_name)
    key = ml.online_endpoints.get_keys(cfg.azure.endpoint_name).primary_key
    return ep.scoring_uri.rsplit("/score", 1)[0], key


def deploy(cfg: DictConfig) -> StageResult:
    """Blue/green on the managed endpoint: the new version goes into the idle deployment, must pass
    Azure's readiness probe and a pinned request, and only then traffic (and mirror) moves."""
    from azure.core.exceptions import ResourceNotFoundError

    from mnistops.backends.azure import endpoint as spec
    from mnistops.backends.azure import environment, model, render
    from mnistops.serving_client import sample_request
    from mnistops.stages.deploy import desired_traffic, pick_slot

    if cfg.endpoint.kind != "azure_managed":
        raise MnistopsError(f"endpoint.kind={cfg.endpoint.kind!r}: env.backend=azure deploys endpoint=azure_managed")
    env = environment.inference_environment(cfg)
    mirror = _percent(cfg, "mirror_traffic")
    if cfg.azure.dry_run:
        from mnistops.backends.local.registry import MODEL_URI

        match = MODEL_URI.match(cfg.deploy.model) or {}
        slot = cfg.deploy.deployment or "blue"
        version = match["version"] if match and match["version"] and match["version"] != "latest" else None
        if version is None:
            raise MnistopsError(f"deploy.model={cfg.deploy.model}: a dry run cannot ask the workspace which version "
                                "that is; preview with deploy.model=models:/<name>/<version>")
        dep = spec.deployment(cfg, slot, match["name"], version, environment.reference(env))
        paths = render.emit(cfg, [env, spec.endpoint(cfg, desired_traffic(cfg, slot), mirror), dep])
        return StageResult("deploy", artifacts={p.stem: str(p) for p in paths})

    ml = connect(cfg)
    where = f"workspace {ml.workspace_name} ({cfg.env.name})"
    mv = model.resolve(ml, cfg.deploy.model, where)
    ml.environments.create_or_update(env)
    try:
        current = ml.online_endpoints.get(cfg.azure.endpoint_name)
    except ResourceNotFoundError:
        print(f"creating endpoint {cfg.azure.endpoint_name} (key auth)")
        current = ml.online_endpoints.begin_create_or_update(spec.endpoint(cfg)).result()
    traffic_now, mirror_now = dict(current.traffic or {}), dict(current.mirror_traffic or {})
    serving = {d.name for d in ml.online_deployments.list(cfg.azure.endpoint_name)
               if str(d.model).rstrip("/").endswith(f"{mv.name}/versions/{mv.version}")}
    slot = sorted(serving)[0] if serving and not cfg.deploy.deployment else pick_slot({"traffic": traffic_now}, cfg.deploy.deployment)
    traffic = desired_traffic(cfg, slot)
    if slot in serving and traffic == traffic_now and mirror == mirror_now:
        print(f"models:/{mv.name}/{mv.version} already serves on {cfg.azure.endpoint_name} ({slot}, traffic {traffic}): no change")
        return StageResult("deploy", model_uri=f"models:/{mv.name}/{mv.version}", metrics={"deploy/changed": 0.0})
    if slot not in serving:
        if traffic_now.get(slot, 0) > 0 and not cfg.endpoint.traffic:
            raise MnistopsError(f"deploy.deployment={slot} takes traffic now; deploy into an idle deployment")
        print(f"deploying models:/{mv.name}/{mv.version} to {slot} on {cfg.azure.endpoint_name} (minutes: image, "
              f"{cfg.endpoint.instance_count} x {cfg.endpoint.instance_type}, readiness probe)")
        try:
            ml.online_deployments.begin_create_or_update(
                spec.deployment(cfg, slot, mv.name, mv.version, environment.reference(env))).result()
        except Exception as err:  # the SDK's deployment errors carry the container log hint
            logs = _logs(ml, cfg, slot)
            raise MnistopsError(f"deployment {slot} of models:/{mv.name}/{mv.version} failed: "
                                f"{str(err).strip().splitlines()[0][:300]}; traffic unchanged{logs}") from None
    url, key = endpoint_target(cfg, ml)
    status, body = sample_request(url, key, deployment=slot)
    if status != 200:
        raise MnistopsError(f"deployment {slot} (models:/{mv.name}/{mv.version}) answered {status}: {body}; traffic unchanged")
    previous = {"traffic": traffic_now, "mirror_traffic": mirror_now}
    ml.online_endpoints.begin_create_or_update(spec.endpoint(cfg, traffic, mirror, previous)).result()
    print(f"deployed models:/{mv.name}/{mv.version} to {slot} on endpoint {cfg.azure.endpoint_name} ({cfg.env.name})")
    print(f"  traffic: {traffic}  mirror: {mirror or {}}\n  scoring URL: {url}/score (key: az ml online-endpoint get-credentials "
          f"-n {cfg.azure.endpoint_name})")
    return StageResult("deploy", model_uri=f"models:/{mv.name}/{mv.version}", metrics={"deploy/changed": 1.0},
                       artifacts={"scoring_url": f"{url}/score"})


def _logs(ml, cfg: DictConfig, slot: str) -> str:
    try:
        tail = ml.online_deployments.get_logs(name=slot, endpoint_name=cfg.azure.endpoint_name, lines=20)
        return f"\n{tail}" if tail else ""
    except Exception:  # noqa: BLE001 (the logs are a hint; their absence must not hide the error)
        return ""


def rollback(cfg: DictConfig) -> StageResult:
    """The traffic (and mirror) the endpoint had before the last deploy, from its tags."""
    import json

    from mnistops.backends.azure import endpoint as spec

    if cfg.azure.dry_run:
        raise MnistopsError("stage=rollback reads the endpoint's previous traffic from Azure: no dry run")
    ml = connect(cfg)
    current = ml.online_endpoints.get(cfg.azure.endpoint_name)
    previous = json.loads((current.tags or {}).get(spec.PREVIOUS_TAG, "null") or "null")
    if not previous or not any(p > 0 for p in previous.get("traffic", {}).values()):
        raise MnistopsError(f"endpoint {cfg.azure.endpoint_name} ({cfg.env.name}) has no previous traffic: nothing to roll back to")
    now = {"traffic": dict(current.traffic or {}), "mirror_traffic": dict(current.mirror_traffic or {})}
    ml.online_endpoints.begin_create_or_update(
        spec.endpoint(cfg, previous["traffic"], previous.get("mirror_traffic") or {}, now)).result()
    print(f"rolled back endpoint {cfg.azure.endpoint_name} ({cfg.env.name}): traffic {previous['traffic']}")
    return StageResult("rollback", metrics={})


def smoke(cfg: DictConfig) -> StageResult:
    from mnistops.stages import smoke as local_smoke

    if cfg.azure.dry_run:
        raise MnistopsError("stage=smoke sends real requests to the Azure endpoint: no dry run")
    url, key = endpoint_target(cfg)
    return local_smoke.run(cfg, target=(url, key, cfg.azure.endpoint_name))


def cd(cfg: DictConfig) -> StageResult:
    """Deploy the champion, smoke-test it, record the outcome on the model version, roll back on failure."""
    cfg = copy.deepcopy(cfg)
    cfg.deploy.model = f"models:/{cfg.env.model_name}@champion"
    deployed = deploy(cfg)
    try:
        result = smoke(cfg)
        _tag(cfg, deployed.model_uri, f"mnistops.smoke.{cfg.env.name}", "passed")
    except MnistopsError as err:
        _tag(cfg, deployed.model_uri, f"mnistops.smoke.{cfg.env.name}", "failed")
        if deployed.metrics.get("deploy/changed"):
            rollback(cfg)
            raise MnistopsError(f"{err}; rolled back the endpoint to its previous traffic") from err
        raise
    return StageResult("cd", model_uri=deployed.model_uri, metrics=result.metrics, artifacts=result.artifacts)


def _tag(cfg: DictConfig, model_uri: str, key: str, value: str) -> None:
    ml = connect(cfg)
    name, version = model_uri[len("models:/"):].split("/")
    mv = ml.models.get(name, version=version)
    mv.tags = {**(mv.tags or {}), key: value}
    ml.models.create_or_update(mv)


def endpoint_status(cfg: DictConfig) -> StageResult:
    if cfg.endpoint.action != "status":
        raise MnistopsError(f"endpoint.action={cfg.endpoint.action!r}: on Azure only status (delete the endpoint with "
                            f"az ml online-endpoint delete -n {cfg.azure.endpoint_name})")
    ml = connect(cfg)
    ep = ml.online_endpoints.get(cfg.azure.endpoint_name)
    deployments = {d.name: d.model for d in ml.online_deployments.list(cfg.azure.endpoint_name)}
    print(f"endpoint {ep.name} ({cfg.env.name}): {ep.provisioning_state}, {ep.scoring_uri}")
    print(f"  traffic {ep.traffic}  mirror {ep.mirror_traffic or {}}  deployments {deployments}")
    return StageResult("endpoint", metrics={"endpoint/running": float(ep.provisioning_state == "Succeeded")})


# --------------------------------------------------------------------------- promotion

def promote(cfg: DictConfig) -> StageResult:
    """The source (QA) workspace's approved, smoke-tested version, downloaded and created in this
    (PROD) workspace as an MLflow model asset with its lineage; the same source version once."""
    from mnistops.backends.azure import model, render
    from mnistops.stages.promote import SOURCE_VERSION_TAG, check_promotable

    src_env, name = cfg.promote.source_env, cfg.env.model_name
    if src_env == cfg.env.name:
        raise MnistopsError(f"promote.source_env={src_env!r} is this env: promote copies between envs")
    if cfg.azure.dry_run:
        lineage = {"mnistops.source_env": src_env, "mnistops.source_uri": cfg.promote.model, "mnistops.env": cfg.env.name}
        entity = model.promoted(name, str(render.out_dir(cfg) / "promoted" / name), lineage,
                                f"promoted from {src_env} {cfg.promote.model}")
        (path,) = render.emit(cfg, [entity])
        print(f"  (at run time: only if the {src_env} version's gate approved it and its {src_env} smoke test passed)")
        return StageResult("promote", artifacts={"model": str(path)})

    src, dst = connect(cfg, src_env), connect(cfg)
    mv = model.resolve(src, cfg.promote.model, f"the {src_env} workspace")
    tags = dict(mv.tags or {})
    check_promotable(tags, name, mv.version, src_env)
    existing = [m for m in dst.models.list(name=name)
                if (m.tags or {}).get(SOURCE_VERSION_TAG) == str(mv.version) and (m.tags or {}).get("mnistops.source_env") == src_env]
    if existing:
        print(f"{src_env} {name}/{mv.version} is already {cfg.env.name} {name}/{existing[0].version}: no change")
        return StageResult("promote", model_uri=f"models:/{name}/{existing[0].version}", metrics={"promote/copied": 0.0})
    lineage = {**{k: v for k, v in tags.items() if k.startswith("mnistops.") and k != "mnistops.env"},
               "mnistops.source_env": src_env, SOURCE_VERSION_TAG: str(mv.version),
               "mnistops.source_uri": f"models:/{name}/{mv.version}", "mnistops.source_asset_id": mv.id or "",
               "mnistops.env": cfg.env.name}
    with tempfile.TemporaryDirectory() as tmp:
        src.models.download(name=name, version=mv.version, download_path=tmp)
        folder = _mlmodel_dir(tmp)
        created = dst.models.create_or_update(model.promoted(name, str(folder), lineage,
                                                             f"promoted from {src_env} {name}/{mv.version}: {mv.description or ''}"))
    print(f"promoted {src_env} {name}/{mv.version} -> {cfg.env.name} {name}/{created.version}, weights sha256 "
          f"{lineage.get('mnistops.weights_sha256', '?')[:12]}, gate: {tags.get('mnistops.gate.reasons', '')}")
    return StageResult("promote", model_uri=f"models:/{name}/{created.version}", metrics={"promote/copied": 1.0})


def _mlmodel_dir(root: str):
    from pathlib import Path

    found = sorted(Path(root).rglob("MLmodel"))
    if not found:
        raise MnistopsError(f"the downloaded model has no MLmodel file (under {root})")
    return found[0].parent
