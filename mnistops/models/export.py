"""Turn a trained network into the registered MLflow model: ONNX graph + pyfunc wrapper."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import torch


def export_onnx(net: torch.nn.Module, path: Path) -> Path:
    """ONNX with a dynamic batch axis (TorchScript-based exporter: no onnxscript needed)."""
    net = net.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 1, 28, 28),), str(path), dynamo=False, input_names=["images"],
                          output_names=["logits"], dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=17)
    return Path(path)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
