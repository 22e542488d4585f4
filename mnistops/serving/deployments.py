"""Deployment slots (blue, green, ...): an ONNX session each, and the endpoint's ``state.json``.

``state.json`` (owned by the server, written atomically: temp file + ``os.replace``)::

    {"deployments": {"blue": {"model_name": "mnist-classifier", "version": "3",
                              "model_uri": "models:/mnist-classifier/3", "path": "/abs/model/dir",
                              "loaded_at": "2025-01-01T12:00:00+00:00"}},
     "traffic": {"blue": 100},
     "mirror_traffic": {},
     "previous": {"deployments": {...}, "traffic": {...}, "mirror_traffic": {...}} | null,
     "generation": 7}

``generation`` counts committed changes: every worker process serves one generation at a time and a
worker that finds a newer one on disk catches up before it serves (see ``cluster.py``).

A model dir is an MLflow pyfunc dir whose graph is ``<path>/artifacts/model.onnx``: input
float32 (N, 1, 28, 28) in [0, 1] (or (N, 784)), output logits (N, 10), already divided by the
model's temperature; its metadata (temperature, ood_method, ood_threshold) is read once at load
(``protocol.Calibration``) and every answer goes through ``protocol.read_outputs``.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from mnistops.serving.protocol import GRAPH_SCORED, Calibration, ProtocolError, Scored, read_outputs

log = logging.getLogger("mnistops.serving")

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
INFO_KEYS = ("model_name", "version", "model_uri", "path", "loaded_at")


class LoadError(ProtocolError):
    """The model dir cannot be served: the reason is the admin's answer (422) and a log line."""

    status = 422


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class OnnxModel:
    """One ONNX Runtime session on the CPU, single-threaded (the batcher gives it its own thread)."""

    def __init__(self, model_dir: Path, intra_op_threads: int = 1):
        import onnxruntime as ort

        model_dir = Path(model_dir)
        onnx_path = model_dir / "artifacts" / "model.onnx"
        if not model_dir.is_dir():
            raise LoadError(f"model dir {model_dir} does not exist")
        if not onnx_path.is_file():
            raise LoadError(f"no ONNX graph at {onnx_path}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own (Fail, InvalidProtobuf, ...) types
            raise LoadError(f"cannot load {onnx_path}: {str(exc).strip().splitlines()[0][:300]}") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or not outputs:
            raise LoadError(f"{onnx_path}: expected 1 input and 1 output, got {len(inputs)} and {len(outputs)}")
        shape = list(inputs[0].shape)
        if inputs[0].type != "tensor(float)":
            raise LoadError(f"{onnx_path}: input must be float32, got {inputs[0].type}")
        if shape[1:] == [1, 28, 28]:
            self.flat = False
        elif shape[1:] == [784]:
            self.flat = True
        else:
            raise LoadError(f"{onnx_path}: input shape must be (N, 1, 28, 28) or (N, 784), got {shape}")
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name
        self.path = model_dir
        try:
            self.calibration = Calibration.from_metadata(self.session.get_modelmeta().custom_metadata_map)
        except ValueError as exc:
            raise LoadError(f"{onnx_path}: bad calibration metadata: {exc}") from None
        if self.calibration.ood_method in GRAPH_SCORED and len(outputs) < 2:
            raise LoadError(f"{onnx_path}: ood_method={self.calibration.ood_method} but the graph has no ood_score output")

    def score(self, batch: np.ndarray) -> Scored:
        """float32 (N, 1, 28, 28) -> calibrated probabilities, ood_score and ood (``protocol.read_outputs``)."""
        if self.flat:
            batch = batch.reshape(len(batch), 784)
        return read_outputs(self.session.run(None, {self.input_name: batch}), self.calibration)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """float32 (N, 1, 28, 28) -> calibrated probabilities float32 (N, 10)."""
        return self.score(batch).probabilities

    def warm_up(self) -> None:
        """A test inference: the model must answer (N, 10) finite probabilities for N = 1 and 3."""
        for n in (1, 3):
            x = np.zeros((n, 1, 28, 28), np.float32)
            x[:, :, 10:18, 13:15] = 1.0
            try:
                p = self.predict(x)
            except Exception as exc:
                raise LoadError(f"{self.path}: test inference failed: {str(exc).strip()[:300]}") from None
            if p.shape != (n, 10) or not np.isfinite(p).all():
                raise LoadError(f"{self.path}: test inference gave shape {p.shape} (expected ({n}, 10)) "
                                "or non-finite values")


def load_model(path: str) -> OnnxModel:
    model = OnnxModel(Path(path))
    model.warm_up()
    return model


@dataclass
class Deployment:
    """A slot: its info (as in state.json), its model and batcher once loaded, its health."""

    name: str
    info: dict
    model: Optional[OnnxModel] = None
    batcher: Optional[object] = None  # MicroBatcher
    error: Optional[str] = None
    healthy: bool = False
    failures: int = field(default=0)
    serving_since: Optional[str] = None  # when this process loaded it (state.json's loaded_at is the deploy's time)

    @property
    def loaded(self) -> bool:
        return self.model is not None and self.batcher is not None

    def on_result(self, ok: bool, error: Optional[BaseException]) -> None:
        if ok:
            self.failures = 0
            self.healthy = True
            self.error = None
        else:
            self.failures += 1
            self.error = f"inference failed: {error}"
            if self.failures >= 3:
                self.healthy = False


# --------------------------------------------------------------------------- state.json

def empty_state() -> dict:
    return {"deployments": {}, "traffic": {}, "mirror_traffic": {}, "previous": None, "generation": 0}


def read_state(endpoint_dir: Path) -> dict:
    """The saved state, or an empty one; a corrupt file is set aside (never trusted, never lost)."""
    path = Path(endpoint_dir) / "state.json"
    if not path.exists():
        return empty_state()
    try:
        raw = json.loads(path.read_text())
        state = empty_state()
        deployments = raw.get("deployments") or {}
        for name, info in deployments.items():
            if not NAME_RE.match(name) or not isinstance(info, dict) or not isinstance(info.get("path"), str):
                raise ValueError(f"bad deployment entry {name!r}")
            state["deployments"][name] = {k: str(info.get(k, "")) for k in INFO_KEYS}
        for key in ("traffic", "mirror_traffic"):
            value = raw.get(key) or {}
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in value.values()):
                raise ValueError(f"bad {key}")
            state[key] = {k: int(v) for k, v in value.items()}
        state["previous"] = _valid_snapshot(raw.get("previous"))
        generation = raw.get("generation", 0)
        if not isinstance(generation, int) or isinstance(generation, bool) or generation < 0:
            raise ValueError("bad generation")
        state["generation"] = generation
        return state
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        aside = path.with_name(f"state.json.corrupt-{datetime.now().strftime('%Y%m%d%H%M%S')}")
        try:
            os.replace(path, aside)
        except OSError:  # another worker set it aside first
            pass
        log.error("state.json unreadable (%s): moved to %s, starting with no deployments", exc, aside.name)
        return empty_state()


def _valid_snapshot(prev) -> Optional[dict]:
    """``previous`` as saved, or None when it is missing or not a usable snapshot."""
    if not isinstance(prev, dict):
        return None
    deployments, traffic, mirror = prev.get("deployments"), prev.get("traffic"), prev.get("mirror_traffic", {})
    ok = (isinstance(deployments, dict) and isinstance(traffic, dict) and isinstance(mirror, dict)
          and all(isinstance(i, dict) and isinstance(i.get("path"), str) for i in deployments.values())
          and all(isinstance(v, int) and not isinstance(v, bool) for v in [*traffic.values(), *mirror.values()]))
    if not ok:
        log.warning("state.json: 'previous' is not a usable snapshot; rollback will not be possible")
        return None
    return {"deployments": {n: {k: str(i.get(k, "")) for k in INFO_KEYS} for n, i in deployments.items()},
            "traffic": dict(traffic), "mirror_traffic": dict(mirror)}


def write_state(endpoint_dir: Path, state: dict) -> None:
    endpoint_dir = Path(endpoint_dir)
    fd, tmp = tempfile.mkstemp(prefix=".state.", suffix=".tmp", dir=endpoint_dir)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(state, f, indent=2, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, endpoint_dir / "state.json")
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def snapshot(deployments: Dict[str, dict], traffic: dict, mirror: dict) -> dict:
    return copy.deepcopy({"deployments": deployments, "traffic": traffic, "mirror_traffic": mirror})
