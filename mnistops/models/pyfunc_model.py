"""The registered MLflow model: an ONNX graph behind a small pyfunc wrapper.

Logged as "models from code": MLflow copies this file into the model, and the register stage logs
the endpoint's protocol module with it (``code_paths``: ``code/mnistops_protocol.py``, see
``mnistops.serving.protocol.vendor``), so loading needs only numpy, pandas and onnxruntime — no
torch, no mnistops — and decodes inputs by the very rules the endpoint and Azure's score.py use.

Accepted inputs, any batch size: 28x28 images or 784-long rows, as numpy arrays, nested lists or
DataFrames (784 pixel columns, or one column of images); integers are 0-255, floats 0-1 (floats
above 1 are 0-255); see ``protocol.to_batch``. Output: one row per image with ``digit``,
``probabilities`` (10 floats, calibrated: the graph's logits are divided by the temperature fitted at
training), ``ood_score`` (higher = less like a training digit) and ``ood`` (above the threshold in
the graph's metadata), by ``protocol.read_outputs``, the endpoint's own rule. A bad input raises MLflow's INVALID_PARAMETER_VALUE (a 400 under
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
        self.calibration = protocol.Calibration.from_metadata(self.session.get_modelmeta().custom_metadata_map)

    def score(self, batch: np.ndarray):
        """Calibrated probabilities, ood_score and ood (a ``protocol.Scored``)."""
        return protocol.read_outputs(self.session.run(None, {self.input_name: batch}), self.calibration)

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        return self.score(batch).probabilities

    # The hint is MLflow's "validate nothing" type (it asks every PythonModel for a hint, on each load):
    # model_input is any of the forms to_batch() accepts, checked there.
    def predict(self, context, model_input: np.ndarray, params=None) -> pd.DataFrame:
        try:
            batch = to_batch(model_input)
        except protocol.ProtocolError as err:
            from mlflow.exceptions import MlflowException
            from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

            raise MlflowException(err.message, error_code=INVALID_PARAMETER_VALUE) from None
        scored = self.score(batch)
        return pd.DataFrame({"digit": scored.digits.astype(np.int64),
                             "probabilities": [row.tolist() for row in scored.probabilities.astype(np.float64)],
                             "ood_score": scored.ood_score.astype(np.float64), "ood": scored.ood.astype(bool)})


set_model(MnistOnnxModel())
