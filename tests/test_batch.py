"""stage=batch: a folder of pictures, an .npz and a .parquet file of real MNIST test images scored
into .parquet/.csv/.jsonl, answered as the online endpoint answers the same images (1,000 of them
through a real local endpoint on 127.0.0.1), the MLflow run with the input's digest and the
version's lineage, bad input refused in one line with nothing written, and the Azure batch endpoint
and deployment as `azure.dry_run` renders them, read back by the SDK's own loaders."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import QUICK, compose, free_port, fresh_home, mlflow_client, needs_module, run_cli
from mnistops.data.idx import read_idx

N_ENDPOINT = 1000  # images compared with the endpoint's answers


@pytest.fixture(scope="module")
def mnist_test(data_cache):
    images = np.array(read_idx(data_cache / "mnist" / "t10k-images-idx3-ubyte"))
    labels = np.array(read_idx(data_cache / "mnist" / "t10k-labels-idx1-ubyte"))
    return images, labels


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_pngs(folder: Path, images: np.ndarray) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, image in enumerate(images):
        name = f"digit-{i:04d}.png"
        (folder / name).write_bytes(png_bytes(image))
        names.append(name)
    return names


def write_parquet(path: Path, images: np.ndarray, how: str = "lists") -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = [f"img-{i}" for i in range(len(images))]
    if how == "lists":
        table = pa.table({"id": ids, "image": [row.ravel().tolist() for row in images]})
    elif how == "nested":
        table = pa.table({"image": [row.tolist() for row in images]})
    elif how == "png":
        table = pa.table({"id": ids, "picture": [png_bytes(row) for row in images]})
    else:  # 784 pixel columns
        flat = images.reshape(len(images), -1)
        table = pa.table({f"pixel{k}": flat[:, k] for k in range(784)})
    pq.write_table(table, path)
    return path


def no_leftovers(folder: Path, name: str) -> bool:
    """No output and no temp file of it in `folder`."""
    return not (folder / name).exists() and not list(folder.glob(f".{name}.*"))


# --------------------------------------------------------------------------- inputs (unit)

def test_every_input_form_gives_the_images_the_endpoint_would_see(tmp_path, mnist_test):
    from mnistops.batch import inputs
    from mnistops.serving import protocol

    images = mnist_test[0][:80]
    expected = protocol.to_batch(images, "data")  # what /score hands the model for these pixels
    np.savez(tmp_path / "a.npz", images=images)
    np.savez(tmp_path / "rows.npz", pixels=images.reshape(80, 784))  # the file's only array, 784-long rows
    for source in (tmp_path / "a.npz", tmp_path / "rows.npz",
                   write_parquet(tmp_path / "lists.parquet", images, "lists"),
                   write_parquet(tmp_path / "nested.parquet", images, "nested"),
                   write_parquet(tmp_path / "wide.parquet", images, "wide")):
        got = inputs.read(str(source))
        assert got.images.dtype == np.float32 and np.array_equal(got.images, expected), source.name
        assert len(got) == 80 and got.digest == hashlib.sha256(source.read_bytes()).hexdigest()
    assert inputs.read(str(tmp_path / "lists.parquet")).ids[:2] == ["img-0", "img-1"]
    assert inputs.read(str(tmp_path / "a.npz")).ids[:2] == ["0", "1"]

    # pictures (a folder, or encoded bytes in a parquet column) are framed as /predict frames an upload
    names = write_pngs(tmp_path / "pngs" / "sub", images[:30])
    from mnistops.serving.images import decode_upload

    uploads = np.concatenate([decode_upload(png_bytes(im)) for im in images[:30]])
    folder = inputs.read(str(tmp_path / "pngs"), threads=2)
    assert folder.kind == "folder" and folder.ids == [f"sub/{n}" for n in names]
    assert np.array_equal(folder.images, uploads)
    assert np.array_equal(inputs.read(str(write_parquet(tmp_path / "png.parquet", images[:30], "png"))).images,
                          uploads)
    assert inputs.digest(str(tmp_path / "pngs")) == folder.digest  # what a remote job is handed, undecoded
    (tmp_path / "pngs" / "sub" / "digit-0000.png").write_bytes(png_bytes(images[5]))
    assert inputs.read(str(tmp_path / "pngs")).digest != folder.digest


@pytest.mark.parametrize("make, needle", [
    (lambda d: d / "missing", "batch.input={d}/missing: no such file or folder"),
    (lambda d: (d / "x.txt").write_text("1,2,3") and d / "x.txt", "batch.input={d}/x.txt: .txt is not a folder of pictures"),
    (lambda d: (d / "empty").mkdir() or d / "empty", "the folder holds no pictures"),
    (lambda d: (d / "bad").mkdir() or (d / "bad" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really") and d / "bad",
     "batch.input: b.png: 'file' is a corrupt or truncated image"),
    (lambda d: (d / "blank").mkdir() or (d / "blank" / "z.png").write_bytes(png_bytes(np.zeros((28, 28)))) and d / "blank",
     "batch.input: z.png: no digit found"),
    (lambda d: np.savez(d / "two.npz", a=np.zeros((2, 28, 28)), b=np.zeros(3)) or d / "two.npz",
     "an .npz needs an array named 'images' (it holds a, b)"),
    (lambda d: np.savez(d / "shape.npz", images=np.zeros((4, 27, 27), np.uint8)) or d / "shape.npz",
     "expected images of 28x28 or rows of 784 pixels, got shape (4, 27, 27)"),
    (lambda d: np.savez(d / "neg.npz", images=-np.ones((2, 784))) or d / "neg.npz", "pixel values must be in 0..1"),
    (lambda d: (d / "trunc.npz").write_bytes(b"PK\x03\x04broken") and d / "trunc.npz", "not a readable .npz"),
    (lambda d: (d / "t.parquet").write_bytes(b"PAR1nope") and d / "t.parquet", "not a readable .parquet file"),
    (lambda d: _table(d / "cols.parquet", id=["a", "b"], x=[1, 2], y=[3, 4]),
     "expected 784 pixel columns or one image column (besides 'id'), got 2 columns"),
    (lambda d: _table(d / "str.parquet", image=["a", "b"]), "column 'image' (string) is not images"),
    (lambda d: _table(d / "ragged.parquet", image=[[1] * 784, [2] * 783]), "the same number of pixels"),
])
def test_bad_input_is_one_line_naming_the_key(tmp_path, make, needle):
    from mnistops.batch import inputs
    from mnistops.serving.protocol import InputError

    source = make(tmp_path)
    with pytest.raises(InputError) as err:
        inputs.read(str(source), threads=1)
    message = err.value.message
    assert needle.format(d=tmp_path) in message and "\n" not in message and "batch.input" in message


def _table(path: Path, **columns) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return path


def test_output_is_checked_before_scoring_and_written_whole(tmp_path, mnist_test):
    import pyarrow.parquet as pq

    from mnistops.batch import outputs
    from mnistops.batch.scorer import Scores
    from mnistops.serving.protocol import InputError

    for bad, needle in ((None, "batch.output is not set"), (tmp_path / "o.txt", "the suffix picks the format"),
                        (tmp_path, "is a folder"), (tmp_path / "in.parquet", "is batch.input")):
        with pytest.raises(InputError, match=needle):
            outputs.check(str(bad) if bad else None, str(tmp_path / "in.parquet"))

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(10), size=5).astype(np.float32)
    scores = Scores(probs, rng.random(5).astype(np.float32), np.array([0, 1, 0, 0, 1], bool))
    ids = [f"a,{i}" for i in range(5)]  # a comma: CSV quotes it
    table = pq.read_table(outputs.write(tmp_path / "o.parquet", ids, scores, {"mnistops.model": "models:/m/1"}))
    assert table.column_names == ["id", "digit", "probabilities", "ood_score", "ood"]
    assert table.schema.metadata[b"mnistops.model"] == b"models:/m/1"
    assert np.array_equal(np.stack(table.column("probabilities").to_numpy(zero_copy_only=False)), probs)
    assert table.column("digit").to_pylist() == probs.argmax(1).tolist()
    lines = (outputs.write(tmp_path / "o.jsonl", ids, scores)).read_text().splitlines()
    row = json.loads(lines[3])
    assert row["id"] == "a,3" and row["digit"] == int(probs[3].argmax()) and row["ood"] is False
    assert np.allclose(row["probabilities"], probs[3], rtol=0, atol=1e-7)
    import csv

    with open(outputs.write(tmp_path / "o.csv", ids, scores)) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["id", "digit", *[f"p{k}" for k in range(10)], "ood_score", "ood"]
    assert rows[1]["id"] == "a,1" and np.isclose(float(rows[1]["p4"]), probs[1, 4], atol=1e-7)

    # a writer that fails halfway leaves neither the file nor its temp file
    with pytest.raises(ValueError):
        outputs.write(tmp_path / "half.parquet", ids[:2], scores)  # 2 ids for 5 rows
    assert no_leftovers(tmp_path, "half.parquet")


# --------------------------------------------------------------------------- azure (dry run, unit)

def test_azure_dry_run_renders_a_batch_endpoint_and_deployment_the_sdk_loads(home, tmp_path, mnist_test):
    needs_module("azure.ai.ml")
    from azure.ai.ml import load_batch_deployment, load_batch_endpoint, load_environment

    import mnistops
    from mnistops import tags as T

    folder = tmp_path / "pngs"
    write_pngs(folder, mnist_test[0][:5])
    result = mnistops.run("batch", ["env=qa", "env.backend=azure", "azure.dry_run=true", "compute=azure_cpu_cluster",
                                    "compute.instance_count=3", "batch.mini_batch_size=20",
                                    "batch.model=models:/mnist-classifier/4", f"batch.input={folder}",
                                    f"batch.output={tmp_path / 'scores.parquet'}"])
    files = result.artifacts
    endpoint = load_batch_endpoint(files["batch-endpoint-mnist-batch-qa"])
    assert endpoint.name == "mnist-batch-qa" and endpoint.tags[T.ENV] == "qa"
    dep = load_batch_deployment(files["batch-deployment-mnist-classifier-4"])
    assert (dep.name, dep.endpoint_name, dep.model, dep.compute) == \
        ("mnist-classifier-4", "mnist-batch-qa", "mnist-classifier:4", "cpu-cluster")
    assert dep.resources.instance_count == 3 and dep.mini_batch_size == 20 and dep.max_concurrency_per_instance == 2
    assert dep.output_action in ("append_row", "AppendRow") and dep.output_file_name == "predictions.csv"
    assert dep.code_configuration.scoring_script == "mnistops/backends/azure/batch_score.py"
    assert (Path(dep.code_configuration.code) / dep.code_configuration.scoring_script).is_file()
    assert dep.tags[T.MODEL_URI] == "models:/mnist-classifier/4"
    env = load_environment(files["environment-mnistops-inference-batch"])
    pip = env.conda_file["dependencies"][-1]["pip"]
    assert dep.environment.removeprefix("azureml:") == f"{env.name}:{env.version}"
    assert any(p.startswith("onnxruntime==") for p in pip) and any(p.startswith("pyarrow==") for p in pip)
    assert "azureml-core" in pip
    assert not (tmp_path / "scores.parquet").exists()  # a preview scores nothing


@pytest.mark.parametrize("extra, needle", [
    (["compute=azure_cpu_cluster", "batch.input={d}/nope"], "batch.input={d}/nope: no such file or folder"),
    (["compute=azure_cpu_cluster", "batch.input={d}/x.txt"], ".txt is not a folder of pictures"),
    (["compute=azure_cpu_cluster", "batch.input={d}", "batch.output={d}/o.xlsx"], "batch.output="),
    (["batch.input={d}"], "compute=cpu is not an Azure ML cluster"),
    (["compute=azure_cpu_cluster", "batch.input={d}", "batch.model=models:/mnist-classifier@champion"],
     "a dry run cannot ask the workspace which version that is"),
])
def test_azure_batch_refuses_bad_input_before_rendering_anything(home, tmp_path, extra, needle):
    needs_module("azure.ai.ml")
    import mnistops
    from mnistops.errors import MnistopsError

    (tmp_path / "x.txt").write_text("1")
    args = [a.format(d=tmp_path) for a in extra]
    if not any(a.startswith("batch.model=") for a in args):
        args.append("batch.model=models:/mnist-classifier/4")
    if not any(a.startswith("batch.output=") for a in args):
        args.append(f"batch.output={tmp_path / 'o.parquet'}")
    with pytest.raises(MnistopsError) as err:
        mnistops.run("batch", ["env=qa", "env.backend=azure", "azure.dry_run=true", *args])
    assert needle.format(d=tmp_path) in str(err.value) and "\n" not in str(err.value)
    assert not list(home.glob("qa/outputs/**/azure/*.yaml"))


def test_the_nodes_scoring_script_answers_as_the_local_scorer(tmp_path, mnist_test, monkeypatch):
    """batch_score.py's init()/run() on a mini-batch of mixed files, as Azure's batch driver calls it."""
    import csv
    import importlib
    import shutil

    from mnistops.batch import inputs
    from mnistops.batch.scorer import BatchScorer

    model = tmp_path / "azureml-models" / "mnist-classifier" / "4" / "model"
    (model / "artifacts").mkdir(parents=True)
    shutil.copy(_small_onnx(tmp_path), model / "artifacts" / "model.onnx")
    monkeypatch.setenv("AZUREML_MODEL_DIR", str(tmp_path / "azureml-models"))
    images = mnist_test[0][:40]
    write_pngs(tmp_path / "mb", images[:3])
    np.savez(tmp_path / "mb" / "shard.npz", images=images[3:20])
    write_parquet(tmp_path / "mb" / "shard.parquet", images[20:], "lists")
    files = sorted(str(p) for p in (tmp_path / "mb").iterdir())
    script = importlib.import_module("mnistops.backends.azure.batch_score")
    script.init()
    rows = list(csv.reader(script.run(files)))
    ids, x = inputs.read_files(files)
    expected = BatchScorer(model, threads=1).score(x, progress=False)
    assert [r[0] for r in rows] == ids and len(rows) == 40
    assert ids[:3] == ["digit-0000.png", "digit-0001.png", "digit-0002.png"] and ids[3] == "shard.npz#0"
    got = np.array([[float(v) for v in r[2:12]] for r in rows], np.float32)
    assert np.array_equal(got, expected.probabilities)
    assert [int(r[1]) for r in rows] == expected.digits.tolist()


def _small_onnx(tmp_path: Path) -> Path:
    """A real ONNX graph of the registered kind: float32 (N, 784) -> 10 logits (a seeded linear layer)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((784, 10)) * 0.05).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(10).astype(np.float32), "b")
    graph = helper.make_graph([helper.make_node("MatMul", ["images", "w"], ["z"]),
                               helper.make_node("Add", ["z", "b"], ["logits"])], "linear",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["n", 784])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 10])], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    return path


# --------------------------------------------------------------------------- the stage, end to end

@pytest.fixture(scope="module")
def registry_home(tmp_path_factory, data_cache):
    """A dev registry with one trained version (models:/mnist-classifier/1, @candidate, no @champion)."""
    home = fresh_home(tmp_path_factory, data_cache, "batch-home")
    run_cli(QUICK, home, check=True)
    return home


@pytest.fixture(scope="module")
def endpoint(registry_home):
    """The version served on a real local endpoint (one worker) by stage=deploy; stopped after."""
    from mnistops.backends.local.server import EndpointServer
    from mnistops.stages import run_stage

    overrides = [f"paths.home={registry_home}", "endpoint.name=batchcmp", f"endpoint.port={free_port()}",
                 "endpoint.workers=1", "deploy.model=models:/mnist-classifier/1"]
    run_stage(compose(["stage=deploy", *overrides]))
    ep = EndpointServer(compose(overrides))
    yield ep.url, ep.key()
    run_stage(compose(["stage=endpoint", "endpoint.action=stop", *overrides]))


def read_output(path: Path):
    import pyarrow.parquet as pq

    t = pq.read_table(path)
    probs = np.stack(t.column("probabilities").to_numpy(zero_copy_only=False)).astype(np.float32)
    extra = {c: np.asarray(t.column(c).to_pylist()) for c in ("ood_score", "ood") if c in t.column_names}
    return t.column("id").to_pylist(), t.column("digit").to_pylist(), probs, extra


def assert_same_answers(predictions: list, digits, probs, extra) -> None:
    """The endpoint's prediction objects and the batch rows: the same digit, the same probabilities
    (float32, up to the last bits of a different batch size), ood fields where the endpoint has them."""
    assert [p["digit"] for p in predictions] == list(digits)
    served = np.array([p["probabilities"] for p in predictions], np.float32)
    assert np.allclose(served, probs, rtol=1e-5, atol=1e-6), np.abs(served - probs).max()
    for field in ("ood_score", "ood"):
        if field in predictions[0]:
            assert field in extra, f"the endpoint answers {field}: batch rows must carry it too"
            served_field = np.array([p[field] for p in predictions])
            if field == "ood":
                assert np.array_equal(served_field, extra[field].astype(bool))
            else:
                assert np.allclose(served_field.astype(np.float32), extra[field], rtol=1e-5, atol=1e-5)


@pytest.mark.integration
def test_batch_answers_equal_the_endpoints_for_1000_images(registry_home, endpoint, mnist_test, tmp_path):
    from mnistops import tags as T
    from mnistops.serving_client import score

    url, key = endpoint
    images = mnist_test[0][:N_ENDPOINT]
    served = []
    with httpx.Client() as client:
        for lo in range(0, N_ENDPOINT, 100):  # 10 requests of 100 images, as a client would send them
            status, body = score(client, url, key, images[lo:lo + 100], timeout=60)
            assert status == 200, body
            served += body["predictions"]
    np.savez(tmp_path / "test1000.npz", images=images)
    out = tmp_path / "scored" / "test1000.parquet"
    proc = run_cli(["stage=batch", "batch.model=models:/mnist-classifier/1", f"batch.input={tmp_path / 'test1000.npz'}",
                    f"batch.output={out}", "batch.batch_size=256"], registry_home, check=True)
    ids, digits, probs, extra = read_output(out)
    assert ids == [str(i) for i in range(N_ENDPOINT)]
    assert_same_answers(served, digits, probs, extra)
    assert f"scored {N_ENDPOINT} images with models:/mnist-classifier/1" in proc.stdout
    assert "img/s" in proc.stderr and "1000/1000" in proc.stderr  # the progress bar: count, rate

    client = mlflow_client(registry_home)
    exp = client.get_experiment_by_name("mnistops")
    (run,) = client.search_runs([exp.experiment_id], "tags.`mnistops.stage` = 'batch'")
    version = client.get_model_version("mnist-classifier", "1")
    assert run.data.tags[T.BATCH_INPUT_DIGEST] == hashlib.sha256((tmp_path / "test1000.npz").read_bytes()).hexdigest()
    assert run.data.tags[T.MODEL_URI] == "models:/mnist-classifier/1"
    assert run.data.tags[T.BATCH_OUTPUT] == str(out)
    assert run.data.tags[f"{T.LINEAGE_PREFIX}run_id"] == version.tags[T.RUN_ID]
    assert run.data.tags[f"{T.LINEAGE_PREFIX}weights_sha256"] == version.tags[T.WEIGHTS_SHA256]
    assert run.data.metrics["batch/images"] == N_ENDPOINT
    shares = [run.data.metrics[f"batch/share_{d}"] for d in range(10)]
    assert np.isclose(sum(shares), 1.0) and np.isclose(shares[7], np.mean(np.asarray(digits) == 7))


@pytest.mark.integration
def test_pictures_and_parquet_answer_as_the_endpoints_upload_and_score_routes(registry_home, endpoint, mnist_test,
                                                                               tmp_path):
    """A folder of PNGs -> CSV equals /predict on each file; a parquet of pixels -> JSONL equals /score."""
    import csv

    url, key = endpoint
    images = mnist_test[0][2000:2060]
    names = write_pngs(tmp_path / "pngs", images)
    uploads = []
    with httpx.Client() as client:
        for name in names:
            resp = client.post(f"{url}/predict", files={"file": (name, (tmp_path / "pngs" / name).read_bytes(),
                                                                 "image/png")},
                               headers={"Authorization": f"Bearer {key}"}, timeout=30)
            assert resp.status_code == 200, resp.text
            uploads += resp.json()["predictions"]
        status, body = __import__("mnistops.serving_client", fromlist=["score"]).score(client, url, key, images,
                                                                                       timeout=60)
        assert status == 200
    run_cli(["stage=batch", "batch.model=models:/mnist-classifier@candidate", f"batch.input={tmp_path / 'pngs'}",
             f"batch.output={tmp_path / 'pngs.csv'}", "batch.progress=false"], registry_home, check=True)
    with open(tmp_path / "pngs.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == names
    extra = {c: np.array([float(r[c]) if c == "ood_score" else r[c] == "true" for r in rows])
             for c in ("ood_score", "ood") if c in rows[0]}
    assert_same_answers(uploads, [int(r["digit"]) for r in rows],
                        np.array([[float(r[f"p{k}"]) for k in range(10)] for r in rows], np.float32), extra)

    write_parquet(tmp_path / "in.parquet", images, "lists")
    run_cli(["stage=batch", "batch.model=models:/mnist-classifier/latest", f"batch.input={tmp_path / 'in.parquet'}",
             f"batch.output={tmp_path / 'out.jsonl'}", "batch.threads=1"], registry_home, check=True)
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in lines] == [f"img-{i}" for i in range(60)]
    extra = {c: np.array([r[c] for r in lines]) for c in ("ood_score", "ood") if c in lines[0]}
    assert_same_answers(body["predictions"], [r["digit"] for r in lines],
                        np.array([r["probabilities"] for r in lines], np.float32), extra)


@pytest.mark.integration
def test_bad_input_fails_in_one_line_and_writes_nothing(registry_home, mnist_test, tmp_path):
    good = tmp_path / "pngs"
    write_pngs(good, mnist_test[0][:20])
    (good / "digit-0007.png").write_bytes(png_bytes(mnist_test[0][7])[:60])  # truncated
    out = tmp_path / "out"
    out.mkdir()
    v1 = "batch.model=models:/mnist-classifier/1"
    cases = [
        ([v1, f"batch.input={good}", f"batch.output={out / 's.parquet'}"], "batch.input: digit-0007.png:", "s.parquet"),
        ([v1, f"batch.input={tmp_path / 'nope'}", f"batch.output={out / 'n.csv'}"], "no such file or folder", "n.csv"),
        ([v1, f"batch.input={good}", f"batch.output={out / 'n.xlsx'}"], "batch.output=", "n.xlsx"),
        # the default model is the env's @champion: this registry has none yet
        ([f"batch.input={good}", f"batch.output={out / 'c.parquet'}"],
         "batch.model=models:/mnist-classifier@champion: no version of mnist-classifier has alias @champion", "c.parquet"),
        ([f"batch.input={good}", f"batch.output={out / 'v.parquet'}", "batch.model=models:/mnist-classifier/9"],
         "models:/mnist-classifier/9 not found", "v.parquet"),
        ([f"batch.input={good}", f"batch.output={out / 'w.parquet'}", "batch.model=mnist-classifier"],
         "batch.model='mnist-classifier' is not a model reference", "w.parquet"),
    ]
    for args, needle, name in cases:
        proc = run_cli(["stage=batch", *args], registry_home)
        assert proc.returncode != 0, proc.stdout
        errors = [line for line in proc.stderr.splitlines() if line.startswith("mnistops: error:")]
        assert len(errors) == 1 and needle in errors[0], proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
        assert no_leftovers(out, name), sorted(p.name for p in out.iterdir())
