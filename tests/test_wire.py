"""wire.answer, the one function under the local routes and Azure's score.py: every row of its
format table, malformed bodies (one 4xx with one message naming the field), the request-id rule and
the feedback rule. Unit tests: the host here is a plain scorer that records the images it was given
(the routes' scorer is the micro-batcher, Azure's the ONNX model: their tests run the real ones)."""

from __future__ import annotations

import asyncio
import io
import json
import re

import numpy as np
import pytest

from mnistops.serving import protocol, wire
from mnistops.serving.errors import Unavailable

RID = "client-id.42:a_b"
HEX = re.compile(r"^[0-9a-f]{32}$")


class Host:
    """What a host gives ``answer``: a scorer (argmax = the brightest of the first ten pixels, so an
    answer can be traced to its image), a feedback sink, an offload that counts its calls."""

    def __init__(self):
        self.seen, self.kept, self.offloaded = [], [], 0

    async def score(self, images, rid):
        self.seen.append((images, rid))
        logits = images.reshape(len(images), -1)[:, :10].astype(np.float32) * 10
        scored = protocol.read_outputs([logits], protocol.Calibration())
        return scored, ("mnist", "3", "green")

    def keep(self, scored_rid, label, rid):
        self.kept.append((scored_rid, label, rid))

    async def offload(self, fn, arg):
        self.offloaded += 1
        return fn(arg)

    def answer(self, fmt, body, headers=None, **kw):
        if not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        return wire.finish(wire.answer(fmt, body, {"x-request-id": RID} if headers is None else headers,
                                       self.score, self.keep, self.offload, **kw))


def images(n=2):
    x = np.zeros((n, 28, 28), np.uint8)
    for i in range(n):
        x[i, 0, i] = 255  # the brightest of the first ten pixels: digit i
        x[i, 8:20, 12:16] = 200  # a stroke (uploads need ink to find)
    return x


def png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


X = images()
ROWS = X.reshape(2, 784)
# each row of the table with a body it takes: (format, body, the images the model must see)
GOOD = [
    ("score", {"data": ROWS.tolist()}, protocol.to_batch(X)),
    ("invocations", {"inputs": X.tolist()}, protocol.to_batch(X)),
    ("invocations", {"dataframe_split": {"columns": [f"p{i}" for i in range(784)], "data": ROWS.tolist()}},
     protocol.to_batch(X)),
    ("azure", {"data": X.tolist()}, protocol.to_batch(X)),
    ("azure", {"input_data": (ROWS / 255.0).tolist()}, protocol.to_batch(X)),
    ("v2", {"inputs": [{"name": "images", "shape": [2, 784], "datatype": "UINT8", "data": ROWS.ravel().tolist()}]},
     protocol.to_batch(X)),
    ("upload", png(X[0]), None),
]


@pytest.mark.parametrize("fmt,body,expected", GOOD, ids=[f"{g[0]}-{i}" for i, g in enumerate(GOOD)])
def test_each_row_of_the_table_scores_and_renders(fmt, body, expected):
    host = Host()
    status, answer, headers = host.answer(fmt, body)
    assert status == 200 and headers is None
    (seen, rid), = host.seen
    assert rid == RID and seen.dtype == np.float32 and seen.shape[1:] == (1, 28, 28)
    if expected is not None:
        assert np.allclose(seen, expected, rtol=0, atol=1e-6)  # the pixel rule, on the way in
    n = len(seen)
    answer = protocol.to_jsonable(answer)
    if fmt == "v2":
        assert (answer["model_name"], answer["model_version"], answer["id"]) == ("mnist", "3", RID)
        outputs = {o["name"]: o for o in answer["outputs"]}
        assert outputs["digit"]["data"] == list(range(n)) and outputs["probabilities"]["shape"] == [n, 10]
        assert set(outputs) == {"probabilities", "digit", "ood_score", "ood"}
    else:
        assert (answer["model"], answer["version"], answer["deployment"], answer["request_id"]) == (
            "mnist", "3", "green", RID)
        assert [set(p) for p in answer["predictions"]] == [{"digit", "probabilities", "ood_score", "ood"}] * n
        if expected is not None:
            assert [p["digit"] for p in answer["predictions"]] == list(range(n))
        assert all(abs(sum(p["probabilities"]) - 1) < 1e-5 for p in answer["predictions"])
    assert host.offloaded == (1 if fmt == "upload" else 0)  # only pictures leave the event loop


def test_every_row_is_tested():
    assert {fmt for fmt, _, _ in GOOD} == set(wire.FORMATS)


def test_the_routes_and_azure_take_each_others_bodies():
    """Azure's one route takes what /score and /invocations take, with the same answer."""
    for body in ({"data": ROWS.tolist()}, {"inputs": X.tolist()}):
        local = Host().answer("score" if "data" in body else "invocations", body)
        azure = Host().answer("azure", body)
        assert protocol.to_jsonable(local) == protocol.to_jsonable(azure)


def test_v2_answers_with_the_bodys_id():
    body = {"id": "v2-req", "inputs": [{"name": "x", "shape": [1, 28, 28], "datatype": "FP32",
                                       "data": (X[0] / 255.0).ravel().tolist()}]}
    status, answer, _ = Host().answer("v2", body)
    assert status == 200 and answer["id"] == "v2-req"


BAD = [  # (format, body, status, field, words in the message)
    ("score", b"", 400, "body", "empty body"),
    ("score", b'{"data": [1,', 400, "body", "malformed JSON"),
    ("score", b"[1, 2]", 422, "body", "JSON object"),
    ("score", {"inputs": ROWS.tolist()}, 422, "data", "missing field 'data'"),
    ("score", {"data": [[1, 2, 3]]}, 422, "data", "28x28"),
    ("score", {"data": [[300] * 784]}, 422, "data", "0..255"),
    ("score", {"data": [["7"] * 784]}, 422, "data", "strings"),
    ("score", b'{"data": [[' + b",".join([b"NaN"] * 784) + b"]]}", 422, "data", "finite"),  # json.dumps writes NaN
    ("invocations", {"inputs": ROWS.tolist(), "instances": ROWS.tolist()}, 422, "body", "exactly one of"),
    ("invocations", {"dataframe_split": {"data": []}}, 422, "dataframe_split.data", "non-empty"),
    ("azure", {"nothing": 1}, 422, "body", "exactly one of"),
    ("azure", {"request_id": "r-1", "label": "7"}, 422, "label", "digit 0..9"),
    ("v2", {"inputs": [{"name": "x", "shape": [1, 784], "datatype": "FP32"}]}, 422, "inputs[0].data", "missing"),
    ("v2", {"inputs": [{"name": "x", "shape": [2, 784], "datatype": "FP32", "data": [0.0] * 784}]}, 422,
     "inputs[0].data", "shape"),
    ("v2", {"inputs": [{"name": "x", "shape": [1, 784], "datatype": "STRING", "data": [0] * 784}]}, 422,
     "inputs[0].datatype", "one of"),
    ("upload", b"not a picture", 415, "file", "not a readable image"),
    ("upload", b"", 422, "file", "empty"),
    ("upload", png(np.zeros((28, 28), np.uint8)), 422, "file", "no digit"),
    ("feedback", [1], 422, "body", "JSON object"),
    ("feedback", {"request_id": "", "label": 3}, 422, "request_id", "1..128"),
    ("feedback", {"request_id": "r-1", "label": True}, 422, "label", "digit 0..9"),
    ("feedback", {"request_id": "r-1", "label": 10}, 422, "label", "digit 0..9"),
    ("feedback", b"{", 400, "body", "malformed JSON"),
]


@pytest.mark.parametrize("fmt,body,status,field,words", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_a_malformed_body_is_one_4xx_naming_the_field(fmt, body, status, field, words):
    host = Host()
    got, answer, _ = host.answer(fmt, body)
    assert got == status and set(answer) == {"error", "field", "request_id"}
    assert answer["field"] == field and words in answer["error"] and "\n" not in answer["error"]
    assert answer["request_id"] == RID
    assert host.seen == [] and host.kept == []  # nothing scored, nothing kept


def test_feedback_is_kept_and_answered_202():
    host = Host()
    assert host.answer("feedback", {"request_id": "scored-1", "label": 7, "note": "x"}) == (
        202, {"status": "accepted", "request_id": "scored-1"}, None)
    # Azure's one route: a body of exactly {request_id, label} is feedback, anything else is scored
    assert host.answer("azure", {"request_id": "scored-2", "label": 0})[0] == 202
    assert host.kept == [("scored-1", 7, RID), ("scored-2", 0, RID)] and host.seen == []
    status, answer, _ = host.answer("azure", {"request_id": "scored-3", "label": 1, "data": ROWS.tolist()})
    assert status == 200 and len(host.seen) == 1 and len(host.kept) == 2  # more than the two keys: scored


def test_feedback_that_cannot_be_kept_is_503_not_dropped():
    def refuse(scored_rid, label, rid):
        raise protocol.ProtocolError("this deployment does not collect ground truth", status=503)

    status, answer, _ = wire.finish(wire.answer("azure", '{"request_id": "r", "label": 1}', {}, None, refuse))
    assert status == 503 and "ground truth" in answer["error"]
    status, answer, _ = wire.finish(wire.answer(wire.FEEDBACK, '{"request_id": "r", "label": 1}', {}))
    assert status == 503 and "no feedback" in answer["error"]


@pytest.mark.parametrize("headers,kept", [
    ({"x-request-id": RID}, True),
    ({"X-Request-Id": RID}, True),  # Azure's inference server hands the client's spelling
    ({b"x-request-id": RID.encode()}, True),  # ASGI
    ({"x-request-id": "a" * 128}, True),
    ({"x-request-id": "a" * 129}, False),
    ({"x-request-id": "two words"}, False),
    ({"x-request-id": "id\n"}, False),
    ({"x-request-id": ""}, False),
    ({b"x-request-id": b"\xff\xfe"}, False),
    ({}, False),
    (None, False),
])
def test_the_request_id_is_the_clients_when_sane_else_fresh(headers, kept):
    rid = wire.request_id(headers)
    sent = wire.header(headers, "x-request-id")
    assert rid == (sent.decode() if isinstance(sent, bytes) else sent) if kept else HEX.match(rid)
    host = Host()
    for fmt, body in (("score", {"data": ROWS.tolist()}), ("score", b"{")):  # answers and errors alike
        answer = host.answer(fmt, body, headers or {})[1]
        assert (answer["request_id"] == rid) if kept else HEX.match(answer["request_id"])
    assert wire.request_id({}) != wire.request_id({})


def test_the_hosts_own_errors_keep_their_status_and_headers():
    async def busy(images, rid):
        raise Unavailable("over capacity")

    status, answer, headers = wire.finish(wire.answer("score", json.dumps({"data": ROWS.tolist()}),
                                                      {"x-request-id": RID}, busy))
    assert (status, answer, headers) == (503, {"error": "over capacity", "request_id": RID}, {"Retry-After": "1"})


def test_a_model_failure_is_not_a_client_error():
    async def broken(images, rid):
        raise RuntimeError("onnxruntime failed")

    with pytest.raises(RuntimeError, match="onnxruntime"):
        wire.finish(wire.answer("score", json.dumps({"data": ROWS.tolist()}), {}, broken))


def test_answer_is_awaited_on_a_loop_and_finish_refuses_a_waiting_host():
    host = Host()

    async def later(images, rid):
        await asyncio.sleep(0)  # a real wait: the micro-batcher's future
        return await host.score(images, rid)

    body = json.dumps({"data": ROWS.tolist()})
    status, answer, _ = asyncio.run(wire.answer("score", body, {"x-request-id": RID}, later))
    assert status == 200 and answer["request_id"] == RID
    with pytest.raises(RuntimeError, match="await answer"):
        wire.finish(wire.answer("score", body, {}, later))


# the packages of mnistops that Azure's inference environment (environments.INFERENCE) does not hold
NOT_IN_INFERENCE = ("hydra", "omegaconf", "torch", "torchvision", "lightning", "mlflow", "onnx", "optuna",
                    "matplotlib", "tqdm", "fastapi", "starlette", "uvicorn", "gunicorn", "prometheus_client", "PIL",
                    "multipart", "httpx", "pydantic", "great_expectations", "scipy", "pyarrow", "cleanlab")
LOAD_SCORE_PY = """
import importlib.abc, json, sys
BLOCKED = set(sys.argv[2].split(","))
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not in the inference environment")
sys.meta_path.insert(0, Absent())
import importlib.util
spec = importlib.util.spec_from_file_location("score", sys.argv[1])
score = importlib.util.module_from_spec(spec)
spec.loader.exec_module(score)
import mnistops
print(json.dumps({"mnistops": mnistops.__file__, "bad": score.run("not json"),
                  "feedback": score.run('{"request_id": "r-1", "label": 7}', {"X-Request-Id": "fb-1"})}))
"""


def test_score_py_loads_from_the_code_snapshot_with_the_inference_environment_alone(tmp_path):
    """Azure runs score.py from the code snapshot (mnistops/ at its root, code_snapshot.py) in an
    environment of environments.INFERENCE: what it imports at load and per request must be there."""
    import shutil
    import subprocess
    import sys

    from conftest import REPO
    from mnistops.backends.azure.code_snapshot import SCORING_SCRIPT
    from mnistops.backends.azure.environments import INFERENCE

    assert INFERENCE == ["numpy", "pandas", "orjson", "onnxruntime"]  # the list NOT_IN_INFERENCE complements
    shutil.copytree(REPO / "mnistops", tmp_path / "mnistops", ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run([sys.executable, "-c", LOAD_SCORE_PY, str(tmp_path / SCORING_SCRIPT),
                           ",".join(NOT_IN_INFERENCE)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["mnistops"].startswith(str(tmp_path))  # the snapshot's own copy, not this checkout
    assert out["bad"]["field"] == "body" and "malformed JSON" in out["bad"]["error"]
    assert out["feedback"]["request_id"] == "fb-1" and "ground truth" in out["feedback"]["error"]
