"""The scoring script of the Azure ML batch deployment (``init()`` / ``run(mini_batch)``), as Azure's
batch driver runs it on each node of the cluster: ``mini_batch`` is a list of file paths (pictures,
.npz or .parquet shards); each call returns one CSV line per image (batch_specs.COLUMNS), which the
driver appends to the job's ``predictions.csv``.

It scores with the local batch scorer (mnistops/batch: the endpoint's decoding and ONNX predictor),
so a batch job on Azure answers as stage=batch here and as the online endpoint do. One ONNX Runtime
thread per process: the deployment runs `batch.max_concurrency_per_instance` processes per node.
"""

from __future__ import annotations

import csv
import io
import os
import sys
from pathlib import Path
from typing import List

_ROOT = Path(__file__).resolve().parents[3]  # the code snapshot: mnistops/ sits here
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

STATE: dict = {}


def find_model_dir(root: Path) -> Path:
    """Azure mounts the registered MLflow model under AZUREML_MODEL_DIR/<folder>: find its ONNX graph."""
    for candidate in [root, *sorted(p.parent.parent for p in root.rglob("artifacts/model.onnx"))]:
        if (candidate / "artifacts" / "model.onnx").is_file():
            return candidate
    raise FileNotFoundError(f"no artifacts/model.onnx under AZUREML_MODEL_DIR={root}")


def init() -> None:
    from mnistops.batch.scorer import BatchScorer

    model_dir = find_model_dir(Path(os.environ.get("AZUREML_MODEL_DIR", ".")))
    STATE["scorer"] = BatchScorer(model_dir, threads=1, batch_size=int(os.environ.get("MNISTOPS_BATCH_SIZE", "1024")))


def rows(ids: List[str], scores) -> List[str]:
    """CSV lines: id, digit, p0..p9, ood_score, ood (the last two empty where the version has no detector)."""
    out = []
    for i, rid in enumerate(ids):
        buf = io.StringIO()
        p = scores.probabilities[i]
        ood_score = "" if scores.ood_score is None else repr(float(scores.ood_score[i]))
        ood = "" if scores.ood is None else str(bool(scores.ood[i])).lower()
        csv.writer(buf, lineterminator="").writerow([rid, int(p.argmax()), *(repr(float(v)) for v in p), ood_score, ood])
        out.append(buf.getvalue())
    return out


def run(mini_batch: List[str]) -> List[str]:
    from mnistops.batch import inputs

    ids, images = inputs.read_files(mini_batch)
    return rows(ids, STATE["scorer"].score(images, progress=False))
