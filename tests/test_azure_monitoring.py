"""What score.py collects on Azure, exactly: score.py under Azure's own inference server (azmlinfsrv)
with azureml-ai-monitoring's real Collector, which sends what it collects over HTTP to the data
collector's address (AZUREML_MDC_HOST/PORT, as its config allows), here a local sink that keeps
every payload: the images themselves and their features, the answers with their request ids and
model version, and feedback as ground truth keyed by the scored request's id. The loop from there
(the sidecar's files in Azurite, stage=monitor, the hand-over to QA) runs as monitor.yml is written
in test_azure_release_chain."""

from __future__ import annotations

import base64
import json
import shutil

import httpx
import numpy as np
import pytest

from conftest import needs_module  # a missing extra fails in CI, skips elsewhere
needs_module("azure.ai.ml", "pip install -e '.[azure]'")
needs_module("azureml_inference_server_http", "pip install -e '.[test]'")
needs_module("azureml.ai.monitoring", "pip install -e '.[azure]'")

from azure_online_host import CollectorSink  # noqa: E402
from serving_fixtures import mnist  # noqa: E402,F401  (fixture)

pytestmark = pytest.mark.integration

FEATURES = ["mean_intensity", "ink_coverage", "bbox_top", "bbox_left", "bbox_height", "bbox_width",
            "centroid_row", "centroid_col", "stroke_width", "max_intensity", "min_intensity"]
PROBABILITIES = [f"p{k}" for k in range(10)]


@pytest.fixture(scope="module")
def sink():
    s = CollectorSink()
    yield s
    s.close()


@pytest.fixture(scope="module")
def scoring(tmp_path_factory, data_cache, sink):
    """azmlinfsrv serving score.py on a registered model (version 1, deployment blue), its data
    collector configured with the three collections and pointed at the sink."""
    from serving_fixtures import azure_inference_server, registered_model

    root = tmp_path_factory.mktemp("azureml-deployment")
    shutil.copytree(registered_model(tmp_path_factory, data_cache), root / "model" / "model")
    config = root / "mdc.json"
    config.write_text(json.dumps({"runMode": "cloud", "collections": {
        c: {"enabled": True, "sampleRatePercentage": 100} for c in ("model_inputs", "model_outputs", "ground_truth")}}))
    with azure_inference_server(root / "model", root / "server.log", cwd=root, AZUREML_MDC_CONFIG_PATH=str(config),
                                AZUREML_MDC_HOST="127.0.0.1", AZUREML_MDC_PORT=str(sink.port)) as url:
        yield {"url": url, "model_dir": root / "model" / "model", "log": root / "server.log"}


def pixels(row: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(row["pixels"]), dtype=np.uint8).reshape(28, 28)


def test_score_py_collects_images_answers_and_feedback_by_correlation_id(scoring, sink, mnist):
    images, _ = mnist
    url = scoring["url"]
    three = httpx.post(f"{url}/score", json={"data": images[:3].tolist()}, headers={"x-request-id": "req-a"}).json()
    one = httpx.post(f"{url}/score", json={"data": images[3:4].tolist()}, headers={"x-request-id": "req-b"}).json()
    assert three["request_id"] == "req-a" and one["request_id"] == "req-b"

    fed = httpx.post(f"{url}/score", json={"request_id": "req-b", "label": 7})
    assert fed.status_code == 202 and fed.json() == {"status": "accepted", "request_id": "req-b"}
    for body, field in (({"request_id": "req-b", "label": 10}, "label"), ({"request_id": "req-b", "label": True}, "label"),
                        ({"request_id": "", "label": 1}, "request_id")):
        refused = httpx.post(f"{url}/score", json=body)
        assert refused.status_code == 422 and refused.json()["field"] == field, refused.text
    httpx.post(f"{url}/score", json={"data": images[4:5].tolist()}, headers={"x-request-id": "req-c"})
    sink.wait(lambda: any(r["request_id"] == "req-c" for r in sink.rows("model_outputs")), "req-c's answer")

    by_id = {p["headers"]["ce-x-request-id"]: p for p in sink.of("model_inputs")}
    assert {"req-a", "req-b", "req-c"} <= set(by_id) and all(p["path"] == "/modeldata/log" for p in sink.posts)
    rows_a = json.loads(by_id["req-a"]["body"])
    assert [r["correlation_id"] for r in rows_a] == ["req-a_0", "req-a_1", "req-a_2"]
    assert set(rows_a[0]) == {"correlation_id", "pixels", *FEATURES}
    assert np.array_equal(np.stack([pixels(r) for r in rows_a]), images[:3])  # the images themselves, exactly
    assert [r["mean_intensity"] for r in rows_a] == pytest.approx([img.mean() / 255 for img in images[:3]])
    assert [r["ink_coverage"] for r in rows_a] == pytest.approx([(img > 127.5).mean() for img in images[:3]])

    outputs = {r["correlation_id"]: r for r in sink.rows("model_outputs")}
    assert set(outputs["req-b"]) == {"correlation_id", "request_id", "model_version", "digit", "confidence",
                                     *PROBABILITIES, "ood_score", "ood"}
    for i, prediction in enumerate(three["predictions"]):
        row = outputs[f"req-a_{i}"]
        assert (row["request_id"], row["model_version"], row["digit"]) == ("req-a", "1", prediction["digit"])
        assert (row["ood"], row["ood_score"]) == (prediction["ood"], pytest.approx(prediction["ood_score"], abs=1e-5))
        assert [row[p] for p in PROBABILITIES] == pytest.approx(prediction["probabilities"], abs=1e-6)
        assert row["confidence"] == pytest.approx(max(prediction["probabilities"]), abs=1e-6)

    # ground truth: the one accepted answer, keyed by the scored request's id (its one image's row)
    assert sink.rows("ground_truth") == [{"correlation_id": "req-b", "label": 7}]
    assert sink.of("ground_truth")[0]["headers"]["ce-x-request-id"] == "req-b"
