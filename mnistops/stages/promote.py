"""stage=promote (run with env=prod): copy the source env's approved champion into this env's
registry — a separate store, possibly another account — with its lineage. Refuses versions the
source env's gate did not approve or whose source-env smoke test did not pass, never retrains, and
is idempotent (the same source version is copied once)."""

from __future__ import annotations

from omegaconf import DictConfig

from mnistops import tags as T
from mnistops.errors import MnistopsError
from mnistops.stages import StageResult


def check_promotable(source_tags: dict, name: str, version, src_env: str) -> None:
    """Only a version the source env's gate approved and whose source-env smoke test passed moves on."""
    if source_tags.get(T.GATE_DECISION) != T.APPROVED:
        raise MnistopsError(f"{src_env} version {name}/{version} was not approved by the {src_env} gate "
                            f"(decision: {source_tags.get(T.GATE_DECISION, 'none')})")
    if source_tags.get(T.smoke(src_env)) != "passed":
        raise MnistopsError(f"{src_env} version {name}/{version} has not passed a smoke test in {src_env} "
                            f"(stage=cd env={src_env}; smoke: {source_tags.get(T.smoke(src_env), 'never run')})")


def lineage(source, src_env: str, env: str) -> dict:
    """The PROD version's tags: the source's own mnistops tags, plus where it came from."""
    carried = {k: v for k, v in source.tags.items() if k.startswith(T.PREFIX) and k != T.ENV}
    return {**carried, T.SOURCE_ENV: src_env, T.SOURCE_VERSION: str(source.version),
            T.SOURCE_RUN_ID: source.run_id or "", T.SOURCE_URI: source.uri, T.ENV: env}


def run(cfg: DictConfig) -> StageResult:
    from mnistops import backends, tracking

    src_env, env = cfg.promote.source_env, cfg.env.name
    if src_env == env:
        raise MnistopsError(f"promote.source_env={src_env!r} is this env: promote copies between envs "
                            f"(e.g. env=prod promote.source_env=qa)")
    backend = backends.get(cfg)
    source_registry, registry = backend.registry(src_env), backend.registry()
    source = source_registry.resolve(cfg.promote.model, "promote.model")
    check_promotable(dict(source.tags), source.name, source.version, src_env)

    existing = registry.find(source.name, {T.SOURCE_ENV: src_env, T.SOURCE_VERSION: str(source.version)})
    if existing:
        registry.set_alias(source.name, cfg.promote.alias, existing[0].version)
        print(f"{src_env} {source.name}/{source.version} is already {env} {source.name}/{existing[0].version}: "
              "no change")
        return StageResult("promote", model_uri=existing[0].uri, metrics={"promote/copied": 0.0})

    tags = lineage(source, src_env, env)
    with tracking.start_run(cfg, "promote") as active:
        tracking.set_tags({k: v for k, v in tags.items() if k != T.CONFIG})
        created = registry.import_version(source_registry, source, tags=tags,
                                          description=f"promoted from {src_env} {source.name}/{source.version}: "
                                                      f"{source.description}")
    registry.set_alias(source.name, cfg.promote.alias, created.version)
    print(f"promoted {src_env} {source.name}/{source.version} -> {env} {created.uri} (@{cfg.promote.alias}), "
          f"weights sha256 {tags.get(T.WEIGHTS_SHA256, '?')[:12]}, gate: {source.tags.get(T.GATE_REASONS, '')}")
    return StageResult("promote", run_id=active.info.run_id, model_uri=created.uri,
                       metrics={"promote/copied": 1.0})
