"""The scoring script of the Azure ML online deployments (``init()`` / ``run(raw_data)``), as Azure's
inference server (``azmlinfsrv``, azureml-inference-server-http) runs it.

It answers with the local endpoint's own code: ``mnistops.serving.protocol`` decodes every payload
(``{"data": …}``, the MLflow scoring protocol, Azure's ``{"input_data": …}``) and shapes every answer
and error, and ``mnistops.serving.deployments.load_model`` is the ONNX predictor, so Azure and the
laptop answer alike. A custom script in a pinned environment, because Azure's no-code MLflow
deployment cannot load MLflow 3 models.

The data collector (azureml-ai-monitoring) records each request's image features as
``model_inputs`` and the predicted digits as ``model_outputs`` under one correlation context. Its id
is the request's ``x-request-id`` when the client sent a sane one, else a fresh uuid; it is the
answer's ``request_id``, and Azure stores it in the collected rows' ``correlationid`` column
(``CORRELATION_COLUMN``): ground truth keyed by the answer's ``request_id`` joins to what was collected.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import uuid
from pathlib import Path
from typing import Optional

_ROOT = Path(__file__).resolve().parents[3]  # the code snapshot: mnistops/ sits here
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from mnistops.serving import protocol  # noqa: E402
from mnistops.serving.deployments import LoadError, load_model  # noqa: E402

log = logging.getLogger("mnistops.backends.azure.score")
STATE: dict = {}
CORRELATION_COLUMN = "correlationid"  # the collected data's column holding the correlation context's id
REQUEST_ID_HEADER = "x-request-id"
_RID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


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


def request_id(headers: Optional[dict]) -> str:
    """The client's ``x-request-id`` when it is sane, else a fresh id."""
    for name, value in (headers or {}).items():
        if name.lower() == REQUEST_ID_HEADER and isinstance(value, str) and _RID_RE.match(value):
            return value
    return uuid.uuid4().hex


def _collect(batch, digits, confidence, rid: str) -> str:
    """Both collections under one correlation context; returns its id (the join key)."""
    collectors = STATE.get("collectors")
    if not collectors:
        return rid
    import numpy as np
    import pandas as pd
    from azureml.ai.monitoring.context import BasicCorrelationContext

    from mnistops.quality.features import FEATURE_COLUMNS, image_features

    features = image_features(np.rint(batch[:, 0] * 255).astype(np.uint8))[list(FEATURE_COLUMNS)]
    context = collectors[0].collect(features, BasicCorrelationContext(id=rid))
    collectors[1].collect(pd.DataFrame({"digit": digits, "confidence": confidence}), context)
    return context.get_id()


def _error(err: protocol.ProtocolError, rid: str):
    """A real 4xx answer: the body is the JSON object (AMLResponse serialises it once)."""
    body = protocol.error_body(err.message, err.field, rid)
    try:  # under azmlinfsrv (it aliases azureml.contrib.services to its own API)
        from azureml.contrib.services.aml_response import AMLResponse
    except ImportError:
        return body
    return AMLResponse(body, err.status, json_str=True)


def run(raw_data, request_headers: Optional[dict] = None):
    """One request body (JSON text or bytes) -> the local endpoint's answer shape (or its error)."""
    rid = request_id(request_headers)
    try:
        batch = protocol.decode_any(protocol.parse_json(raw_data))
    except protocol.ProtocolError as err:
        return _error(err, rid)
    probs = STATE["model"].predict(batch)
    digits = probs.argmax(axis=1)
    rid = _collect(batch, digits, probs.max(axis=1), rid)
    info = STATE["info"]
    return protocol.to_jsonable(protocol.score_answer(probs, info["model"], info["version"], info["deployment"], rid))
