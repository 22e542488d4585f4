"""The rows score.py hands the deployments' data collector, and how a reader gets them back: one
format in one place for the writer (score.py, inside the deployment) and the readers (the monitoring
schedule's signals on Azure, `stage=monitor` here).

Three collections (the deployment spec enables them, online_specs.py):

    model_inputs   correlation_id, the image features (quality.features.FEATURE_COLUMNS), pixels
    model_outputs  correlation_id, request_id, model_version, digit, confidence, p0 .. p9, ood_score, ood
    ground_truth   correlation_id, label      (feedback: the true digit of a scored request)

One row per image. The collector batches rows of requests that arrive close together into one
JSON record under the first one's correlation id, so every row carries its own id in the
`correlation_id` column (what Azure's model-performance signal joins on, as its docs advise): the
request id when the request held one image, `<request id>_<i>` for image i of a larger request.
Feedback names a request id, and labels that request's image when it held one image (the local
endpoint's rule), so a ground-truth row's `correlation_id` is the request id and the join needs
nothing else. `pixels` is the 28x28 uint8 image, base64 of its 784 bytes: the monitor judges drift
on the model's embedding and hands labelled images over for retraining, which features cannot do.

Only numpy and the standard library here: score.py imports this module inside the deployment.
"""

from __future__ import annotations

import base64
from typing import List

import numpy as np

INPUTS, OUTPUTS, GROUND_TRUTH = "model_inputs", "model_outputs", "ground_truth"
COLLECTIONS = (INPUTS, OUTPUTS, GROUND_TRUTH)

CORRELATION = "correlation_id"  # every row's own id: the join key of inputs, outputs and ground truth
REQUEST = "request_id"
VERSION = "model_version"
PIXELS = "pixels"
DIGIT, CONFIDENCE, LABEL = "digit", "confidence", "label"
OOD_SCORE, OOD = "ood_score", "ood"  # "not a digit" (protocol.read_outputs)
PROBABILITIES = tuple(f"p{k}" for k in range(10))
IMAGE_SHAPE = (28, 28)


def row_ids(request_id: str, n: int) -> List[str]:
    """The `correlation_id` of each of a request's n images (see the module docstring)."""
    return [request_id] if n == 1 else [f"{request_id}_{i}" for i in range(n)]


def encode_pixels(images: np.ndarray) -> List[str]:
    """uint8 (N, 28, 28) -> N base64 strings of 784 bytes each."""
    flat = np.ascontiguousarray(images, dtype=np.uint8).reshape(len(images), -1)
    return [base64.b64encode(row.tobytes()).decode("ascii") for row in flat]


def decode_pixels(text: str) -> np.ndarray:
    """One `pixels` value -> uint8 (28, 28); ValueError when it is not 784 base64-coded bytes."""
    raw = base64.b64decode(text, validate=True)
    if len(raw) != IMAGE_SHAPE[0] * IMAGE_SHAPE[1]:
        raise ValueError(f"{len(raw)} bytes, expected {IMAGE_SHAPE[0] * IMAGE_SHAPE[1]}")
    return np.frombuffer(raw, dtype=np.uint8).reshape(IMAGE_SHAPE)
