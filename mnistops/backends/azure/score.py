"""The scoring script of the Azure ML online deployments (``init()`` / ``run(raw_data)``), as Azure's
inference server (``azmlinfsrv``, azureml-inference-server-http) runs it.

It answers with the local endpoint's own code: ``mnistops.serving.protocol`` decodes every payload
(``{"data": …}``, the MLflow scoring protocol, Azure's ``{"input_data": …}``) and shapes every answer
and error, and ``mnistops.serving.deployments.load_model`` is the ONNX predictor, so Azure and the
laptop answer alike. A custom script in a pinned environment, because Azure's no-code MLflow
deployment cannot load MLflow 3 models.

The data collector (azureml-ai-monitoring) gets what the monitor needs, one row per image
(collection_format.py has the columns): ``model_inputs`` the image features and the image itself,
``model_outputs`` the digit, its confidence, the ten (calibrated) probabilities and the "not a
digit" ``ood_score``/``ood`` with the model version, both
under the request's correlation context. Its id is the request's ``x-request-id`` when the client
sent a sane one, else a fresh uuid, and it is the answer's ``request_id``.

Feedback: a body of exactly ``{"request_id": str, "label": 0..9}`` posted to the scoring route is
the true digit of that earlier request (a managed endpoint has no other route): it goes to the
``ground_truth`` collection, which every deployment of the endpoint appends to one data asset (the
monitoring schedule's ground truth, and what ``stage=monitor`` joins), and is answered 202 like the
local endpoint's ``/feedback``. A deployment whose collector does not take ground truth answers 503.
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

from mnistops.backends.azure import collection_format as F  # noqa: E402
from mnistops.serving import protocol  # noqa: E402
from mnistops.serving.deployments import LoadError, load_model  # noqa: E402

log = logging.getLogger("mnistops.backends.azure.score")
STATE: dict = {}
REQUEST_ID_HEADER = "x-request-id"
_RID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
FEEDBACK_KEYS = {"request_id", "label"}


def find_model_dir(root: Path) -> Path:
    """Azure mounts the registered MLflow model under AZUREML_MODEL_DIR/<folder>: find its ONNX graph."""
    for candidate in [root, *sorted(p.parent.parent for p in root.rglob("artifacts/model.onnx"))]:
        if (candidate / "artifacts" / "model.onnx").is_file():
            return candidate
    raise LoadError(f"no artifacts/model.onnx under AZUREML_MODEL_DIR={root}")


def _collectors() -> dict:
    """collection name -> Collector, for the collections the deployment's data collector takes
    (none where azureml-ai-monitoring is absent or no collection is configured: off Azure)."""
    try:
        from azureml.ai.monitoring import Collector
        from azureml.ai.monitoring.config import get_config
        from azureml.ai.monitoring.init import init as init_collector
    except ImportError:
        return {}
    init_collector()
    config = get_config()
    if config is None or not config.enabled():
        return {}

    def on_error(exc: Exception) -> None:
        log.warning("data collector: %s", exc)

    return {name: Collector(name=name, on_error=on_error) for name in F.COLLECTIONS
            if config.collection_enabled(name)}


def init() -> None:
    root = os.environ.get("AZUREML_MODEL_DIR")
    if not root:
        raise LoadError("AZUREML_MODEL_DIR is not set: Azure ML sets it to the deployment's model")
    STATE["model"] = load_model(str(find_model_dir(Path(root))))
    STATE["collectors"] = _collectors()
    STATE["info"] = {"model": os.environ.get("MNISTOPS_MODEL_NAME", ""),
                     "version": os.environ.get("MNISTOPS_MODEL_VERSION", ""),
                     "deployment": os.environ.get("MNISTOPS_DEPLOYMENT", "")}
    log.info("mnistops scoring ready: %s, collecting %s", STATE["info"], sorted(STATE["collectors"]) or "nothing")


def request_id(headers: Optional[dict]) -> str:
    """The client's ``x-request-id`` when it is sane, else a fresh id."""
    for name, value in (headers or {}).items():
        if name.lower() == REQUEST_ID_HEADER and isinstance(value, str) and _RID_RE.match(value):
            return value
    return uuid.uuid4().hex


def _collect(batch, scored: protocol.Scored, rid: str) -> None:
    """Inputs and outputs of one request, a row per image, under one correlation context (its id: rid)."""
    collectors = STATE.get("collectors") or {}
    if F.INPUTS not in collectors and F.OUTPUTS not in collectors:
        return
    import numpy as np
    import pandas as pd
    from azureml.ai.monitoring.context import BasicCorrelationContext

    context = BasicCorrelationContext(id=rid)
    ids = F.row_ids(rid, len(batch))
    if F.INPUTS in collectors:
        from mnistops.quality.features import FEATURE_COLUMNS, image_features

        images = np.rint(batch[:, 0] * 255).astype(np.uint8)
        inputs = image_features(images)[list(FEATURE_COLUMNS)].reset_index(drop=True)
        inputs.insert(0, F.CORRELATION, ids)
        inputs[F.PIXELS] = F.encode_pixels(images)
        context = collectors[F.INPUTS].collect(inputs, context)
    if F.OUTPUTS in collectors:
        probs = scored.probabilities
        outputs = pd.DataFrame({F.CORRELATION: ids, F.REQUEST: rid, F.VERSION: STATE["info"]["version"],
                                F.DIGIT: probs.argmax(axis=1), F.CONFIDENCE: probs.max(axis=1),
                                **{p: probs[:, k] for k, p in enumerate(F.PROBABILITIES)},
                                F.OOD_SCORE: scored.ood_score, F.OOD: scored.ood})
        collectors[F.OUTPUTS].collect(outputs, context)


def _answer(body: dict, status: int):
    """A non-200 answer: the body is the JSON object (AMLResponse serialises it once)."""
    try:  # under azmlinfsrv (it aliases azureml.contrib.services to its own API)
        from azureml.contrib.services.aml_response import AMLResponse
    except ImportError:
        return body
    return AMLResponse(body, status, json_str=True)


def _error(err: protocol.ProtocolError, rid: str):
    return _answer(protocol.error_body(err.message, err.field, rid), err.status)


def is_feedback(payload) -> bool:
    return isinstance(payload, dict) and set(payload) == FEEDBACK_KEYS


def _feedback(payload: dict, rid: str):
    """Ground truth for an earlier request (the same checks and answer as the local /feedback)."""
    scored, label = payload["request_id"], payload["label"]
    if not isinstance(scored, str) or not 1 <= len(scored) <= 128:
        raise protocol.InputError("'request_id' must be a string of 1..128 characters", "request_id")
    if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label <= 9:
        raise protocol.InputError("'label' must be an integer digit 0..9", "label")
    collector = (STATE.get("collectors") or {}).get(F.GROUND_TRUTH)
    if collector is None:
        raise protocol.ProtocolError("this deployment does not collect ground truth (its data collector has no "
                                     f"enabled '{F.GROUND_TRUTH}' collection): the feedback was not kept", status=503)
    import pandas as pd
    from azureml.ai.monitoring.context import BasicCorrelationContext

    collector.collect(pd.DataFrame({F.CORRELATION: [scored], F.LABEL: [label]}), BasicCorrelationContext(id=scored))
    return _answer({"status": "accepted", "request_id": scored}, 202)


def run(raw_data, request_headers: Optional[dict] = None):
    """One request body (JSON text or bytes) -> the local endpoint's answer shape (or its error); a
    feedback body -> 202."""
    rid = request_id(request_headers)
    try:
        payload = protocol.parse_json(raw_data)
        if is_feedback(payload):
            return _feedback(payload, rid)
        batch = protocol.decode_any(payload)
    except protocol.ProtocolError as err:
        return _error(err, rid)
    scored = STATE["model"].score(batch)  # calibrated probabilities, ood_score, ood (protocol.read_outputs)
    _collect(batch, scored, rid)
    info = STATE["info"]
    return protocol.to_jsonable(protocol.score_answer(scored, info["model"], info["version"], info["deployment"], rid))
