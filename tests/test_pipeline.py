"""stage=pipeline, the main job: data -> train -> evaluate -> register under one parent run, ending
in a registered, evaluated model that `mlflow.pyfunc.load_model` serves for any input form."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import QUICK, REPO, compose, fresh_home, mlflow_client, mnist_split, run_cli, runs_of
from mnistops.errors import MnistopsError
from mnistops.stages import run_stage

pytestmark = pytest.mark.integration  # runs the main job (trains) and the CLI


@pytest.fixture(scope="module")
def pipeline_home(tmp_path_factory, data_cache):
    """One real pipeline run (the default main job on a slice of training) shared by this module."""
    home = fresh_home(tmp_path_factory, data_cache, "pipeline-home")
    proc = run_cli(QUICK, home, check=True, timeout=600)
    assert "registered models:/mnist-classifier/1 (alias @candidate)" in proc.stdout
    assert "test accuracy" in proc.stdout
    return home


def test_pipeline_runs_every_step_under_one_parent(pipeline_home):
    client = mlflow_client(pipeline_home)
    (parent,) = runs_of(client, "pipeline")
    (data,) = runs_of(client, "data")
    (train,) = runs_of(client, "train")
    for child in (data, train):
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert parent.info.status == "FINISHED" and parent.data.metrics["test/acc"] > 0.8


def test_performance_matrix_is_logged_with_the_model(pipeline_home):
    client = mlflow_client(pipeline_home)
    (train,) = runs_of(client, "train")
    m = train.data.metrics
    assert 0.8 < m["test/acc"] <= 1.0 and m["test/n"] == 10000
    for c in range(10):
        assert 0 <= m[f"test/precision_{c}"] <= 1 and 0 <= m[f"test/recall_{c}"] <= 1 and 0 <= m[f"test/f1_{c}"] <= 1
    names = {a.path for a in client.list_artifacts(train.info.run_id, "evaluation")}
    assert {"evaluation/confusion_matrix.png", "evaluation/confusion_matrix.json", "evaluation/misclassified.png",
            "evaluation/performance.json"} <= names
    cm = json.loads(Path(client.download_artifacts(train.info.run_id, "evaluation/confusion_matrix.json")).read_text())
    matrix = np.array(cm["matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == 10000
    assert matrix.sum(1).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert np.trace(matrix) / 10000 == pytest.approx(m["test/acc"])


def test_calibration_is_fitted_at_training_and_reported_by_the_performance_matrix(pipeline_home):
    """The temperature fitted on the validation split lowers the expected calibration error on the
    held-back test set; the reliability diagram is logged; the OOD threshold flags few test digits."""
    client = mlflow_client(pipeline_home)
    (train,) = runs_of(client, "train")
    m = train.data.metrics
    assert m["calibration/val_ece_after"] < m["calibration/val_ece_before"]
    assert m["test/ece"] < m["test/ece_uncalibrated"] and m["test/ece"] < 0.05
    assert m["test/ood_flagged"] <= 0.02 and m["ood/val_flagged"] <= 0.01
    assert json.loads(train.data.tags["mnistops.calibration"])["ood_method"] == "mahalanobis"
    names = {a.path for a in client.list_artifacts(train.info.run_id, "evaluation")}
    assert "evaluation/reliability.png" in names
    assert {a.path for a in client.list_artifacts(train.info.run_id, "calibration")} == {"calibration/ood_head.npz"}


def test_registered_version_has_lineage_and_alias(pipeline_home):
    client = mlflow_client(pipeline_home)
    (train,) = runs_of(client, "train")
    version = client.get_model_version_by_alias("mnist-classifier", "candidate")
    tags = version.tags
    assert str(version.version) == "1" and version.run_id == train.info.run_id
    assert tags["mnistops.run_id"] == train.info.run_id
    assert tags["mnistops.dataset_digest"] == "d526d270f61bd965"
    # run from this checkout: the commit it was at (this checkout's HEAD or an ancestor: others may commit meanwhile)
    commit = tags["mnistops.git_commit"]
    assert re.fullmatch(r"[0-9a-f]{40}", commit), commit
    assert subprocess.run(["git", "merge-base", "--is-ancestor", commit, "HEAD"], cwd=REPO).returncode == 0, commit
    assert "model:" in tags["mnistops.config"] and len(tags["mnistops.weights_sha256"]) == 64
    assert float(tags["mnistops.test_acc"]) == pytest.approx(train.data.metrics["test/acc"], abs=1e-6)


def test_pyfunc_predicts_any_batch_of_uint8_or_float_images(pipeline_home):
    import mlflow

    mlflow_client(pipeline_home)
    model = mlflow.pyfunc.load_model("models:/mnist-classifier@candidate")
    assert model.metadata.signature.outputs is not None
    images, labels = mnist_split(pipeline_home, "test", 300)
    out = model.predict(images)
    assert list(out.columns) == ["digit", "probabilities", "ood_score", "ood"] and len(out) == 300
    assert out["ood"].mean() <= 0.05  # test digits: few "not a digit" flags
    assert (out["digit"].to_numpy() == labels).mean() > 0.8
    assert np.allclose([sum(p) for p in out["probabilities"]], 1.0, atol=1e-4)
    as_float = model.predict(images.astype(np.float32) / 255.0)
    assert (as_float["digit"] == out["digit"]).all()
    for n in (1, 7, 64):
        assert model.predict(images[:n].reshape(n, 784).astype(np.float64) / 255.0)["digit"].tolist() == \
            out["digit"][:n].tolist()
    assert model.predict(images[:2].tolist())["digit"].tolist() == out["digit"][:2].tolist()
    with pytest.raises(Exception, match="28x28"):
        model.predict(np.zeros((2, 27, 27), np.uint8))
    with pytest.raises(Exception, match="finite"):
        model.predict(np.full((1, 28, 28), np.nan, np.float32))


NO_TORCH_NO_MNISTOPS = r"""
import importlib.abc, json, sys
BLOCKED = ("torch", "lightning", "torchvision", "mnistops")


class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked: the registered model must load without it")
        return None


sys.meta_path.insert(0, Blocker())
import numpy as np
import mlflow

model = mlflow.pyfunc.load_model(sys.argv[1])
images = np.load(sys.argv[2])
out = model.predict(images)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print(json.dumps({"digits": out["digit"].tolist(), "loaded": loaded}))
"""


def test_the_registered_model_loads_without_torch_or_mnistops(pipeline_home, tmp_path):
    """What the README promises a consumer of the registry: numpy, pandas, onnxruntime and MLflow suffice.
    A fresh interpreter (outside the repo) where importing torch, lightning or mnistops fails."""
    import mlflow

    mlflow_client(pipeline_home)
    model_path = mlflow.artifacts.download_artifacts("models:/mnist-classifier@candidate", dst_path=str(tmp_path / "m"))
    images, labels = mnist_split(pipeline_home, "test", 100)
    np.save(tmp_path / "images.npy", images)
    script = tmp_path / "consumer.py"
    script.write_text(NO_TORCH_NO_MNISTOPS)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(script), model_path, str(tmp_path / "images.npy")], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    assert answer["loaded"] == []
    expected = mlflow.pyfunc.load_model(model_path).predict(images)["digit"].tolist()  # here, with mnistops
    assert answer["digits"] == expected and (np.array(answer["digits"]) == labels).mean() > 0.8


def test_register_refuses_an_unevaluated_run(home):
    result = run_stage(compose(["stage=train", "model=logreg", "trainer.max_epochs=1",
                                "trainer.limit_train_batches=1", "trainer.limit_val_batches=1"], home))
    with pytest.raises(MnistopsError, match="not been evaluated"):
        run_stage(compose(["stage=register", f"register.run_id={result.run_id}"], home))


def test_evaluate_without_a_train_run_is_a_clear_error(home):
    proc = run_cli(["stage=evaluate"], home, timeout=120)
    assert proc.returncode == 2 and "no finished train run in env 'dev'" in proc.stderr


def test_envs_keep_their_own_stores(pipeline_home):
    proc = run_cli(["env=qa", "stage=evaluate"], pipeline_home, timeout=120)
    assert proc.returncode == 2 and "env 'qa'" in proc.stderr
    assert (pipeline_home / "dev" / "mlflow.db").is_file() and (pipeline_home / "qa" / "mlflow.db").is_file()
