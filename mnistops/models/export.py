"""Turn a trained network into the registered MLflow model: ONNX graph + pyfunc wrapper."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Mapping, Optional

import torch


def last_linear(net: torch.nn.Module) -> torch.nn.Linear:
    """The classifier layer: its input is the penultimate-layer embedding (for the logistic
    regression, the normalised image), the same activation ``monitoring/embedding.py`` reads."""
    linear = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    if not linear:
        raise ValueError("the network has no nn.Linear layer to take an embedding from")
    return linear[-1]


class MahalanobisHead(torch.nn.Module):
    """min over classes of (e - mu_k)^T P (e - mu_k) / D with P = W W^T (``calibration.fit_mahalanobis``),
    as ||eW||^2 - 2 eW.(mu_k W) + ||mu_k W||^2: two matrix products, no per-class loop."""

    def __init__(self, means, transform):
        super().__init__()
        w = torch.as_tensor(transform, dtype=torch.float32)
        centers = torch.as_tensor(means, dtype=torch.float32) @ w
        self.register_buffer("w", w)
        self.register_buffer("centers_t", centers.T.contiguous())
        self.register_buffer("centers_sq", (centers * centers).sum(dim=1))
        self.dim = float(w.shape[1])

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        z = embedding.flatten(1) @ self.w
        d = (z * z).sum(dim=1, keepdim=True) - 2.0 * (z @ self.centers_t) + self.centers_sq
        return d.min(dim=1).values.clamp_min(0.0) / self.dim


class Calibrated(torch.nn.Module):
    """The network as exported: ``logits`` divided by the fitted temperature (softmax of the graph's
    output is the calibrated probability, whoever reads the graph: endpoint, score.py, pyfunc,
    batch, the monitor's embedder) and, with a ``head``, ``ood_score`` from the embedding. The head
    runs in a pre-hook of the classifier layer, so in the graph its products come before the
    classifier's: that layer stays the last Gemm/MatMul, where the monitor's embedder looks."""

    def __init__(self, net: torch.nn.Module, temperature: float, head: Optional[MahalanobisHead] = None):
        super().__init__()
        self.net, self.head = net, head
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, x: torch.Tensor):
        if self.head is None:
            return self.net(x) / self.temperature
        seen = {}
        hook = last_linear(self.net).register_forward_pre_hook(lambda _, inputs: seen.update(score=self.head(inputs[0])))
        try:
            logits = self.net(x)
        finally:
            hook.remove()
        return logits / self.temperature, seen["score"]


def export_onnx(net: torch.nn.Module, path: Path, calibration: Optional[Mapping[str, str]] = None,
                ood_head: Optional[Mapping[str, "object"]] = None) -> Path:
    """ONNX with a dynamic batch axis (TorchScript-based exporter: no onnxscript needed).

    ``calibration`` (``protocol.Calibration.metadata()``: temperature, ood_method, ood_threshold):
    the output ``logits`` is divided by the temperature and the values are written to the graph's
    metadata_props, where ``protocol.Calibration.from_metadata`` reads them. ``ood_head``
    (``means``, ``transform`` of ``calibration.fit_mahalanobis``) adds the output ``ood_score``."""
    net = net.eval()
    temperature = float((calibration or {}).get("temperature", 1.0))
    head = MahalanobisHead(ood_head["means"], ood_head["transform"]) if ood_head is not None else None
    outputs = ["logits"] if head is None else ["logits", "ood_score"]
    if temperature != 1.0 or head is not None:
        net = Calibrated(net, temperature, head).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 1, 28, 28),), str(path), dynamo=False, input_names=["images"],
                          output_names=outputs, dynamic_axes={name: {0: "batch"} for name in ["images", *outputs]},
                          opset_version=17)
    if calibration:
        import onnx

        model = onnx.load(str(path))
        for key, value in calibration.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, str(value)
        onnx.save(model, str(path))
    return Path(path)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
