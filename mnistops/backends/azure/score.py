"""The scoring script of the Azure ML online deployments (``init()`` / ``run(raw_data)``).

It serves with the local endpoint's own code: ``mnistops.serving.deployments.load_model`` (the ONNX
predictor, warmed up) and ``mnistops.serving.inputs`` (every accepted payload: ``{"data": …}``, the
MLflow scoring protocol and Azure's ``{"input_data": …}``), so Azure and the laptop answer alike.
A custom script in a pinned environment, because Azure's no-code MLflow deployment cannot load
MLflow 3 models. The data collector records each request's image features (the columns the monitor
compares) as ``model_inputs`` and the predicted digits as ``model_outputs``, joined by correlation id.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import uuid
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[2]  # the code snapshot: mnistops/ sits here
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from mnistops.serving.deployments import LoadError, load_model  # noqa: E402
from mnistops.serving.inputs import InputError, invocations_batch, parse_json, score_batch  # noqa: E402

log = logging.getLogger("mnistops.backends.azure.score")
STATE: dict = {}


def find_model_dir(root: Path) -> Path:
    """Azure mounts the registered MLflow model under AZUREML_MODEL_DIR/<folder>: find its ONNX graph."""
    for candidate in [root, *sorted(p.parent.parent for p in root.rglob("artifacts/model.onnx"))]:
        if (candidate / "artifacts" / "model.onnx").is_file():
            return candidate
    raise LoadError(f"no artifacts/model.onnx under AZUREML_MODEL_DIR={root}")


def _collectors():
    """The deployment's data collectors, or None where azureml-ai-monitoring is absent (off Azure)."""
    try:
        from azureml.ai.monitoring import Collector
    except ImportError:
        return None

    def on_error(exc: Exception) -> None:
        log.warning("data collector: %s", exc)

    return Collector(name="model_inputs", on_error=on_error), Collector(name="model_outputs", on_error=on_error)


def init() -> None:
    root = os.environ.get("AZUREML_MODEL_DIR")
    if not root:
        raise LoadError("AZUREML_MODEL_DIR is not set: Azure ML sets it to the deployment's model")
    STATE["model"] = load_model(str(find_model_dir(Path(root))))
    STATE["collectors"] = _collectors()
    STATE["info"] = {"model": os.environ.get("MNISTOPS_MODEL_NAME", ""),
                     "version": os.environ.get("MNISTOPS_MODEL_VERSION", ""),
                     "deployment": os.environ.get("MNISTOPS_DEPLOYMENT", "")}
    log.info("mnistops scoring ready: %s", STATE["info"])


def _collect(batch, digits, confidence) -> str:
    collectors = STATE.get("collectors")
    if not collectors:
        return uuid.uuid4().hex
    import numpy as np

    from mnistops.quality.features import FEATURE_COLUMNS, image_features

    features = image_features(np.rint(batch[:, 0] * 255).astype(np.uint8))[list(FEATURE_COLUMNS)]
    context = collectors[0].collect(features)
    import pandas as pd

    collectors[1].collect(pd.DataFrame({"digit": digits, "confidence": confidence}), context)
    return str(getattr(context, "id", "") or uuid.uuid4().hex)


def _error(err: InputError):
    body = {"error": err.message, "field": err.field}
    try:  # on Azure: a real 4xx answer
        from azureml.contrib.services.aml_response import AMLResponse

        return AMLResponse(json.dumps(body), err.status, json_str=True)
    except ImportError:
        return body


def run(raw_data):
    """One request body (JSON text or bytes) -> the local endpoint's answer shape."""
    try:
        payload = parse_json(raw_data.encode() if isinstance(raw_data, str) else raw_data)
        batch = score_batch(payload) if isinstance(payload, dict) and "data" in payload else invocations_batch(payload)
    except InputError as err:
        return _error(err)
    probs = STATE["model"].predict(batch)
    digits = probs.argmax(axis=1)
    request_id = _collect(batch, digits, probs.max(axis=1))
    return {"predictions": [{"digit": int(d), "probabilities": p.tolist()} for d, p in zip(digits, probs)],
            **STATE["info"], "request_id": request_id}
