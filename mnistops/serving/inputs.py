"""Request payloads -> one float32 image batch (N, 1, 28, 28) in [0, 1], per protocol.

Pure numpy (+ orjson): no pandas, no mlflow. ``to_batch`` and ``softmax`` are the same rules as
the registered pyfunc model's (``mnistops/models/pyfunc_model.py``): 784-long rows or 28x28
images (or a single one), uint8/integers 0-255 or floats 0-1 (floats above 1 are read as 0-255).
Every rejection is an ``InputError`` carrying the HTTP status and the field at fault.
"""

from __future__ import annotations

import json
from typing import Any, Optional, Tuple

import numpy as np
import orjson

PIXELS = 28 * 28


class InputError(ValueError):
    """A client mistake: becomes a 4xx JSON answer naming the field."""

    def __init__(self, message: str, field: Optional[str] = None, status: int = 422):
        super().__init__(message)
        self.message = message
        self.field = field
        self.status = status


def to_batch(model_input: Any, field: str = "data") -> np.ndarray:
    """Any accepted input form -> float32 (N, 1, 28, 28) in [0, 1]; ``InputError`` otherwise."""
    if isinstance(model_input, np.ndarray):
        x = model_input
    else:
        try:
            x = np.asarray(model_input)
        except (ValueError, TypeError, OverflowError) as exc:  # ragged nesting, huge ints
            raise InputError(f"'{field}' must be numeric arrays of equal size (ragged input: {exc})", field) from None
    kind = x.dtype.kind
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
    if kind == "u" and x.dtype == np.uint8:
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


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def _kind_name(x: np.ndarray) -> str:
    if x.dtype.kind in "US":
        return "strings"
    if x.dtype.kind == "O":
        return "nulls, objects, huge integers or mixed types"
    return str(x.dtype)


# --------------------------------------------------------------------------- JSON bodies

def parse_json(body: bytes) -> Any:
    """orjson first (fast); the stdlib parser only to tell NaN/Infinity literals from garbage."""
    if not body:
        raise InputError("empty body: send a JSON object", "body", 400)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        try:  # json.dumps writes NaN/Infinity: parse them so the answer can say what is wrong
            return json.loads(body)
        except (ValueError, RecursionError):
            raise InputError(f"malformed JSON: {exc}", "body", 400) from None


def _obj(payload: Any, what: str) -> dict:
    if not isinstance(payload, dict):
        raise InputError(f"the body must be a JSON object ({what}), got {type(payload).__name__}", "body")
    return payload


def score_batch(payload: Any) -> np.ndarray:
    """Azure ML score.py style: ``{"data": images}``."""
    obj = _obj(payload, '{"data": [...]}')
    if "data" not in obj:
        raise InputError("missing field 'data' (expected {\"data\": [[784 pixels], ...]})", "data")
    return to_batch(obj["data"], "data")


INVOCATION_KEYS = ("inputs", "instances", "dataframe_split", "dataframe_records", "input_data")


def invocations_batch(payload: Any) -> np.ndarray:
    """MLflow scoring protocol (+ Azure ML's ``input_data``): exactly one of INVOCATION_KEYS."""
    obj = _obj(payload, "MLflow scoring protocol")
    keys = [k for k in INVOCATION_KEYS if k in obj]
    if len(keys) != 1:
        found = "none" if not keys else ", ".join(keys)
        raise InputError(f"the body needs exactly one of {', '.join(INVOCATION_KEYS)} (found {found})", "body")
    key = keys[0]
    value = obj[key]
    if key == "inputs":
        return to_batch(_tensor_dict(value, key), key)
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
        return to_batch(_tensor_dict(value, key), key)
    return to_batch(value, key)


def _tensor_dict(value: Any, field: str) -> Any:
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
    rows = []
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


def v2_batch(payload: Any) -> Tuple[np.ndarray, Optional[str], Optional[str]]:
    """``{"id"?, "inputs": [{"name", "shape", "datatype", "data"}]}`` -> (batch, request id, input name)."""
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
    integer = datatype[0] in "IU"
    if integer:
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
