"""Where stage=monitor gets its drift reference: this machine's cache, else the env's tracking store,
else built (training images and the labelled ``val`` hold-out through the monitored model).

The key names everything the reference depends on — dataset and its digest, model version, sample
size, embedding components and :data:`~mnistops.monitoring.drift.REFERENCE_FORMAT` — so a new
model, dataset or file format gets a new reference instead of a stale one or an error; a cached file
that still does not load (a foreign or torn file) is rebuilt too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

from omegaconf import DictConfig

from mnistops import tags as T
from mnistops.monitoring import drift

ARTIFACTS = "monitoring/reference"
"""Where a monitor run keeps a reference it built (tagged ``mnistops.drift_reference=<key>``)."""


def key(cfg: DictConfig, model_uri: str) -> str:
    from mnistops.data import mirrors

    digest = mirrors.digest(cfg)[:12]
    name = model_uri.split("models:/", 1)[1].replace("/", "-v").replace("@", "-at-")
    return (f"{cfg.data.name}-{digest}-{name}-{cfg.monitor.reference_size}-{cfg.monitor.embedding_components}"
            f"-f{drift.REFERENCE_FORMAT}")


def path_of(cfg: DictConfig, model_uri: str) -> Path:
    from mnistops import layout

    return layout.monitoring_dir(cfg) / "reference" / f"{key(cfg, model_uri)}.npz"


def load_or_build(cfg: DictConfig, embedder, model_uri: str) -> Tuple[drift.Reference, Optional[Tuple[Path, str]]]:
    """(reference, (file, key) to keep in the env's store when it was built here, else None)."""
    k, path = key(cfg, model_uri), path_of(cfg, model_uri)
    if path.is_file():
        try:
            return drift.load_reference(path), None
        except drift.ReferenceFormatError as exc:  # written by another release under the same key
            print(f"  {exc}; rebuilding")
    stored = _stored(cfg, k, path)
    if stored is not None:
        return stored, None
    return build(cfg, embedder, model_uri, path), (path, k)


def _stored(cfg: DictConfig, k: str, path: Path) -> Optional[drift.Reference]:
    import mlflow

    from mnistops import tracking

    run = tracking.latest_run_tagged(cfg, T.DRIFT_REFERENCE, k)
    if run is None:
        return None
    got = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=f"{ARTIFACTS}/{path.name}",
                                              dst_path=str(path.parent), tracking_uri=tracking.tracking_uri(cfg))
    try:
        return drift.load_reference(got)
    except drift.ReferenceFormatError:
        return None


def build(cfg: DictConfig, embedder, model_uri: str, path: Path) -> drift.Reference:
    from mnistops.data import catalog, mirrors

    train, val = catalog.load(cfg, "train"), catalog.load(cfg, "val")
    reference = drift.build_reference(
        train.images, embedder, cfg.monitor.embedding_components, size=cfg.monitor.reference_size, seed=cfg.seed,
        meta={"model": model_uri, "dataset": cfg.data.name, "digest": mirrors.digest(cfg)[:12]},
        holdout=(val.images, val.labels))
    drift.save_reference(reference, path)
    return reference
