"""The registered MLflow model: an ONNX graph behind a small pyfunc wrapper.

Logged as "models from code": MLflow copies this file into the model, and the register stage logs
the endpoint's protocol module with it (``code_paths``: ``code/mnistops_protocol.py``, see
``mnistops.serving.protocol.vendor``), so loading needs only numpy, pandas and onnxruntime — no
torch, no mnistops — and decodes inputs by the very rules the endpoint and Azure's score.py use.

Accepted inputs, any batch size: 28x28 images or 784-long rows, as numpy arrays, nested lists or
DataFrames (784 pixel columns, or one column of images); integers are 0-255, floats 0-1 (floats
above 1 are 0-255); see ``protocol.to_batch``. Output: one row per image with ``digit`` and
``probabilities`` (10 floats). A bad input raises MLflow's INVALID_PARAMETER_VALUE (a 400 under
``mlflow models serve``) with the protocol's message naming the field.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

try:  # the copy logged with the model: what was registered is what decodes
    import mnistops_protocol as protocol
except ImportError:  # registering (or testing) inside the project
    from mnistops.serving import protocol


def to_batch(model_input) -> np.ndarray:
    """Any accepted input form -> float32 (N, 1, 28, 28) in [0, 1] (the protocol's one rule); a dict
    of tensors (MLflow's named ``inputs``) holds one: the images."""
    if isinstance(model_input, dict):
        model_input = protocol.single_tensor(model_input, "model_input")
    return protocol.to_batch(model_input, "model_input")


class MnistOnnxModel(PythonModel):
    def load_context(self, context) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # small graph: threads cost more than they give per request
        self.session = ort.InferenceSession(context.artifacts["onnx"], options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        return protocol.softmax(self.session.run(None, {self.input_name: batch})[0])

    # The hint is MLflow's "validate nothing" type (it asks every PythonModel for a hint, on each load):
    # model_input is any of the forms to_batch() accepts, checked there.
    def predict(self, context, model_input: np.ndarray, params=None) -> pd.DataFrame:
        try:
            batch = to_batch(model_input)
        except protocol.ProtocolError as err:
            from mlflow.exceptions import MlflowException
            from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

            raise MlflowException(err.message, error_code=INVALID_PARAMETER_VALUE) from None
        proba = self.predict_proba(batch)
        return pd.DataFrame({"digit": proba.argmax(axis=1).astype(np.int64),
                             "probabilities": [row.tolist() for row in proba.astype(np.float64)]})


set_model(MnistOnnxModel())
