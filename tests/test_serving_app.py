"""The endpoint server (mnistops.serving): a real registered model, real uvicorn processes on
127.0.0.1, real HTTP. Every protocol answers what onnxruntime answers; bad input gets a 4xx, never a
500; blue/green admin, traffic split, mirror, rollback and restarts keep the state."""

from __future__ import annotations

import io
import json
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from serving_fixtures import (ADMIN, ADMIN_KEY, AUTH, KEY, KEY2, ServerProcess, make_endpoint, metric, mnist,  # noqa: F401
                              model_dir)

pytestmark = pytest.mark.integration


def reference(model_dir: Path, images: np.ndarray) -> np.ndarray:
    """What onnxruntime answers directly: softmax probabilities."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model_dir / "artifacts" / "model.onnx"), providers=["CPUExecutionProvider"])
    x = images.reshape(-1, 1, 28, 28).astype(np.float32) / np.float32(255.0)
    logits = sess.run(None, {"images": x})[0]
    z = np.exp(logits - logits.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def png(img: np.ndarray, fmt: str = "PNG") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_dir):
    """The main endpoint (auth on, blue = the registered model): read-only tests share it."""
    srv = ServerProcess(make_endpoint(tmp_path_factory.mktemp("ep-main"), model_dir)).start(wait_for="/health")
    yield srv
    srv.stop()


def check_answer(body: dict, probs_ref: np.ndarray, deployment: str = "blue", version: str = "1") -> None:
    got = np.array([p["probabilities"] for p in body["predictions"]])
    assert got.shape == probs_ref.shape
    np.testing.assert_allclose(got, probs_ref, atol=2e-5)
    assert [p["digit"] for p in body["predictions"]] == probs_ref.argmax(1).tolist()
    assert body["model"] == "mnist-classifier" and body["version"] == version and body["deployment"] == deployment
    assert re.fullmatch(r"[0-9a-f]{32}|[\w.:-]+", body["request_id"])


# --------------------------------------------------------------------------- protocols

def test_score_and_invocations_answer_what_onnxruntime_answers(server, model_dir, mnist):
    images, _ = mnist
    x = images[:8]
    ref = reference(model_dir, x)
    rows = x.reshape(8, 784).tolist()
    floats = (x.astype(np.float64) / 255.0).tolist()
    with server.client() as c:
        r = c.post("/score", json={"data": rows})
        assert r.status_code == 200 and r.headers["x-request-id"] == r.json()["request_id"]
        check_answer(r.json(), ref)
        check_answer(c.post("/score", json={"data": floats}).json(), ref)  # 28x28 floats 0-1
        check_answer(c.post("/score", json={"data": x[0].tolist()}).json(), ref[:1])  # one 28x28 image
        check_answer(c.post("/score", json={"data": rows[0]}).json(), ref[:1])  # one 784 row

        columns = [f"px{i}" for i in range(784)]
        forms = {
            "inputs": {"inputs": rows},
            "inputs as a named tensor": {"inputs": {"images": floats}},
            "instances": {"instances": x.tolist()},
            "dataframe_split": {"dataframe_split": {"columns": columns, "data": rows}},
            "dataframe_split, one image column": {"dataframe_split": {"columns": ["image"],
                                                                      "data": [[r_] for r_ in rows]}},
            "dataframe_records": {"dataframe_records": [dict(zip(columns, r_)) for r_ in rows]},
            "input_data list": {"input_data": rows},
            "input_data split": {"input_data": {"columns": columns, "index": list(range(8)), "data": rows}},
        }
        for form, payload in forms.items():
            r = c.post("/invocations", json=payload)
            assert r.status_code == 200, (form, r.text)
            check_answer(r.json(), ref)


def test_open_inference_protocol(server, model_dir, mnist):
    images, _ = mnist
    x = images[10:15]
    ref = reference(model_dir, x)
    with server.client() as c:
        for tensor in ({"name": "images", "shape": [5, 784], "datatype": "UINT8", "data": x.ravel().tolist()},
                       {"name": "images", "shape": [5, 28, 28], "datatype": "FP32",
                        "data": (x / 255.0).tolist()},
                       {"name": "images", "shape": [5, 28, 28], "datatype": "INT64", "data": x.tolist()}):
            r = c.post("/v2/models/mnist-classifier/infer", json={"id": "req-7", "inputs": [tensor]})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["model_name"] == "mnist-classifier" and body["model_version"] == "1" and body["id"] == "req-7"
            probs, digits, ood_score, ood = body["outputs"]
            assert ood_score["name"] == "ood_score" and ood_score["datatype"] == "FP32" and len(ood_score["data"]) == 5
            assert ood["name"] == "ood" and ood["datatype"] == "BOOL" and ood["data"] == [False] * 5  # digits
            assert probs["name"] == "probabilities" and probs["shape"] == [5, 10] and probs["datatype"] == "FP32"
            np.testing.assert_allclose(np.array(probs["data"]).reshape(5, 10), ref, atol=2e-5)
            assert digits == {"name": "digit", "shape": [5], "datatype": "INT64", "data": ref.argmax(1).tolist()}
    for path, body in (("/v2/health/live", {"live": True}), ("/v2/health/ready", {"ready": True})):
        assert httpx.get(server.url + path).json() == body  # probes carry no key
    with server.client() as c:
        meta = c.get("/v2/models/mnist-classifier").json()
        assert meta["name"] == "mnist-classifier" and meta["versions"] == ["1"]
        assert [o["name"] for o in meta["outputs"]] == ["probabilities", "digit", "ood_score", "ood"]
        assert c.get("/v2/models/mnist-classifier/ready").json() == {"name": "mnist-classifier", "ready": True}
        for path in ("/v2/models/nope", "/v2/models/nope/ready"):
            assert c.get(path).status_code == 404
        assert c.post("/v2/models/nope/infer", json={"inputs": []}).status_code == 404


def test_predict_normalises_uploaded_pictures(server, model_dir, mnist):
    from PIL import Image

    from mnistops.serving.images import normalise

    images, labels = mnist
    ref = reference(model_dir, images)
    confident = [i for i in range(len(images)) if ref[i].argmax() == labels[i] and ref[i].max() > 0.95][:3]
    assert len(confident) == 3
    with server.client() as c:
        for i in confident:
            digit = images[i]
            big = np.asarray(Image.fromarray(255 - digit).resize((200, 200), Image.Resampling.BILINEAR)
                             .convert("RGB"))
            variants = {"mnist png": png(digit), "inverted": png(255 - digit), "200x200 rgb": png(big),
                        "jpeg": png(big, "JPEG")}
            for name, data in variants.items():
                r = c.post("/predict", files={"file": (f"{name}.png", data, "image/png")})
                assert r.status_code == 200, (name, r.text)
                body = r.json()
                assert body["predictions"][0]["digit"] == labels[i], (i, name)
                check_answer(body, reference(model_dir, normalise(data)[None]))
            r = c.post("/predict", content=variants["mnist png"], headers={"Content-Type": "image/png"})
            assert r.status_code == 200 and r.json()["predictions"][0]["digit"] == labels[i]
        # the normalised upload of an MNIST digit stays an MNIST-style digit: white on black, centred
        norm = normalise(png(255 - images[confident[0]]))
        assert norm.dtype == np.uint8 and norm.shape == (28, 28) and norm[:3].max() == 0 and norm.max() > 200
        ys, xs = np.nonzero(norm)
        assert max(ys.max() - ys.min(), xs.max() - xs.min()) + 1 <= 21


def test_page_is_self_contained_and_open(server):
    r = httpx.get(server.url + "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    for element in ("canvas", "predict", "clear", "digit", "bars", "key"):
        assert f'id="{element}"' in r.text
    assert "localStorage" in r.text and "predict" in r.text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", r.text)  # no CDN


def test_openapi_describes_every_route(server):
    spec = httpx.get(server.url + "/openapi.json").json()
    paths = spec["paths"]
    expected = {"/score": "post", "/invocations": "post", "/v2/models/{name}/infer": "post", "/predict": "post",
                "/feedback": "post", "/health": "get", "/ready": "get", "/metrics": "get", "/": "get",
                "/v2/health/live": "get", "/v2/health/ready": "get", "/v2/models/{name}": "get",
                "/v2/models/{name}/ready": "get", "/admin/state": "get", "/admin/deployments/{deployment}": "post",
                "/admin/traffic": "put", "/admin/rollback": "post"}
    for path, method in expected.items():
        assert method in paths.get(path, {}), path
    assert "delete" in paths["/admin/deployments/{deployment}"]
    schemas = spec["components"]["schemas"]
    for path in ("/score", "/invocations", "/v2/models/{name}/infer", "/feedback", "/admin/traffic"):
        op = paths[path]["post" if path != "/admin/traffic" else "put"]
        ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert ref.split("/")[-1] in schemas
        scheme = "adminKey" if path.startswith("/admin") else "scoringKey"
        assert {"401", "422"} <= set(op["responses"]) and op["security"] == [{scheme: []}]
    assert {"400", "413", "415", "408", "503"} <= set(paths["/score"]["post"]["responses"])
    assert "multipart/form-data" in paths["/predict"]["post"]["requestBody"]["content"]
    assert "data" in schemas["ScoreRequest"]["properties"]
    assert {k: v["scheme"] for k, v in spec["components"]["securitySchemes"].items()} == {
        "scoringKey": "bearer", "adminKey": "bearer"}
    for path in ("/health", "/ready", "/v2/health/live", "/v2/health/ready", "/metrics"):
        assert "security" not in paths[path]["get"], path
    assert httpx.get(server.url + "/docs").status_code == 200


# --------------------------------------------------------------------------- auth, ids, feedback

def test_keys_scoring_primary_and_secondary_admin_apart_probes_open(server):
    body = {"data": [[0] * 784]}
    with server.client(key=False) as c:
        assert c.post("/score", json=body).status_code == 401
        assert c.post("/score", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.post("/score", json=body, headers={"Authorization": KEY}).status_code == 401
        for key in (KEY, KEY2):  # primary and secondary both score (scheme case-insensitive)
            assert c.post("/score", json=body, headers={"Authorization": f"bearer {key}"}).status_code == 200
        # the admin key is not a scoring key, and a scoring key opens no admin route
        r = c.post("/score", json=body, headers=ADMIN)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        for key in (KEY, KEY2, "wrong"):
            r = c.get("/admin/state", headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 401 and "admin key" in r.json()["error"]
            assert c.put("/admin/traffic", json={"traffic": {"blue": 100}},
                         headers={"Authorization": f"Bearer {key}"}).status_code == 401
            assert c.post("/admin/rollback", headers={"Authorization": f"Bearer {key}"}).status_code == 401
        assert c.get("/admin/state", headers=ADMIN).json()["traffic"] == {"blue": 100}
        for path in ("/invocations", "/v2/models/mnist-classifier/infer", "/feedback", "/predict"):
            r = c.post(path, json={})
            assert r.status_code == 401 and "key" in r.json()["error"], path
        assert c.get("/v2/models/mnist-classifier").status_code == 401
        for path in ("/health", "/ready", "/metrics", "/", "/v2/health/live", "/v2/health/ready"):
            assert c.get(path).status_code == 200, path  # probes and the page carry no key
    log = server.log()
    assert KEY not in log and KEY2 not in log and ADMIN_KEY not in log


def test_request_ids_are_honoured_and_logged(server):
    with server.client() as c:
        r = c.post("/score", json={"data": [[0] * 784]}, headers={"x-request-id": "client-id-42"})
        assert r.headers["x-request-id"] == "client-id-42" and r.json()["request_id"] == "client-id-42"
        r = c.post("/score", json={"data": [[0] * 784]}, headers={"x-request-id": "bad id\twith spaces"})
        assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])
    deadline = time.monotonic() + 30  # the access log is written off the request path: wait for the line
    while not (lines := [l for l in server.log().splitlines() if "client-id-42" in l]):
        assert time.monotonic() < deadline, "no log line for request client-id-42"
        time.sleep(0.05)
    assert "POST /score 200" in lines[0] and "blue" in lines[0]


def test_feedback_is_appended(server):
    with server.client() as c:
        assert c.post("/feedback", json={"request_id": "abc", "label": 3}).status_code == 202
        assert c.post("/feedback", json={"request_id": "def", "label": 0}).status_code == 202
        assert c.post("/feedback", json={"request_id": "def", "label": 10}).status_code == 422
        assert c.post("/feedback", json={"request_id": "", "label": 1}).status_code == 422
        assert c.post("/feedback", json={"label": 1}).status_code == 422
    lines = [json.loads(l) for l in (server.dir.parent.parent / "monitoring" / server.dir.name / "feedback.jsonl").read_text().splitlines()]
    assert [(l["request_id"], l["label"]) for l in lines[-2:]] == [("abc", 3), ("def", 0)]


# --------------------------------------------------------------------------- bad input

def test_bad_input_gets_4xx_never_500(server, model_dir, mnist):
    row = [0] * 784
    big = json.dumps({"data": [[0.5] * 784] * 1500}).encode()
    assert len(big) > 2_000_000

    def chunks():
        for i in range(0, len(big), 65536):
            yield big[i:i + 65536]

    J = {"Content-Type": "application/json"}
    cases = [
        ("malformed JSON", "/score", dict(content=b'{"data": [1, 2', headers=J), 400),
        ("empty body", "/score", dict(content=b"", headers=J), 400),
        ("NaN", "/score", dict(content=b'{"data": [[' + b",".join([b"NaN"] * 784) + b"]]}", headers=J), 422),
        ("Infinity", "/score", dict(content=b'{"data": [[' + b",".join([b"1e999"] * 784) + b"]]}", headers=J), 422),
        ("over 255", "/score", dict(json={"data": [[256] * 784]}), 422),
        ("negative", "/score", dict(json={"data": [[-0.1] * 784]}), 422),
        ("ragged", "/score", dict(json={"data": [row, row[:-1]]}), 422),
        ("wrong shape", "/score", dict(json={"data": [[0] * 783]}), 422),
        ("27x27", "/score", dict(json={"data": [[[0] * 27] * 27]}), 422),
        ("strings", "/score", dict(json={"data": [["7"] * 784]}), 422),
        ("nulls", "/score", dict(json={"data": [[None] * 784]}), 422),
        ("no data", "/score", dict(json={"inputs": [row]}), 422),
        ("not an object", "/score", dict(json=[row]), 422),
        ("no images", "/score", dict(json={"data": []}), 422),
        ("two protocol keys", "/invocations", dict(json={"inputs": [row], "instances": [row]}), 422),
        ("bad records", "/invocations", dict(json={"dataframe_records": [{"a": 1}, {"b": 2}]}), 422),
        ("v2 no inputs", "/v2/models/mnist-classifier/infer", dict(json={"id": "x"}), 422),
        ("v2 bad datatype", "/v2/models/mnist-classifier/infer",
         dict(json={"inputs": [{"name": "images", "shape": [1, 784], "datatype": "BYTES", "data": row}]}), 422),
        ("v2 shape mismatch", "/v2/models/mnist-classifier/infer",
         dict(json={"inputs": [{"name": "images", "shape": [2, 784], "datatype": "UINT8", "data": row}]}), 422),
        ("v2 fractional uint8", "/v2/models/mnist-classifier/infer",
         dict(json={"inputs": [{"name": "images", "shape": [1, 784], "datatype": "UINT8", "data": [0.5] * 784}]}),
         422),
        ("form content type", "/score", dict(content=b"data=1", headers={"Content-Type": "text/plain"}), 415),
        ("predict json", "/predict", dict(json={"data": [row]}), 415),
        ("predict not an image", "/predict", dict(files={"file": ("x.png", b"not an image", "image/png")}), 415),
        ("predict truncated png", "/predict", dict(files={"file": ("x.png", png(mnist[0][0])[:60], "image/png")}),
         422),
        ("predict blank picture", "/predict", dict(files={"file": ("x.png", png(np.zeros((28, 28), np.uint8)),
                                                                   "image/png")}), 422),
        ("predict no file field", "/predict", dict(files={"image": ("x.png", png(mnist[0][0]), "image/png")}), 422),
        ("oversize, Content-Length", "/score", dict(content=big, headers=J), 413),
        ("oversize, chunked", "/score", dict(content=chunks(), headers=J), 413),
        ("unknown model", "/v2/models/resnet/infer", dict(json={"inputs": []}), 404),
        ("unknown deployment", "/score", dict(json={"data": [row]}, headers={"azureml-model-deployment": "red"}), 404),
        ("unknown route", "/scores", dict(json={"data": [row]}), 404),
    ]
    with server.client() as c:
        for name, path, kwargs, status in cases:
            r = c.post(path, **kwargs)
            assert r.status_code == status, (name, r.status_code, r.text[:300])
            body = r.json()
            assert body["error"] and body["request_id"] == r.headers["x-request-id"], name
        assert c.get("/score").status_code == 405
        assert "'data'" in c.post("/score", json={"data": [[0] * 783]}).json()["error"]
        assert c.post("/score", json={"data": [["7"] * 784]}).json()["field"] == "data"
        # still serving, still right
        ref = reference(model_dir, mnist[0][:3])
        check_answer(c.post("/score", json={"data": mnist[0][:3].tolist()}).json(), ref)
        text = c.get("/metrics").text
    assert metric(text, "mnistops_requests_total", status="500") == 0
    assert metric(text, "mnistops_requests_total", route="/score", status="413") >= 2
    assert metric(text, "mnistops_errors_total", code="422") >= 10
    assert server.proc.poll() is None


# --------------------------------------------------------------------------- capacity and timeouts

def slow_model_dir(root: Path, layers: int = 150) -> Path:
    """A real but deliberately heavy ONNX graph (tens of ms per image) with the model's interface."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    ch = 64
    inits = [numpy_helper.from_array(rng.normal(0, 0.1, (ch, 1, 3, 3)).astype(np.float32), "w0"),
             numpy_helper.from_array(rng.normal(0, 1 / (3 * ch ** 0.5), (ch, ch, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(0, 0.1, (ch, 10)).astype(np.float32), "w_out")]
    nodes = [helper.make_node("Conv", ["images", "w0"], ["h0"], pads=[1, 1, 1, 1])]
    for i in range(layers):
        nodes += [helper.make_node("Conv", [f"h{i}", "w"], [f"c{i}"], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"h{i + 1}"])]
    nodes += [helper.make_node("GlobalAveragePool", [f"h{layers}"], ["pool"]),
              helper.make_node("Flatten", ["pool"], ["flat"]), helper.make_node("MatMul", ["flat", "w_out"], ["logits"])]
    graph = helper.make_graph(nodes, "slow", [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                                                           ["batch", 1, 28, 28])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (root / "artifacts").mkdir(parents=True)
    onnx.save(model, str(root / "artifacts" / "model.onnx"))
    return root


def test_micro_batching_groups_concurrent_requests(tmp_path, model_dir, mnist):
    """16 clients at once, one image each per request: the server's own batch-size histogram shows
    fewer inference batches than requests, none above max_batch, every answer still the request's own."""
    images, _ = mnist
    images = images[:96]
    expected = reference(model_dir, images).argmax(1)
    srv = ServerProcess(make_endpoint(tmp_path, model_dir, workers=1, max_batch=8, max_wait_ms=20)).start()
    answers, failures = {}, []

    def client(k: int) -> None:
        with srv.client() as c:
            for i in range(k, len(images), 16):
                r = c.post("/score", json={"data": images[i:i + 1].tolist()})
                if r.status_code != 200:
                    failures.append((i, r.status_code, r.text[:200]))
                else:
                    answers[i] = r.json()["predictions"][0]["digit"]

    try:
        with srv.client() as c:
            before = c.get("/metrics").text
        threads = [threading.Thread(target=client, args=(k,)) for k in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with srv.client() as c:
            after = c.get("/metrics").text
    finally:
        assert srv.stop() == 0
    assert not failures, failures[:5]
    assert [answers[i] for i in range(len(images))] == expected.tolist()

    def delta(name, **labels):
        return metric(after, name, deployment="blue", **labels) - metric(before, name, deployment="blue", **labels)

    batches, scored = delta("mnistops_batch_size_count"), delta("mnistops_batch_size_sum")
    assert scored == len(images)
    assert batches < len(images), f"{batches:.0f} batches for {len(images)} concurrent requests: none grouped"
    assert delta("mnistops_batch_size_bucket", le="8.0") == batches, "a batch above endpoint.max_batch=8"


def test_queue_full_is_503_and_slow_answers_are_408(tmp_path, model_dir):
    import onnxruntime as ort

    slow = slow_model_dir(tmp_path / "slow-v1")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(slow / "artifacts" / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    one = np.zeros((1, 1, 28, 28), np.float32)
    sess.run(None, {"images": one})
    samples = []
    for _ in range(7):
        t0 = time.perf_counter()
        sess.run(None, {"images": one})
        samples.append((time.perf_counter() - t0) * 1000)
    one_image_ms = min(samples)  # a busy machine only adds time: the fastest sample is the model's own cost
    # the timeout is one image's inference time: a batch of 4 images (at least ~4x that) can never make it
    d = make_endpoint(tmp_path, model_dir, max_queue=4, request_timeout_ms=max(5, round(one_image_ms)), max_batch=4,
                      workers=1)  # one queue of 4: the burst of 12 must overflow it
    state = json.loads((d / "state.json").read_text())
    state["deployments"]["blue"].update(path=str(slow), version="slow")
    (d / "state.json").write_text(json.dumps(state))
    srv = ServerProcess(d).start(wait_for="/health")
    try:
        body = {"data": [[0] * 784]}
        barrier = threading.Barrier(12)
        statuses, refusals = [], []

        def fire():
            with srv.client() as c:
                c.get("/health")  # connected before the burst
                barrier.wait()
                r = c.post("/score", json=body)
                statuses.append(r.status_code)
                if r.status_code == 503:
                    refusals.append(r.json()["error"])

        threads = [threading.Thread(target=fire) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert set(statuses) <= {200, 408, 503} and 503 in statuses, statuses
        with srv.client() as c:  # refused at once, not queued: the server counted each one as queue_full
            assert metric(c.get("/metrics").text, "mnistops_rejected_total", reason="queue_full") == len(refusals)
        assert all("queue full" in e for e in refusals), refusals

        def drained(a):  # the timed-out requests' batches still run: wait until they finish
            deadline = time.monotonic() + 60
            while a.get("/admin/state").json()["deployments"]["blue"]["queue_depth"]:
                assert time.monotonic() < deadline, "the queue never drained"
                time.sleep(0.05)

        with srv.client() as c, srv.admin() as a:
            drained(a)
            r = c.post("/score", json={"data": [[0] * 784] * 4})  # 4 heavy images: ~4x the timeout
            assert r.status_code == 408 and "request_timeout_ms" in r.json()["error"]
            r = c.post("/score", json={"data": [[0] * 784] * 5})  # more images than the queue holds
            assert r.status_code == 413

            # a body that stops arriving (slowloris): half of it is sent, the rest never; the server must
            # answer 408 on its own, whenever its deadline fires (no client-side pause to guess at)
            host, port = srv.url.split("//")[1].split(":")
            with socket.create_connection((host, int(port)), timeout=60) as sock:
                sock.sendall(f"POST /score HTTP/1.1\r\nHost: {host}\r\nAuthorization: {AUTH['Authorization']}\r\n"
                             "Content-Type: application/json\r\nContent-Length: 16\r\n\r\n".encode() + b'{"data": [[')
                answer = b""
                while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    answer += chunk
            assert answer.split(b"\r\n")[0].split(b" ")[1] == b"408", answer[:500]
            assert b"request body did not arrive" in answer, answer[:500]
            drained(a)  # the abandoned batches finish
            text = c.get("/metrics").text
        assert metric(text, "mnistops_rejected_total", reason="queue_full") >= 1
        assert metric(text, "mnistops_rejected_total", reason="timeout") >= 1
        assert metric(text, "mnistops_requests_total", status="500") == 0
        assert metric(text, "mnistops_queue_depth", deployment="blue") == 0
        assert httpx.get(srv.url + "/health").status_code == 200
    finally:
        srv.stop()


# --------------------------------------------------------------------------- admin: blue/green

def test_blue_green_traffic_mirror_rollback_and_restart(tmp_path, model_dir, mnist):
    d = make_endpoint(tmp_path, model_dir)
    green_dir = d / "models" / "mnist-classifier-v2"
    shutil.copytree(model_dir, green_dir)
    broken = d / "models" / "mnist-classifier-v9"
    shutil.copytree(model_dir, broken)
    (broken / "artifacts" / "model.onnx").write_bytes(b"\x08\x07 this is not an onnx graph")
    green = {"path": str(green_dir), "model_name": "mnist-classifier", "version": "2",
             "model_uri": "models:/mnist-classifier/2"}
    srv = ServerProcess(d).start(wait_for="/health")
    ref = reference(model_dir, mnist[0][:2])
    body = {"data": mnist[0][:2].tolist()}
    try:
        with srv.client() as c, srv.admin() as a:
            state = a.get("/admin/state").json()
            assert state["deployments"]["blue"]["loaded"] and state["deployments"]["blue"]["healthy"]
            assert state["traffic"] == {"blue": 100} and state["previous"] is None
            assert a.post("/admin/rollback").status_code == 409

            # load green: no traffic yet, reachable by pinning
            r = a.post("/admin/deployments/green", json=green)
            assert r.status_code == 200, r.text
            assert r.json()["loaded"] and r.json()["version"] == "2"
            assert c.get("/ready", params={"deployment": "green"}).status_code == 200
            check_answer(c.post("/score", json=body, headers={"azureml-model-deployment": "green"}).json(), ref,
                         "green", "2")
            assert c.post("/score", json=body).json()["deployment"] == "blue"

            # a model that does not load: 422, nothing changes
            before = a.get("/admin/state").json()
            for bad in ({**green, "path": str(broken)}, {**green, "path": str(d / "nowhere")},
                        {**green, "path": "relative/dir"}, {"version": "3"}):
                r = a.post("/admin/deployments/blue", json=bad)
                assert r.status_code == 422 and r.json()["error"], bad
            assert a.post("/admin/deployments/bad name!", json=green).status_code in (404, 422)
            assert a.get("/admin/state").json() == before
            check_answer(c.post("/score", json=body).json(), ref, "blue", "1")

            # traffic: validated, then split ~50/50
            for bad in ({"traffic": {"blue": 50, "green": 40}}, {"traffic": {"blue": 50, "red": 50}},
                        {"traffic": {"blue": 50.5, "green": 49.5}}, {"traffic": {"blue": "100"}},
                        {"traffic": {"blue": 101, "green": -1}}, {"mirror_traffic": {"green": 10}},
                        {"traffic": {"blue": 50, "green": 50}, "mirror_traffic": {"green": 10}}):
                assert a.put("/admin/traffic", json=bad).status_code == 422, bad
            assert a.put("/admin/traffic", content=b"{", headers={"Content-Type": "application/json"}).status_code == 400
            r = a.put("/admin/traffic", json={"traffic": {"blue": 50, "green": 50}})
            assert r.status_code == 200 and r.json()["traffic"] == {"blue": 50, "green": 50}
            served = [c.post("/score", json=body).json()["deployment"] for _ in range(200)]
            assert 60 <= served.count("green") <= 140 and served.count("green") + served.count("blue") == 200
            assert a.delete("/admin/deployments/green").status_code == 409
            assert a.delete("/admin/deployments/red").status_code == 404

            # mirror: blue answers everything, green sees ~half the requests in the background
            r = a.put("/admin/traffic", json={"traffic": {"blue": 100, "green": 0}, "mirror_traffic": {"green": 50}})
            assert r.status_code == 200 and r.json()["mirror_traffic"] == {"green": 50}
            assert {c.post("/score", json=body).json()["deployment"] for _ in range(100)} == {"blue"}
            deadline = time.monotonic() + 30  # copies run in the background: wait until the expected share landed
            while (mirrored := metric(text := c.get("/metrics").text, "mnistops_mirror_requests_total",
                                      deployment="green", outcome="ok")) < 20:
                assert time.monotonic() < deadline, f"only {mirrored:.0f} of ~50 copies reached green"
                time.sleep(0.05)
            assert mirrored <= 80, mirrored
            assert metric(text, "mnistops_mirror_traffic_percent", deployment="green") == 50

            # replace green by v3, roll back to v2, state.json follows every change
            r = a.post("/admin/deployments/green", json={**green, "version": "3"})
            assert r.status_code == 200
            assert c.post("/score", json=body, headers={"azureml-model-deployment": "green"}).json()["version"] == "3"
            r = a.post("/admin/rollback")
            assert r.status_code == 200, r.text
            assert r.json()["deployments"]["green"]["version"] == "2"
            assert r.json()["previous"]["deployments"]["green"]["version"] == "3"
            assert c.post("/score", json=body, headers={"azureml-model-deployment": "green"}).json()["version"] == "2"
            assert a.put("/admin/traffic", json={"traffic": {"blue": 30, "green": 70},
                                                 "mirror_traffic": {}}).status_code == 200
            state = a.get("/admin/state").json()
        saved = json.loads((d / "state.json").read_text())
        assert saved["traffic"] == {"blue": 30, "green": 70} and saved["mirror_traffic"] == {}
        assert {n: v["version"] for n, v in saved["deployments"].items()} == {"blue": "1", "green": "2"}
        assert saved["previous"]["mirror_traffic"] == {"green": 50}
        assert not list(d.glob(".state.*"))  # no temp files left behind

        # kill -9, start again: deployments and traffic come back
        assert (d / "server.pid").read_text().strip() == str(srv.proc.pid)
        srv.kill9()
        srv.start(wait_for="/health")
        with srv.client() as c, srv.admin() as a:
            again = a.get("/admin/state").json()
            assert again["traffic"] == state["traffic"] and again["mirror_traffic"] == {}
            for name in ("blue", "green"):
                assert again["deployments"][name]["version"] == state["deployments"][name]["version"]
                assert again["deployments"][name]["loaded"] and again["deployments"][name]["healthy"]
            assert c.get("/ready").status_code == 200
            check_answer(c.post("/score", json=body, headers={"azureml-model-deployment": "green"}).json(), ref,
                         "green", "2")

            # delete green once it has no traffic; rollback brings it back
            assert a.put("/admin/traffic", json={"traffic": {"blue": 100}}).status_code == 200
            assert a.delete("/admin/deployments/green").status_code == 200
            assert set(a.get("/admin/state").json()["deployments"]) == {"blue"}
            assert a.post("/admin/rollback").json()["deployments"]["green"]["loaded"]
            text = c.get("/metrics").text
        assert metric(text, "mnistops_requests_total", status="500") == 0
    finally:
        assert srv.stop() == 0
    assert not (d / "server.pid").exists()  # removed on SIGTERM


def test_a_deployment_that_fails_to_load_at_startup_is_reported(tmp_path, model_dir):
    d = make_endpoint(tmp_path, model_dir)
    state = json.loads((d / "state.json").read_text())
    state["deployments"]["green"] = {**state["deployments"]["blue"], "path": str(d / "models" / "gone"),
                                     "version": "2"}
    state["traffic"] = {"blue": 90, "green": 10}
    (d / "state.json").write_text(json.dumps(state))
    srv = ServerProcess(d).start(wait_for="/health")
    try:
        with srv.client() as c, srv.admin() as a:
            r = c.get("/ready")
            assert r.status_code == 503 and "green" in r.json()["reasons"][0]
            st = a.get("/admin/state").json()["deployments"]
            assert st["blue"]["loaded"] and not st["green"]["loaded"] and "gone" in st["green"]["error"]
            r = c.post("/score", json={"data": [[0] * 784]}, headers={"azureml-model-deployment": "blue"})
            assert r.status_code == 200
            r = c.post("/score", json={"data": [[0] * 784]}, headers={"azureml-model-deployment": "green"})
            assert r.status_code == 503
    finally:
        srv.stop()


def test_create_app_serves_in_process(tmp_path, model_dir, mnist):
    """The factory alone (no uvicorn): what a test or another ASGI server gets."""
    import asyncio

    from mnistops.serving.app import create_app

    d = make_endpoint(tmp_path, model_dir, auth=False)
    ref = reference(model_dir, mnist[0][:2])

    async def scenario():
        app = create_app(d)
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://in-process") as c:
                assert (await c.get("/ready")).status_code == 200
                r = await c.post("/score", json={"data": mnist[0][:2].tolist()})  # auth off: no key needed
                assert r.status_code == 200
                check_answer(r.json(), ref)
                assert (await c.get("/admin/state")).status_code == 401  # admin always needs the admin key
                assert (await c.get("/admin/state", headers=AUTH)).status_code == 401
                assert (await c.get("/admin/state", headers=ADMIN)).json()["traffic"] == {"blue": 100}

    asyncio.run(scenario())
