"""The registered MLflow model: an ONNX graph behind a small pyfunc wrapper.

Logged as "models from code": MLflow copies this file into the model, so loading needs only
numpy, pandas and onnxruntime (no torch, no mnistops). Accepted inputs, any batch size:
28x28 images or 784-long rows, as numpy arrays, nested lists or DataFrames, uint8 0-255 or
float 0-1. Output: one row per image with `digit` and `probabilities` (10 floats).
The input rules match the endpoint's (mnistops/serving/inputs.py) but are written out here on
purpose: this file travels inside every registered model and may import nothing of mnistops.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

PIXELS = 28 * 28


def to_batch(model_input) -> np.ndarray:
    """Any accepted input form -> float32 (N, 1, 28, 28) in [0, 1]."""
    if isinstance(model_input, pd.DataFrame):
        model_input = np.stack([np.asarray(v, dtype=np.float64).ravel() for v in model_input.iloc[:, 0]]) \
            if model_input.shape[1] == 1 else model_input.to_numpy()
    x = np.asarray(model_input)
    if x.dtype == object:
        raise ValueError("images must be numeric arrays of equal size (ragged or non-numeric input)")
    if x.ndim in (1, 2) and x.shape[-1] == PIXELS:
        x = x.reshape(-1, 28, 28)
    elif x.ndim == 2 and x.shape == (28, 28):
        x = x[None]
    elif x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3 or x.shape[1:] != (28, 28):
        raise ValueError(f"expected images of 28x28 or rows of 784 pixels, got shape {tuple(x.shape)}")
    if x.dtype == np.uint8:
        return (x.astype(np.float32) / 255.0)[:, None]
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise ValueError("pixel values must be finite (found NaN or inf)")
    if x.size and (x.min() < 0 or x.max() > 255):
        raise ValueError("pixel values must be in 0..1 (floats) or 0..255 (integers)")
    if x.size and x.max() > 1.0:  # integers sent as floats or ints: 0-255 scale
        x = x / 255.0
    return x[:, None]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


class MnistOnnxModel(PythonModel):
    def load_context(self, context) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # small graph: threads cost more than they give per request
        self.session = ort.InferenceSession(context.artifacts["onnx"], options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        return softmax(self.session.run(None, {self.input_name: batch})[0])

    # The hint is MLflow's "validate nothing" type (it asks every PythonModel for a hint, on each load):
    # model_input is any of the forms to_batch() accepts, checked there.
    def predict(self, context, model_input: np.ndarray, params=None) -> pd.DataFrame:
        proba = self.predict_proba(to_batch(model_input))
        return pd.DataFrame({"digit": proba.argmax(axis=1).astype(np.int64),
                             "probabilities": [row.tolist() for row in proba.astype(np.float64)]})


set_model(MnistOnnxModel())
