"""Feedback-labelled production data, handed over to the env whose CI retrains.

When the monitor of the env that serves (prod) raises an alert, the images its users labelled
through /feedback become a versioned dataset in the RETRAINING env's tracking store (qa): a run
tagged `mnistops.dataset=production-feedback` holding `data/labelled.npz`, its digest and lineage
(source env, the monitor run). A CI pipeline on any machine then trains with all of them through
`data.extra_train=[production-feedback]`; new data never reaches prod without passing QA's CI, its
gate, QA's smoke test, the approval and promotion.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
from pathlib import Path
from typing import List, Optional

import numpy as np
from omegaconf import DictConfig

from mnistops import tags as T
from mnistops.errors import MnistopsError

KEYWORD = "production-feedback"  # in data.extra_train: every such dataset in the env's store
ARTIFACT = "data/labelled.npz"


def _store(cfg: DictConfig, env: str, uri: str):
    """(client, experiment id) of `env`'s tracking store at `uri`."""
    from mlflow.tracking import MlflowClient

    from mnistops import tracking

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return client, tracking.ensure_experiment(client, cfg, env, uri)


def hand_over(cfg: DictConfig, images: np.ndarray, labels: np.ndarray, *, to_env: str, uri: str,
              monitor_run_id: Optional[str]) -> str:
    """Store the labelled images in `to_env`'s tracking store at `uri` (once per content); the run id.
    A refusal (another env's store: a role this identity lacks there) is one line naming the store."""
    from mlflow.exceptions import MlflowException

    from mnistops import tracking

    try:
        return _write(cfg, images, labels, to_env=to_env, uri=uri, monitor_run_id=monitor_run_id)
    except MlflowException as err:
        raise MnistopsError(f"cannot hand the labelled images over to {to_env}'s tracking store ({uri}): "
                            f"{tracking.refusal(err)}") from None


def _write(cfg: DictConfig, images: np.ndarray, labels: np.ndarray, *, to_env: str, uri: str,
           monitor_run_id: Optional[str]) -> str:
    from mlflow.entities import Dataset, DatasetInput, InputTag

    buf = io.BytesIO()
    np.savez_compressed(buf, images=images.astype(np.uint8), labels=labels.astype(np.int64))
    digest = hashlib.sha256(images.tobytes() + labels.astype(np.int64).tobytes()).hexdigest()[:16]
    client, experiment = _store(cfg, to_env, uri)
    same = client.search_runs([experiment], filter_string=f"tags.`{T.DATASET}` = '{KEYWORD}' and "
                                                          f"tags.`{T.DATASET_DIGEST}` = '{digest}'", max_results=1)
    if same:
        return same[0].info.run_id
    run = client.create_run(experiment, run_name=f"{KEYWORD} from {cfg.env.name}", tags={
        T.DATASET: KEYWORD, T.ENV: to_env, T.SOURCE_ENV: cfg.env.name, T.DATASET_DIGEST: digest,
        T.IMAGES: str(len(images)), T.SOURCE_MONITOR_RUN: monitor_run_id or ""})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(ARTIFACT).name
        path.write_bytes(buf.getvalue())
        from mnistops import tracking

        with tracking.global_tracking_uri(uri):  # azureml-mlflow writes run files where the global URI says
            client.log_artifact(run.info.run_id, str(path), str(Path(ARTIFACT).parent))
    dataset = Dataset(name=KEYWORD, digest=digest, source_type="mnistops",
                      source=f"{cfg.env.name} feedback ({len(images)} labelled images)")
    client.log_inputs(run.info.run_id, datasets=[DatasetInput(dataset, tags=[InputTag("mlflow.data.context",
                                                                                      "training")])])
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def handed_over(cfg: DictConfig) -> List[Path]:
    """Every production-feedback dataset in this env's store, oldest first, as local .npz files."""
    import mlflow

    from mnistops import layout, tracking

    uri = tracking.tracking_uri(cfg)
    client, experiment = _store(cfg, cfg.env.name, uri)
    runs = client.search_runs([experiment], filter_string=f"tags.`{T.DATASET}` = '{KEYWORD}' and "
                                                          "attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time ASC"], max_results=1000)
    files = []
    for r in runs:
        into = layout.downloads_cache(cfg) / f"{KEYWORD}-{r.info.run_id}"
        into.mkdir(parents=True, exist_ok=True)
        files.append(Path(mlflow.artifacts.download_artifacts(run_id=r.info.run_id, artifact_path=ARTIFACT,
                                                              dst_path=str(into), tracking_uri=uri)))
    return files


def extra_train_files(cfg: DictConfig) -> List[Path]:
    """data.extra_train as .npz files: paths as given; `production-feedback` expands to every such
    dataset handed to this env."""
    files: List[Path] = []
    for entry in cfg.data.get("extra_train") or ():
        files.extend(handed_over(cfg) if str(entry) == KEYWORD else [Path(str(entry))])
    return files
