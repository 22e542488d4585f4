"""A version that loads (its ONNX graph opens and passes the warm-up inference in every worker) but
fails the real request pinned to its deployment is refused by stage=deploy: no traffic moves to it, the
old version keeps serving 100 %, and the command says which deployment answered what."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY, compose, free_port, fresh_home, mlflow_client, run_cli
from mnistops.errors import MnistopsError
from mnistops.stages import run_stage

pytestmark = pytest.mark.integration  # trains a tiny model, serves it on 127.0.0.1


def fails_on_real_digits(path: Path) -> None:
    """An ONNX graph with the model's interface that answers the warm-up pattern (a thin bar, 16 lit
    pixels per image) but fails on a real digit (over 60 lit pixels in the batch): its logits are
    reshaped to 13 columns then, which onnxruntime refuses at run time."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).normal(0, 0.1, (784, 10)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(60.0, np.float32), "lit_limit"),
             numpy_helper.from_array(np.array(10, np.int64), "ten"), numpy_helper.from_array(np.array(3, np.int64), "three"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus_one"), numpy_helper.from_array(np.array([0], np.int64), "axis0")]
    nodes = [helper.make_node("Flatten", ["images"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w"], ["raw"]),
             helper.make_node("ReduceSum", ["images"], ["lit"], keepdims=0),
             helper.make_node("Greater", ["lit", "lit_limit"], ["real"]),
             helper.make_node("Cast", ["real"], ["extra"], to=TensorProto.INT64),
             helper.make_node("Mul", ["extra", "three"], ["more"]),
             helper.make_node("Add", ["ten", "more"], ["width"]),
             helper.make_node("Unsqueeze", ["width", "axis0"], ["width1"]),
             helper.make_node("Concat", ["minus_one", "width1"], ["shape"], axis=0),
             helper.make_node("Reshape", ["raw", "shape"], ["logits"])]
    graph = helper.make_graph(nodes, "fails-on-real-digits",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 1, 28, 28])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def registry(tmp_path_factory, data_cache):
    """v1: a tiny trained model; v2: v1's files with the graph above (it loads, it fails on digits)."""
    import mlflow

    home = fresh_home(tmp_path_factory, data_cache, "pinned-home")
    run_cli(["model=logreg", *TINY], home, check=True)
    client = mlflow_client(home)
    v1 = client.get_model_version("mnist-classifier", "1")
    broken = home / "loads-but-fails"
    shutil.copytree(mlflow.artifacts.download_artifacts("models:/mnist-classifier/1",
                                                        dst_path=str(home / "v1")), broken)
    fails_on_real_digits(broken / "artifacts" / "model.onnx")
    client.create_model_version("mnist-classifier", broken.as_uri(), run_id=v1.run_id)  # v2
    return home


def test_the_warm_up_passes_and_a_real_digit_fails(registry):
    """The premise, checked on the model class the server loads: warm-up passes, a digit raises."""
    from mnistops.serving.deployments import load_model
    from mnistops.serving_client import sample_image

    model = load_model(str(registry / "loads-but-fails"))  # warm-up included
    digit = sample_image().astype(np.float32).reshape(1, 1, 28, 28) / 255.0
    with pytest.raises(Exception, match="(?i)reshape"):
        model.predict(digit)


def test_a_version_that_loads_but_fails_its_pinned_request_is_refused(registry):
    overrides = [f"paths.home={registry}", f"endpoint.port={free_port()}", "endpoint.workers=1"]
    try:
        run_stage(compose(["stage=deploy", "deploy.model=models:/mnist-classifier/1", *overrides]))
        with pytest.raises(MnistopsError, match=r"deployment green \(models:/mnist-classifier/2\) loaded but answered "
                                                r"5\d\d: .*traffic unchanged"):
            run_stage(compose(["stage=deploy", "deploy.model=models:/mnist-classifier/2", *overrides]))
        state = json.loads((registry / "dev" / "endpoints" / "mnist" / "state.json").read_text())
        assert state["traffic"] == {"blue": 100} and state["deployments"]["blue"]["version"] == "1"
        # v1 still answers (limits explicit: this checks who answers, not how fast on a loaded machine)
        assert run_stage(compose(["stage=smoke", "smoke.samples=20", "smoke.min_accuracy=0", "smoke.max_p95_ms=60000",
                                  *overrides]))
    finally:
        run_stage(compose(["stage=endpoint", "endpoint.action=stop", *overrides]))
