"""Data assets: the verified raw files (uri_folder, version = dataset digest) that jobs mount instead
of downloading; the training images' features (mltable) that model monitoring compares production
inputs with (the drift reference); and the endpoint's ground truth, where the deployments' data
collector appends the feedback clients post to the scoring route. Same digest, same version:
provisioning twice uploads nothing twice."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from mnistops import tags as T

MLTABLE = """paths:
  - file: ./features.csv
transformations:
  - read_delimited:
      delimiter: ','
      header: all_files_same_headers
      encoding: utf8
"""
# where Azure ML's data collector writes (azure.ai.ml.constants._deployment.DEFAULT_MDC_PATH)
COLLECTOR_ROOT = "azureml://datastores/workspaceblobstore/paths/modelDataCollector"
GROUND_TRUTH_VERSION = "1"  # one version, one folder: the collector appends files to it


def raw_data(cfg: DictConfig):
    """The data cache of `cfg.data` as a folder asset (the files are verified before upload)."""
    from azure.ai.ml.entities import Data

    from mnistops.data import mirrors

    return Data(name=cfg.azure.data_asset, version=mirrors.digest(cfg), type="uri_folder",
                path=str(mirrors.cache_dir(cfg)), description=f"{cfg.data.name} raw IDX files, verified",
                tags={T.DATASET_DIGEST: mirrors.digest(cfg), "mnistops.dataset": cfg.data.name})


def reference_dir(cfg: DictConfig) -> Path:
    from mnistops.data import mirrors

    return mirrors.cache_dir(cfg).parent / f"{cfg.data.name}-reference-{mirrors.digest(cfg)}"


def write_reference(cfg: DictConfig) -> Path:
    """features.csv (the monitor's image features + the label as `digit`) and its MLTable file."""
    from mnistops.data import mirrors
    from mnistops.data.idx import read_idx
    from mnistops.quality.features import FEATURE_COLUMNS, image_features

    folder = reference_dir(cfg)
    if not (folder / "MLTable").is_file():
        paths = mirrors.fetch(cfg)
        table = image_features(read_idx(paths["train_images"]))[list(FEATURE_COLUMNS)]
        table["digit"] = read_idx(paths["train_labels"]).astype(int)
        folder.mkdir(parents=True, exist_ok=True)
        table.to_csv(folder / "features.csv", index=False)
        (folder / "MLTable").write_text(MLTABLE)
    return folder


def reference_features(cfg: DictConfig):
    from azure.ai.ml.entities import Data

    from mnistops.data import mirrors

    return Data(name=cfg.azure.reference_asset, version=mirrors.digest(cfg), type="mltable",
                path=str(reference_dir(cfg)), description="training-image features: the drift baseline",
                tags={T.DATASET_DIGEST: mirrors.digest(cfg)})


def ground_truth_path(endpoint: str) -> str:
    """One folder per endpoint, shared by its deployments: feedback survives a blue/green swap."""
    return f"{COLLECTOR_ROOT}/{endpoint}/ground_truth"


def ground_truth(name: str, endpoint: str):
    """The feedback the deployments' `ground_truth` collection appends (columns correlation_id, label)."""
    from azure.ai.ml.entities import Data

    return Data(name=name, version=GROUND_TRUTH_VERSION, type="uri_folder", path=ground_truth_path(endpoint),
                description=f"true labels posted as feedback to endpoint {endpoint}, by correlation_id",
                tags={T.ENDPOINT: endpoint})


def reference(asset) -> str:
    return f"azureml:{asset.name}:{asset.version}"
