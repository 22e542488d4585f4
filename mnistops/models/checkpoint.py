"""Load a train run's trained network and predict with it in plain batches (no Trainer)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from mlflow.entities import Run

from mnistops import tags
from mnistops.errors import MnistopsError


def checkpoint_path(run: Run, scratch: Path) -> Path:
    """The run's best checkpoint: the local file when it is still there, else MLflow's copy, downloaded
    under `scratch` (without a folder of ours MLflow downloads into a temp dir it never deletes)."""
    local = run.data.tags.get(tags.BEST_CHECKPOINT)
    if local and Path(local).is_file():
        return Path(local)
    import mlflow

    try:
        folder = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="checkpoints",
                                                     dst_path=str(scratch))
    except Exception as err:  # noqa: BLE001 (any store error means the same to the user)
        raise MnistopsError(f"run {run.info.run_id} has no checkpoint (not a finished train run?)") from err
    found = sorted(Path(folder).glob("*.ckpt"))
    if not found:
        raise MnistopsError(f"run {run.info.run_id} has no checkpoint under artifacts/checkpoints")
    return found[0]


def load_network(run: Run) -> torch.nn.Module:
    from mnistops.models.module import Classifier

    with tempfile.TemporaryDirectory() as scratch:
        model = Classifier.load_from_checkpoint(checkpoint_path(run, Path(scratch)), map_location="cpu")
    return model.net.eval()


@torch.inference_mode()
def predict_logits(net: torch.nn.Module, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Raw (uncalibrated) logits for uint8 images (N, 28, 28)."""
    out = []
    for start in range(0, len(images), batch_size):  # a copy per batch: the catalog's arrays are read-only
        x = torch.from_numpy(np.array(images[start:start + batch_size])).unsqueeze(1).float().div_(255.0)
        out.append(net(x).numpy())
    return np.concatenate(out) if out else np.zeros((0, 10), np.float32)


@torch.inference_mode()
def predict_with_embeddings(net: torch.nn.Module, images: np.ndarray, batch_size: int = 1000):
    """(raw logits, penultimate-layer embeddings: the classifier layer's input) for uint8 images."""
    from mnistops.models.export import last_linear

    seen = []
    hook = last_linear(net).register_forward_pre_hook(lambda _, inputs: seen.append(inputs[0].flatten(1).numpy()))
    try:
        logits = predict_logits(net, images, batch_size)
    finally:
        hook.remove()
    return logits, (np.concatenate(seen) if seen else np.zeros((0, 0), np.float32))


def predict_proba(net: torch.nn.Module, images: np.ndarray, batch_size: int = 1000, temperature: float = 1.0) -> np.ndarray:
    """Class probabilities for uint8 images (N, 28, 28): softmax(logits / temperature)."""
    logits = predict_logits(net, images, batch_size) / np.float32(temperature)
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)
