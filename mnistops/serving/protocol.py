"""The endpoint's wire protocol: every request format, every answer shape, every client error.

One module for the three places that answer requests: the local server (``mnistops.serving``),
Azure's scoring script (``mnistops/backends/azure/score.py``) and the registered pyfunc model
(``mnistops/models/pyfunc_model.py``). The pyfunc must load without mnistops, so the register stage
logs a copy of this file with the model (``vendor()``: ``code/mnistops_protocol.py``); that is why
this module imports nothing of mnistops and needs only numpy (orjson when present; PIL for uploads).

Request formats (each decoder returns float32 images (N, 1, 28, 28) in [0, 1]):

    {"data": images}                                   Azure ML score.py style         decode_score
    {"inputs" | "instances" | "dataframe_split" |      MLflow scoring protocol, and    decode_invocations
     "dataframe_records" | "input_data": ...}          Azure's MLflow "input_data"
    {"id"?, "inputs": [{"name", "shape",               Open Inference Protocol v2      decode_v2
                        "datatype", "data"}]}
    PNG/JPEG bytes                                     picture upload                  images.decode_upload

The pixel rule, the same for every format and for arrays handed to the pyfunc: images are 28x28
grids or 784-long rows (one image or a batch). **Integers are always on the 0-255 scale** (whatever
their maximum: an integer 0/1 mask is nearly black; send it as floats 0.0/1.0). **Floats are on the
0-1 scale, unless their maximum is above 1**: then they are integers sent as floats, 0-255.
Anything else (NaN, negative, above 255, strings, ragged rows) is a ``ProtocolError`` naming the
field, never a guess.

Answers: ``read_outputs`` turns the graph's logits into a ``Scored`` (calibrated probabilities,
``ood_score``, ``ood``); ``score_answer`` ({"predictions": [{"digit", "probabilities", "ood_score",
"ood"}], "model", "version", "deployment", "request_id"}) for /score, /invocations, /predict and
score.py; ``v2_answer`` for /v2/.../infer; ``error_body`` for every error ({"error", "field"?,
"request_id"}). Which route takes which format, the request id and feedback: ``wire.py`` (not in the copy).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

try:
    import orjson
except ImportError:  # the pyfunc's environment may lack it: the stdlib parser does the same job
    orjson = None

PIXELS = 28 * 28
VENDORED_NAME = "mnistops_protocol"  # the module name of the copy logged with the pyfunc

# what each error status means (the OpenAPI description of every route uses this table)
STATUS_MEANING = {400: "malformed JSON or multipart body", 401: "missing or wrong API key",
                  404: "unknown route, model or deployment", 408: "not answered within request_timeout_ms",
                  409: "conflicts with the current state", 413: "body or batch over the limit",
                  415: "wrong content type", 422: "well-formed but invalid input (the error names the field)",
                  500: "the model failed on valid input (a server fault)",
                  503: "queue full, shutting down or no deployment ready"}


class ProtocolError(Exception):
    """An answer other than 200: its HTTP status, a message naming what to fix, the field at fault.

    Subclasses fix the status of a kind of error (``status`` class attribute); a caller may
    override it per instance."""

    status = 422

    def __init__(self, message: str, field: Optional[str] = None, status: Optional[int] = None,
                 headers: Optional[Dict[str, str]] = None):
        super().__init__(message)
        self.message = message
        self.field = field
        if status is not None:
            self.status = status
        self.headers = headers


class InputError(ProtocolError, ValueError):
    """The request's content is wrong (400 malformed, 413 too big, 415 wrong type, 422 invalid)."""


def error_body(message: str, field: Optional[str] = None, request_id: Optional[str] = None) -> dict:
    body: Dict[str, Any] = {"error": message}
    if field:
        body["field"] = field
    body["request_id"] = request_id
    return body


# --------------------------------------------------------------------------- the pixel rule

def to_batch(model_input: Any, field: str = "data") -> np.ndarray:
    """Any accepted image form -> float32 (N, 1, 28, 28) in [0, 1]; ``InputError`` otherwise.

    Accepts nested lists, numpy arrays and DataFrames (784 pixel columns, or one column whose
    cells are images)."""
    if hasattr(model_input, "columns") and hasattr(model_input, "to_numpy"):  # a DataFrame, without pandas
        model_input = _frame_images(model_input, field)
    if isinstance(model_input, np.ndarray):
        x = model_input
    else:
        try:
            x = np.asarray(model_input)
        except (ValueError, TypeError, OverflowError) as exc:  # ragged nesting, huge ints
            raise InputError(f"'{field}' must be numeric arrays of equal size (ragged input: {exc})", field) from None
    kind = x.dtype.kind
    if kind == "b":
        raise InputError(f"'{field}' must hold numbers, not booleans", field)
    if kind not in "uif":
        raise InputError(f"'{field}' must hold numbers only (got {_kind_name(x)})", field)
    if x.ndim in (1, 2) and x.shape[-1] == PIXELS:
        x = x.reshape(-1, 28, 28)
    elif x.ndim == 2 and x.shape == (28, 28):
        x = x[None]
    elif x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3 or x.shape[1:] != (28, 28):
        raise InputError(f"'{field}': expected images of 28x28 or rows of 784 pixels, got shape {tuple(x.shape)}",
                         field)
    if x.shape[0] == 0:
        raise InputError(f"'{field}' holds no images", field)
    if x.dtype == np.uint8:
        return (x.astype(np.float32) * np.float32(1 / 255.0))[:, None]
    if kind in "ui":  # integers: always the 0-255 scale
        if x.min() < 0 or x.max() > 255:
            raise InputError(f"'{field}': integer pixel values must be in 0..255", field)
        return (x.astype(np.float32) * np.float32(1 / 255.0))[:, None]
    x = x.astype(np.float32, copy=False)
    lo, hi = float(x.min()), float(x.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise InputError(f"'{field}': pixel values must be finite (found NaN or inf)", field)
    if lo < 0 or hi > 255:
        raise InputError(f"'{field}': pixel values must be in 0..1 (floats) or 0..255 (integers)", field)
    if hi > 1.0:  # integers sent as floats: 0-255 scale
        x = x * np.float32(1 / 255.0)
    return x[:, None]


def _frame_images(frame: Any, field: str) -> Any:
    if frame.shape[1] == 1:  # one column whose cells are images
        cells = frame.iloc[:, 0].tolist()
        try:
            return np.stack([np.asarray(c).reshape(-1) for c in cells]) if cells else np.zeros((0, PIXELS))
        except (ValueError, TypeError) as exc:
            raise InputError(f"'{field}': every cell must be an image of the same size ({exc})", field) from None
    return frame.to_numpy()


def _kind_name(x: np.ndarray) -> str:
    if x.dtype.kind in "US":
        return "strings"
    if x.dtype.kind == "O":
        return "nulls, objects, huge integers or mixed types"
    return str(x.dtype)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------- calibration and "not a digit"
# The registered graph's first output ``logits`` is already divided by the temperature fitted at
# training (softmax of it = calibrated probabilities); with ood_method=mahalanobis its second output
# ``ood_score`` is the squared Mahalanobis distance of the penultimate-layer embedding to the nearest
# class mean (per dimension), computed in the graph. Its ONNX metadata_props (onnxruntime:
# ``session.get_modelmeta().custom_metadata_map``) record ``temperature`` (informational: never
# divide again), ``ood_method`` and ``ood_threshold``. A graph without them (registered before
# calibration) reads as temperature 1, energy score, no threshold: ``ood`` is then always false.

OOD_METHODS = ("mahalanobis", "energy", "msp")
GRAPH_SCORED = ("mahalanobis",)  # methods whose score is the graph's second output
META_TEMPERATURE, META_OOD_METHOD, META_OOD_THRESHOLD = "temperature", "ood_method", "ood_threshold"


class Calibration:
    """What a graph's metadata says about its outputs (see ``from_metadata``)."""

    __slots__ = ("temperature", "ood_method", "ood_threshold")

    def __init__(self, temperature: float = 1.0, ood_method: str = "energy", ood_threshold: Optional[float] = None):
        if ood_method not in OOD_METHODS:
            raise ValueError(f"ood_method must be one of {', '.join(OOD_METHODS)}, got {ood_method!r}")
        self.temperature = float(temperature)
        self.ood_method = ood_method
        self.ood_threshold = None if ood_threshold is None else float(ood_threshold)

    @classmethod
    def from_metadata(cls, meta: Optional[Dict[str, str]]) -> "Calibration":
        """From ONNX ``custom_metadata_map`` (strings); missing keys keep the pre-calibration defaults."""
        meta = meta or {}
        threshold = meta.get(META_OOD_THRESHOLD)
        return cls(float(meta.get(META_TEMPERATURE, 1.0)), meta.get(META_OOD_METHOD, "energy"),
                   float(threshold) if threshold not in (None, "", "none", "null") else None)

    def metadata(self) -> Dict[str, str]:
        out = {META_TEMPERATURE: repr(self.temperature), META_OOD_METHOD: self.ood_method}
        if self.ood_threshold is not None:
            out[META_OOD_THRESHOLD] = repr(self.ood_threshold)
        return out

    def __repr__(self) -> str:
        return (f"Calibration(temperature={self.temperature:.4g}, ood_method={self.ood_method!r}, "
                f"ood_threshold={self.ood_threshold!r})")


def ood_score(logits: np.ndarray, method: str = "energy") -> np.ndarray:
    """The logit-based scores (higher = less like the training digits). ``energy``: -logsumexp of
    the (calibrated) logits (Liu et al., NeurIPS 2020); ``msp``: 1 - the top probability."""
    z = np.asarray(logits, np.float32)
    top = z.max(axis=1)
    lse = top + np.log(np.exp(z - top[:, None]).sum(axis=1))
    if method == "energy":
        return (-lse).astype(np.float32)
    if method == "msp":
        return (1.0 - np.exp(top - lse)).astype(np.float32)
    raise ValueError(f"ood_method must be one of {', '.join(OOD_METHODS)}, got {method!r}")


class Scored:
    """One batch's answers: ``probabilities`` (N, 10) float32 (calibrated), ``ood_score`` (N,)
    float32, ``ood`` (N,) bool. Sliced by rows like an array (the micro-batcher splits batches)."""

    __slots__ = ("probabilities", "ood_score", "ood")

    def __init__(self, probabilities: np.ndarray, ood_score: np.ndarray, ood: np.ndarray):
        self.probabilities, self.ood_score, self.ood = probabilities, ood_score, ood

    def __len__(self) -> int:
        return len(self.probabilities)

    def __getitem__(self, rows) -> "Scored":
        return Scored(self.probabilities[rows], self.ood_score[rows], self.ood[rows])

    @property
    def digits(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)

    @staticmethod
    def concat(parts: List["Scored"]) -> "Scored":
        return Scored(np.concatenate([p.probabilities for p in parts]), np.concatenate([p.ood_score for p in parts]),
                      np.concatenate([p.ood for p in parts]))


def read_outputs(outputs: Any, calibration: Calibration) -> Scored:
    """THE rule from the graph's outputs (what ``session.run(None, feed)`` returns: ``[logits (N, 10)]``
    or ``[logits, ood_score (N,)]``; a bare logits array is taken as the first) to the answer:
    calibrated probabilities, ``ood_score`` and ``ood`` (score above the model's threshold; false
    without one)."""
    if isinstance(outputs, np.ndarray):
        outputs = [outputs]
    logits = np.asarray(outputs[0], np.float32)
    if calibration.ood_method in GRAPH_SCORED:
        if len(outputs) < 2:
            raise ValueError(f"ood_method={calibration.ood_method} needs the graph's second output ood_score")
        score = np.asarray(outputs[1], np.float32).reshape(len(logits))
    else:
        score = ood_score(logits, calibration.ood_method)
    if calibration.ood_threshold is None:
        ood = np.zeros(len(score), bool)
    else:
        ood = score > np.float32(calibration.ood_threshold)
    return Scored(softmax(logits), score, ood)


# --------------------------------------------------------------------------- JSON bodies

def parse_json(body: Any) -> Any:
    """Request bytes (or text) -> JSON value; orjson first, the stdlib parser only to tell
    NaN/Infinity literals (which ``json.dumps`` writes) from garbage, so the answer says what is wrong."""
    if isinstance(body, str):
        body = body.encode()
    if not body:
        raise InputError("empty body: send a JSON object", "body", 400)
    if orjson is not None:
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            error = exc
    else:
        error = None
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise InputError(f"malformed JSON: {error or exc}", "body", 400) from None


def _obj(payload: Any, what: str) -> dict:
    if not isinstance(payload, dict):
        raise InputError(f"the body must be a JSON object ({what}), got {type(payload).__name__}", "body")
    return payload


def decode_score(payload: Any) -> np.ndarray:
    """Azure ML score.py style: ``{"data": images}``."""
    obj = _obj(payload, '{"data": [...]}')
    if "data" not in obj:
        raise InputError("missing field 'data' (expected {\"data\": [[784 pixels], ...]})", "data")
    return to_batch(obj["data"], "data")


INVOCATION_KEYS = ("inputs", "instances", "dataframe_split", "dataframe_records", "input_data")


def decode_invocations(payload: Any) -> np.ndarray:
    """MLflow scoring protocol (+ Azure ML's ``input_data``): exactly one of INVOCATION_KEYS."""
    obj = _obj(payload, "MLflow scoring protocol")
    keys = [k for k in INVOCATION_KEYS if k in obj]
    if len(keys) != 1:
        found = "none" if not keys else ", ".join(keys)
        raise InputError(f"the body needs exactly one of {', '.join(INVOCATION_KEYS)} (found {found})", "body")
    key = keys[0]
    value = obj[key]
    if key == "inputs":
        return to_batch(single_tensor(value, key), key)
    if key == "instances":
        if isinstance(value, list) and value and isinstance(value[0], dict):
            value = [_single_value(v, f"{key}[{i}]") for i, v in enumerate(value)]
        return to_batch(value, key)
    if key == "dataframe_split":
        return _dataframe_split(value, key)
    if key == "dataframe_records":
        return _dataframe_records(value, key)
    # input_data: a list/array, or a split-oriented frame {"columns", "index", "data"}
    if isinstance(value, dict):
        if "data" in value:
            return _dataframe_split(value, key)
        return to_batch(single_tensor(value, key), key)
    return to_batch(value, key)


def decode_any(payload: Any) -> np.ndarray:
    """What Azure's single /score route takes: ``{"data": …}`` or any MLflow/Azure MLflow body."""
    if isinstance(payload, dict) and "data" in payload:
        return decode_score(payload)
    return decode_invocations(payload)


def single_tensor(value: Any, field: str) -> Any:
    """MLflow ``inputs`` may be a tensor or ``{name: tensor}`` (one input: images)."""
    if isinstance(value, dict):
        if len(value) == 1:
            return next(iter(value.values()))
        if "images" in value:
            return value["images"]
        raise InputError(f"'{field}': one input tensor expected (e.g. {{\"images\": [...]}}), got {sorted(value)}",
                         field)
    return value


def _single_value(record: Any, field: str) -> Any:
    if not isinstance(record, dict) or len(record) != 1:
        raise InputError(f"'{field}' must be an image or an object with one image field", field)
    return next(iter(record.values()))


def _dataframe_split(value: Any, field: str) -> np.ndarray:
    if not isinstance(value, dict) or "data" not in value:
        raise InputError(f"'{field}' must be an object with 'data' (and optional 'columns', 'index')", field)
    data = value["data"]
    columns = value.get("columns")
    if columns is not None and not isinstance(columns, list):
        raise InputError(f"'{field}.columns' must be a list", f"{field}.columns")
    if not isinstance(data, list) or not data:
        raise InputError(f"'{field}.data' must be a non-empty list of rows", f"{field}.data")
    if columns is not None and len(columns) == 1:  # one column whose cells are images
        rows = []
        for i, row in enumerate(data):
            if not isinstance(row, list) or len(row) != 1:
                raise InputError(f"'{field}.data[{i}]' must be a row of 1 cell (1 column)", f"{field}.data")
            rows.append(row[0])
        return to_batch(rows, f"{field}.data")
    x = to_batch(data, f"{field}.data")
    if columns is not None and len(columns) != PIXELS:
        raise InputError(f"'{field}.columns': 784 pixel columns or 1 image column expected, got {len(columns)}",
                         f"{field}.columns")
    return x


def _dataframe_records(value: Any, field: str) -> np.ndarray:
    if not isinstance(value, list) or not value:
        raise InputError(f"'{field}' must be a non-empty list of records", field)
    first = value[0]
    if not isinstance(first, dict):
        raise InputError(f"'{field}[0]' must be an object", field)
    keys = list(first)
    try:
        if len(keys) == 1:
            (k,) = keys
            rows = [rec[k] for rec in value]
        else:
            rows = [[rec[k] for k in keys] for rec in value]
    except (KeyError, TypeError):
        raise InputError(f"'{field}': every record must have the same fields as the first", field) from None
    return to_batch(rows, field)


# --------------------------------------------------------------------------- Open Inference Protocol

V2_DTYPES = {"UINT8": np.uint8, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
             "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
             "FP16": np.float32, "FP32": np.float32, "FP64": np.float64}


def decode_v2(payload: Any) -> Tuple[np.ndarray, Optional[str], str]:
    """``{"id"?, "inputs": [{"name", "shape", "datatype", "data"}]}`` -> (images, request id, input name)."""
    obj = _obj(payload, "Open Inference Protocol request")
    inputs = obj.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InputError("'inputs' must be a list with exactly one tensor object", "inputs")
    t = inputs[0]
    for key in ("name", "shape", "datatype", "data"):
        if key not in t:
            raise InputError(f"missing field 'inputs[0].{key}'", f"inputs[0].{key}")
    shape, datatype, name = t["shape"], t["datatype"], t["name"]
    if not isinstance(name, str):
        raise InputError("'inputs[0].name' must be a string", "inputs[0].name")
    if not (isinstance(shape, list) and shape and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                    for d in shape)):
        raise InputError("'inputs[0].shape' must be a list of non-negative integers", "inputs[0].shape")
    if not isinstance(datatype, str) or datatype not in V2_DTYPES:
        raise InputError(f"'inputs[0].datatype' must be one of {', '.join(V2_DTYPES)}, got {datatype!r}",
                         "inputs[0].datatype")
    try:
        raw = np.asarray(t["data"])
    except (ValueError, TypeError, OverflowError) as exc:
        raise InputError(f"'inputs[0].data' is ragged or not numeric: {exc}", "inputs[0].data") from None
    if raw.dtype.kind not in "uif":
        raise InputError(f"'inputs[0].data' must hold numbers only (got {_kind_name(raw)})", "inputs[0].data")
    expected = int(np.prod(shape))
    if raw.size != expected:
        raise InputError(f"'inputs[0].data' has {raw.size} values but shape {shape} needs {expected}",
                         "inputs[0].data")
    if datatype[0] in "IU":  # an integer datatype: the 0-255 scale, whole numbers only
        if raw.dtype.kind == "f" and raw.size and not np.all(np.isfinite(raw) & (raw == np.round(raw))):
            raise InputError(f"'inputs[0].data' must be integers for datatype {datatype}", "inputs[0].data")
        if raw.size and (raw.min() < 0 or raw.max() > 255):
            raise InputError("'inputs[0].data': integer pixel values must be in 0..255", "inputs[0].data")
        x = raw.astype(np.int64, copy=False).reshape(shape)
    else:
        x = raw.astype(np.float64 if datatype == "FP64" else np.float32, copy=False).reshape(shape)
    rid = obj.get("id")
    if rid is not None and not isinstance(rid, str):
        raise InputError("'id' must be a string", "id")
    return to_batch(x, "inputs[0].data"), rid, name


# --------------------------------------------------------------------------- picture uploads

IMAGE_TYPES = ("image/png", "image/jpeg", "image/jpg", "image/gif", "image/bmp", "image/webp", "image/tiff")
# the decoder is images.decode_upload (PIL; the pixel rule's to_batch at its end): not in the pyfunc's copy


# --------------------------------------------------------------------------- answers

def _scored(scored: "Scored") -> "Scored":
    if not isinstance(scored, Scored):
        raise TypeError(f"answers are made from a Scored (protocol.read_outputs), not {type(scored).__name__}")
    return scored


def predictions(scored: Scored) -> List[dict]:
    """Answers -> [{"digit", "probabilities", "ood_score", "ood"}] (probability rows stay numpy:
    orjson writes them as lists)."""
    scored = _scored(scored)
    digits = scored.digits.tolist()
    return [{"digit": d, "probabilities": p, "ood_score": s, "ood": o}
            for d, p, s, o in zip(digits, scored.probabilities, scored.ood_score.tolist(), scored.ood.tolist())]


def score_answer(scored: Scored, model: str, version: str, deployment: str, request_id: str) -> dict:
    """The answer of /score, /invocations, /predict (and Azure's score.py)."""
    return {"predictions": predictions(scored), "model": model, "version": version, "deployment": deployment,
            "request_id": request_id}


def v2_answer(scored: Scored, model: str, version: str, request_id: str) -> dict:
    scored = _scored(scored)
    n = len(scored)
    return {"model_name": model, "model_version": version, "id": request_id,
            "outputs": [{"name": "probabilities", "shape": [n, 10], "datatype": "FP32",
                         "data": scored.probabilities.ravel()},
                        {"name": "digit", "shape": [n], "datatype": "INT64", "data": scored.digits.astype(np.int64)},
                        {"name": "ood_score", "shape": [n], "datatype": "FP32", "data": scored.ood_score.tolist()},
                        {"name": "ood", "shape": [n], "datatype": "BOOL", "data": scored.ood.tolist()}]}


def to_jsonable(answer: Any) -> Any:
    """An answer with numpy values -> plain Python (for servers without orjson's numpy support)."""
    if isinstance(answer, dict):
        return {k: to_jsonable(v) for k, v in answer.items()}
    if isinstance(answer, (list, tuple)):
        return [to_jsonable(v) for v in answer]
    if isinstance(answer, np.ndarray):
        return answer.tolist()
    if isinstance(answer, np.generic):
        return answer.item()
    return answer


# --------------------------------------------------------------------------- the pyfunc's copy

def vendor(into: Path) -> Path:
    """Copy this file to ``into/mnistops_protocol.py``: the register stage passes it to MLflow as
    ``code_paths`` so the registered model loads (and decodes) the same way without mnistops."""
    into = Path(into)
    into.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copyfile(Path(__file__), into / f"{VENDORED_NAME}.py"))
