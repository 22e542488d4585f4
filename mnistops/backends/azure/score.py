"""The scoring script of the Azure ML online deployments (``init()`` / ``run(raw_data)``), as Azure's
inference server (``azmlinfsrv``, azureml-inference-server-http) runs it.

It is a shell around the local endpoint's own ``mnistops.serving.wire.answer`` (format ``azure``:
``{"data": …}``, the MLflow scoring protocol, Azure's ``{"input_data": …}`` or a feedback body; the
request id; every answer and error), and ``mnistops.serving.deployments.load_model`` is the ONNX
predictor, so Azure and the laptop answer alike. Everything it imports sits in the code snapshot
(``code_snapshot.py``: mnistops/ beside this script's package) and the inference environment
(``environments.INFERENCE``). A custom script in a pinned environment, because Azure's no-code MLflow
deployment cannot load MLflow 3 models.

The data collector (azureml-ai-monitoring) gets what the monitor needs, one row per image
(data_collector_rows.py has the columns): ``model_inputs`` the image features and the image itself,
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
import sys
from pathlib import Path
from typing import Optional

_ROOT = Path(__file__).resolve().parents[3]  # the code snapshot: mnistops/ sits here
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from mnistops.backends.azure import data_collector_rows as F  # noqa: E402
from mnistops.serving import protocol, wire  # noqa: E402
from mnistops.serving.deployments import LoadError, load_model  # noqa: E402

log = logging.getLogger("mnistops.backends.azure.score")
STATE: dict = {}


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


def _respond(body: dict, status: int):
    """A non-200 answer: the body is the JSON object (AMLResponse serialises it once)."""
    try:  # under azmlinfsrv (it aliases azureml.contrib.services to its own API)
        from azureml.contrib.services.aml_response import AMLResponse
    except ImportError:
        return body
    return AMLResponse(body, status, json_str=True)


async def _score(batch, rid: str):
    """wire's ``score``: the model, then the collection of the request (a plain call: nothing waits)."""
    scored = STATE["model"].score(batch)  # calibrated probabilities, ood_score, ood (protocol.read_outputs)
    _collect(batch, scored, rid)
    info = STATE["info"]
    return scored, (info["model"], info["version"], info["deployment"])


def _keep_feedback(scored: str, label: int, rid: str) -> None:
    """wire's ``feedback``: ground truth for an earlier request, to the ground_truth collection."""
    collector = (STATE.get("collectors") or {}).get(F.GROUND_TRUTH)
    if collector is None:
        raise protocol.ProtocolError("this deployment does not collect ground truth (its data collector has no "
                                     f"enabled '{F.GROUND_TRUTH}' collection): the feedback was not kept", status=503)
    import pandas as pd
    from azureml.ai.monitoring.context import BasicCorrelationContext

    collector.collect(pd.DataFrame({F.CORRELATION: [scored], F.LABEL: [label]}), BasicCorrelationContext(id=scored))


def run(raw_data, request_headers: Optional[dict] = None):
    """One request body (JSON text or bytes) -> the local endpoint's answer shape (or its error); a
    feedback body -> 202."""
    status, body, _ = wire.finish(wire.answer("azure", raw_data, request_headers, _score, _keep_feedback))
    return protocol.to_jsonable(body) if status == 200 else _respond(body, status)
