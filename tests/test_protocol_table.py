"""One table of request cases, run against the three things that answer them:

- ``server``: the local endpoint over HTTP (``python -m mnistops.serving``, two workers);
- ``score.py``: Azure's scoring script under Azure's own inference server (``azmlinfsrv``,
  azureml-inference-server-http 1.5), over HTTP;
- ``pyfunc``: the really registered model loaded with ``mlflow.pyfunc.load_model`` (its decoder is
  the copy of the protocol module logged with it), fed what MLflow's own scoring-server parser makes
  of the body (or, for the Azure-only keys, the array a Python caller would pass).

Expected answers are computed here, independently of the code under test: pixels scaled by hand,
then onnxruntime run directly on the registered graph; the images are real test digits that this
reference classifies as their labels.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional

import httpx
import numpy as np
import pytest

from conftest import REPO
from serving_fixtures import AUTH, ServerProcess, azure_inference_server, make_endpoint, mnist, model_dir  # noqa: F401

pytestmark = pytest.mark.integration

N = 4  # images per request


def reference(model_dir: Path, x01: np.ndarray) -> np.ndarray:
    """Softmax of the registered ONNX graph on images already scaled to 0..1 (by the test)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model_dir / "artifacts" / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {"images": x01.reshape(-1, 1, 28, 28).astype(np.float32)})[0].astype(np.float64)
    z = np.exp(logits - logits.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


class Case(NamedTuple):
    name: str
    body: Callable[[np.ndarray], Any]  # uint8 images (N, 28, 28) -> the request body (dict, or raw bytes)
    expect: Any  # ("ok", images -> the 0..1 pixels the model must see) | ("error", status, field)
    surfaces: tuple = ("server", "score.py", "pyfunc")
    real: bool = True  # the pixels are the real digits: the answers must be their labels


def rows(x):
    return x.reshape(len(x), 784).tolist()


COLUMNS = [f"px{i}" for i in range(784)]
MASK = lambda x: (x > 127).astype(np.int64)  # noqa: E731  a binary image, integers 0/1

CASES: List[Case] = [
    # ---- the accepted forms
    Case("data: rows of 784 integers", lambda x: {"data": rows(x)}, ("ok", lambda x: x / 255.0)),
    Case("data: 28x28 integer grids", lambda x: {"data": x.tolist()}, ("ok", lambda x: x / 255.0)),
    Case("data: floats 0..1", lambda x: {"data": (x / 255.0).tolist()}, ("ok", lambda x: x / 255.0)),
    Case("data: integers sent as floats 0..255", lambda x: {"data": x.astype(np.float64).tolist()},
         ("ok", lambda x: x / 255.0)),
    Case("data: one 28x28 image", lambda x: {"data": x[0].tolist()}, ("ok", lambda x: x[:1] / 255.0)),
    Case("inputs: rows", lambda x: {"inputs": rows(x)}, ("ok", lambda x: x / 255.0)),
    Case("inputs: a named tensor", lambda x: {"inputs": {"images": (x / 255.0).tolist()}},
         ("ok", lambda x: x / 255.0)),
    Case("instances", lambda x: {"instances": x.tolist()}, ("ok", lambda x: x / 255.0)),
    Case("dataframe_split: 784 columns", lambda x: {"dataframe_split": {"columns": COLUMNS, "data": rows(x)}},
         ("ok", lambda x: x / 255.0)),
    Case("dataframe_split: one image column",
         lambda x: {"dataframe_split": {"columns": ["image"], "data": [[r] for r in rows(x)]}},
         ("ok", lambda x: x / 255.0)),
    Case("dataframe_records", lambda x: {"dataframe_records": [dict(zip(COLUMNS, r)) for r in rows(x)]},
         ("ok", lambda x: x / 255.0)),
    Case("input_data: a list", lambda x: {"input_data": rows(x)}, ("ok", lambda x: x / 255.0)),
    Case("input_data: a split frame",
         lambda x: {"input_data": {"columns": COLUMNS, "index": list(range(len(x))), "data": rows(x)}},
         ("ok", lambda x: x / 255.0)),
    # ---- the pixel rule where the old decoders disagreed: integers are always 0..255
    Case("integers 0/1 are the 0..255 scale", lambda x: {"data": rows(MASK(x))},
         ("ok", lambda x: MASK(x) / 255.0), real=False),
    Case("floats 0.0/1.0 are the 0..1 scale", lambda x: {"data": MASK(x).astype(np.float64).tolist()},
         ("ok", lambda x: MASK(x).astype(np.float64)), real=False),
    # ---- refused, naming the field
    Case("783 pixels", lambda x: {"data": [[0] * 783]}, ("error", 422, "data")),
    Case("NaN", lambda x: {"data": [[math.nan] * 784]}, ("error", 422, "data")),
    Case("above 255", lambda x: {"data": [[256] * 784]}, ("error", 422, "data")),
    Case("negative", lambda x: {"data": [[-0.5] * 784]}, ("error", 422, "data")),
    Case("strings", lambda x: {"data": [["7"] * 784]}, ("error", 422, "data")),
    Case("ragged rows", lambda x: {"inputs": [[0] * 784, [0] * 783]}, ("error", 422, "inputs")),
    Case("two protocol keys", lambda x: {"inputs": rows(x), "instances": rows(x)}, ("error", 422, "body")),
    Case("malformed JSON", lambda x: b'{"data": [[1, 2', ("error", 400, "body"), ("server", "score.py")),
]


# --------------------------------------------------------------------------- the three surfaces

@pytest.fixture(scope="module")
def images(mnist, model_dir):
    """N real test digits the reference classifies as their labels, and those labels."""
    x, y = mnist
    ok = np.flatnonzero(reference(model_dir, x / 255.0).argmax(1) == y)[:N]
    assert len(ok) == N
    return x[ok], y[ok]


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_dir):
    srv = ServerProcess(make_endpoint(tmp_path_factory.mktemp("ep-protocol"), model_dir)).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def azmlinfsrv(model_dir, tmp_path_factory):
    """Azure's inference server running mnistops/backends/azure/score.py on the registered model."""
    import importlib.util

    if importlib.util.find_spec("azureml_inference_server_http") is None:
        pytest.fail("azmlinfsrv not installed: pip install -e '.[test]' (azureml-inference-server-http)")
    log = tmp_path_factory.mktemp("azmlinfsrv") / "server.log"
    with azure_inference_server(model_dir, log, cwd=REPO, startup_s=120) as url:
        yield url


@pytest.fixture(scope="module")
def pyfunc(model_dir):
    import mlflow

    return mlflow.pyfunc.load_model(str(model_dir))


class Answer(NamedTuple):
    status: int
    probs: Optional[np.ndarray] = None
    digits: Optional[list] = None
    field: Optional[str] = None
    body: Optional[dict] = None


def _http(url: str, path: str, body: Any, headers: Dict[str, str]) -> Answer:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()  # json.dumps writes NaN as NaN
    r = httpx.post(url + path, content=content, headers={"Content-Type": "application/json", **headers}, timeout=60)
    data = r.json()
    assert isinstance(data, dict), f"the answer must be a JSON object, got {r.text[:200]!r}"
    if r.status_code != 200:
        return Answer(r.status_code, field=data.get("field"), body=data)
    preds = data["predictions"]
    return Answer(200, np.array([p["probabilities"] for p in preds]), [p["digit"] for p in preds], body=data)


def ask_pyfunc(model, body: Any) -> Answer:
    """What a caller of the registered model gets: MLflow's own parser for MLflow bodies, the array
    itself for Azure's keys. Errors: MLflow's INVALID_PARAMETER_VALUE (or BAD_REQUEST) -> a 4xx."""
    import pandas as pd
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc.scoring_server import infer_and_parse_data

    try:
        if "data" in body:
            model_input = np.asarray(body["data"], dtype=object if _ragged(body["data"]) else None)
        elif "input_data" in body and isinstance(body["input_data"], dict):
            split = body["input_data"]
            model_input = pd.DataFrame(split["data"], columns=split["columns"], index=split["index"])
        elif "input_data" in body:
            model_input = np.asarray(body["input_data"])
        else:
            model_input = infer_and_parse_data(body)
        out = model.predict(model_input)
    except MlflowException as exc:
        assert exc.error_code in ("INVALID_PARAMETER_VALUE", "BAD_REQUEST"), exc.error_code
        return Answer(422, field=None, body={"error": exc.message})
    return Answer(200, np.array(out["probabilities"].tolist()), out["digit"].tolist())


def _ragged(value) -> bool:
    try:
        np.asarray(value)
        return False
    except ValueError:
        return True


@pytest.mark.parametrize("surface", ["server", "score.py", "pyfunc"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_every_surface_answers_every_case_alike(case, surface, request, images, model_dir):
    if surface not in case.surfaces:
        pytest.skip(f"{case.name!r} is not a request {surface} can receive")
    x, labels = images
    body = case.body(x)
    if surface == "server":
        srv = request.getfixturevalue("server")
        path = "/score" if isinstance(body, bytes) or "data" in body else "/invocations"
        answer = _http(srv.url, path, body, AUTH)
    elif surface == "score.py":
        answer = _http(request.getfixturevalue("azmlinfsrv"), "/score", body, {})
    else:
        answer = ask_pyfunc(request.getfixturevalue("pyfunc"), body)

    if case.expect[0] == "error":
        _, status, field = case.expect
        assert answer.status == (status if surface != "pyfunc" else 422), answer
        if surface != "pyfunc":
            assert answer.field == field and answer.body["error"], answer.body
        return
    expected = reference(model_dir, case.expect[1](x))
    assert answer.status == 200, answer.body
    np.testing.assert_allclose(answer.probs, expected, atol=2e-5)
    assert answer.digits == expected.argmax(1).tolist()
    if case.real:
        assert answer.digits == labels[:len(answer.digits)].tolist()  # real digits read right
    if surface != "pyfunc":
        assert answer.body["model"] == "mnist-classifier" and answer.body["version"] == "1"
        assert answer.body["deployment"] == "blue" and answer.body["request_id"]


def test_the_registered_model_decodes_with_its_own_copy_of_the_protocol(pyfunc, model_dir):
    import mnistops_protocol  # noqa: F401  (importable once the model is loaded: its code/ is on sys.path)

    # a model's own copy answers, not mnistops.serving.protocol (another model loaded earlier in this
    # process may be the one sys.modules holds, its folder gone with that test's tmp_path: the copies are
    # byte-identical, which is what matters, so this model's own file is the one compared)
    assert Path(sys.modules["mnistops_protocol"].__file__).parent.name == "code"
    assert (model_dir / "code" / "mnistops_protocol.py").read_bytes() == (REPO / "mnistops/serving/protocol.py").read_bytes()


def test_score_py_request_id_is_the_collectors_correlation_id(azmlinfsrv, images):
    """The answer's request_id is the id the data collector keys the collected rows by (their
    ``correlation_id`` column, tests/test_azure_monitoring.py): the client's x-request-id when it sends one."""
    from mnistops.backends.azure import score

    x, _ = images
    r = httpx.post(azmlinfsrv + "/score", json={"data": rows(x[:1])}, headers={"x-request-id": "client-req-42"})
    assert r.status_code == 200 and r.json()["request_id"] == "client-req-42"
    r = httpx.post(azmlinfsrv + "/score", json={"data": rows(x[:1])})
    assert r.status_code == 200 and len(r.json()["request_id"]) == 32
    assert score.F.row_ids("client-req-42", 1) == ["client-req-42"]  # a one-image request's row: feedback's key

    import pandas as pd
    from azureml.ai.monitoring import Collector
    from azureml.ai.monitoring.context import BasicCorrelationContext

    # the installed collector keeps the context score.py hands it: its get_id() is what it sends
    # as the correlation id, and what score.py answered as request_id
    errors = []
    given = BasicCorrelationContext(id="k-1")
    context = Collector(name="model_inputs", on_error=errors.append).collect(pd.DataFrame({"a": [1]}), given)
    assert context is given and context.get_id() == "k-1"
    assert errors  # off Azure the collector drops the data (no data collector configured), as score.py expects
