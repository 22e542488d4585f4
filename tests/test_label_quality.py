"""Label quality before anything trains on it: confident learning on real MNIST slices with
deliberately corrupted labels (unit tier: the probabilities come from a nearest-neighbour vote over
real training images, no training), and stage=validate / stage=ci with a registered champion
judging the labels (integration tier)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import QUICK, compose, fresh_home, mlflow_client, run_cli, runs_of
from mnistops.errors import MnistopsError
from mnistops.quality import label_quality
from mnistops.stages import validate as validate_stage


# --------------------------------------------------------------------------- unit: the estimate

@pytest.fixture(scope="module")
def mnist_probs(data_cache):
    """(test images, true labels, probabilities): a 10-nearest-neighbour vote among 12,000 real
    training images for 3,000 official test images (~97 % right; out of sample, as a champion's
    probabilities on new data are)."""
    from mnistops.data.idx import read_idx

    root = data_cache / "mnist"
    train_x = np.array(read_idx(root / "train-images-idx3-ubyte"))[:12000].reshape(-1, 784).astype(np.float32) / 255
    train_y = np.array(read_idx(root / "train-labels-idx1-ubyte"))[:12000].astype(np.int64)
    images = np.array(read_idx(root / "t10k-images-idx3-ubyte"))[5000:8000]
    labels = np.array(read_idx(root / "t10k-labels-idx1-ubyte"))[5000:8000].astype(np.int64)
    x = images.reshape(-1, 784).astype(np.float32) / 255
    probs = np.empty((len(x), 10))
    sq = (train_x * train_x).sum(1)
    for start in range(0, len(x), 2000):
        chunk = x[start:start + 2000]
        d2 = sq[None] - 2 * chunk @ train_x.T
        nearest = np.argpartition(d2, 10, axis=1)[:, :10]
        votes = np.full((len(chunk), 10), 0.05)
        for j in range(10):
            np.add.at(votes, (np.arange(len(chunk)), train_y[nearest[:, j]]), 1.0)
        probs[start:start + 2000] = votes / votes.sum(1, keepdims=True)
    assert (probs.argmax(1) == labels).mean() > 0.95
    return images, labels, probs


def batch(mnist_probs, seed: int, n: int = 1000):
    images, labels, probs = mnist_probs
    rows = np.random.default_rng(seed).choice(len(labels), n, replace=False)
    return images[rows], labels[rows].copy(), probs[rows]


def random_wrong(labels, share: float, seed: int):
    rng = np.random.default_rng(seed)
    noisy = labels.copy()
    rows = rng.choice(len(labels), int(round(share * len(labels))), replace=False)
    noisy[rows] = (noisy[rows] + rng.integers(1, 10, len(rows))) % 10
    return noisy


def half_of(labels, source: int, target: int, seed: int):
    noisy = labels.copy()
    rows = np.flatnonzero(labels == source)
    noisy[np.random.default_rng(seed).choice(rows, len(rows) // 2, replace=False)] = target
    return noisy


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clean_labels_pass_with_a_low_estimate(mnist_probs, seed):
    _, labels, probs = batch(mnist_probs, seed)
    q = label_quality.assess(labels, probs)
    assert q.passed, q.summary()
    assert q.noise_rate < 0.03


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ten_percent_random_wrong_labels_are_refused_and_found(mnist_probs, seed):
    _, labels, probs = batch(mnist_probs, seed)
    noisy = random_wrong(labels, 0.10, seed)
    wrong = np.flatnonzero(noisy != labels)
    q = label_quality.assess(noisy, probs)
    assert not q.passed and "quality.max_label_noise" in q.reasons[0]
    assert 0.07 <= q.noise_rate <= 0.15, q.noise_rate
    assert np.isin(wrong, q.suspects).mean() >= 0.8  # the wrong rows are among the suspects
    # the suspects most likely wrong come first: the top half are nearly all truly wrong
    top = q.suspects[:len(q.suspects) // 2]
    assert np.isin(top, wrong).mean() >= 0.9


def test_half_the_fours_labelled_nine_is_a_systematic_confusion(mnist_probs):
    _, labels, probs = batch(mnist_probs, 7)
    noisy = half_of(labels, 4, 9, 7)
    q = label_quality.assess(noisy, probs, classes=[str(i) for i in range(10)])
    assert not q.passed
    assert q.confusions[0].words(q.classes) == "4 labelled 9"
    assert any("systematic confusion" in r and "labelled 9" in r for r in q.reasons), q.reasons
    assert "4 labelled 9" in q.summary()
    wrong = np.flatnonzero(noisy != labels)
    assert np.isin(wrong, q.suspects).mean() >= 0.8


def test_a_swap_both_ways_is_refused(mnist_probs):
    _, labels, probs = batch(mnist_probs, 11)
    fours, nines = half_of(labels, 4, 9, 1) != labels, half_of(labels, 9, 4, 2) != labels
    noisy = labels.copy()
    noisy[fours], noisy[nines] = 9, 4
    q = label_quality.assess(noisy, probs)
    assert not q.passed and q.noise_rate > 0.05
    assert {c.words(q.classes) for c in q.confusions[:2]} == {"4 labelled 9", "9 labelled 4"}


def test_drop_keeps_every_row_but_the_suspects(mnist_probs, tmp_path):
    images, labels, probs = batch(mnist_probs, 3, n=400)
    noisy = random_wrong(labels, 0.2, 3)
    q = label_quality.assess(noisy, probs)
    keep = label_quality.kept(len(noisy), q)
    assert keep.sum() == len(noisy) - len(q.suspects) and not keep[q.suspects].any()
    # what is kept is far cleaner than what came in
    assert (noisy[keep] != labels[keep]).mean() < 0.5 * (noisy != labels).mean()
    report = json.loads(q.write(tmp_path / "q.json").read_text())
    assert [s["row"] for s in report["suspects"]] == [int(r) for r in q.suspects]
    assert all(s["labelled"] == str(noisy[s["row"]]) for s in report["suspects"])
    grid = label_quality.suspect_grid(images, q, tmp_path / "suspects.png", limit=12)
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_batch_with_few_classes_and_one_without_suspects(mnist_probs, tmp_path):
    images, labels, probs = mnist_probs
    rows = np.flatnonzero(np.isin(labels, [0, 1, 2]))[:300]
    noisy = labels[rows].copy()
    noisy[:30] = np.where(noisy[:30] == 0, 1, 0)  # 10 % wrong, all inside the three classes
    q = label_quality.assess(noisy, probs[rows])
    assert not q.passed and np.isin(np.arange(30), q.suspects).mean() >= 0.8
    made = {"0 labelled 1", "1 labelled 0", "2 labelled 0"}
    assert {c.words(q.classes) for c in q.confusions[:2]} <= made, q.confusion_words()
    sure = np.eye(10)[labels[rows]] * 0.9 + 0.01  # a model that agrees with every label: no suspects
    clean = label_quality.assess(labels[rows], sure)
    assert clean.passed and clean.noise_rate == 0 and clean.confusion_words() == "none"
    assert label_quality.suspect_grid(images[rows], clean, tmp_path / "none.png") is None
    with pytest.raises(ValueError, match="probabilities must be"):
        label_quality.assess(labels[:5], probs[:4])


def test_quality_keys_and_their_one_line_errors(tmp_path):
    cfg = compose([], tmp_path)
    assert cfg.quality.max_label_noise == 0.05 and cfg.quality.label_issues == "fail"
    assert cfg.quality.model == "models:/mnist-classifier@champion"
    validate_stage.check_quality_config(cfg)
    with pytest.raises(MnistopsError, match=r"quality.label_issues='keep': expected one of fail, drop"):
        validate_stage.check_quality_config(compose(["quality.label_issues=keep"], tmp_path))
    with pytest.raises(MnistopsError, match=r"quality.max_label_noise=5.0"):
        validate_stage.check_quality_config(compose(["quality.max_label_noise=5"], tmp_path))
    with pytest.raises(MnistopsError, match=r"quality.min_model_accuracy=-0.1: expected a share"):
        validate_stage.check_quality_config(compose(["quality.min_model_accuracy=-0.1"], tmp_path))


# --------------------------------------------------------------------------- integration: the stages

def write_batch(path, images, labels):
    np.savez(path, images=images, labels=labels)
    return path


@pytest.fixture(scope="module")
def judged_home(tmp_path_factory, data_cache):
    """env qa with a baseline suite and a champion good enough (~97 %) to judge labels: a quick
    cnn_small trained on 200 batches, registered and approved by the real gate."""
    home = fresh_home(tmp_path_factory, data_cache, "label-quality-home")
    run_cli(["env=qa", "stage=pipeline", "experiment=fast", "trainer.max_epochs=1", "trainer.limit_train_batches=200",
             "trainer.limit_val_batches=5"], home, check=True, timeout=900)
    run_cli(["env=qa", "stage=gate", "gate.min_accuracy=0.95"], home, check=True)
    run_cli(["env=qa", "stage=baseline"], home, check=True, timeout=900)
    return home


def slice_of_test_set(home, n=1000, start=5000):
    from conftest import mnist_split

    images, labels = mnist_split(home, "test")
    return images[start:start + n], labels[start:start + n].copy()


@pytest.mark.integration
def test_a_noisy_feedback_batch_stops_ci_before_training_and_a_clean_one_passes(judged_home, tmp_path):
    images, labels = slice_of_test_set(judged_home)
    noisy = write_batch(tmp_path / "noisy.npz", images, random_wrong(labels, 0.12, 5))
    client = mlflow_client(judged_home, "qa")
    trains_before = {r.info.run_id for r in runs_of(client, "train")}

    proc = run_cli(["env=qa", "stage=ci", *QUICK, f"data.extra_train=[{noisy}]"], judged_home, timeout=900)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert f"label quality of data.extra_train {noisy} failed" in proc.stderr
    assert "quality.max_label_noise" in proc.stderr
    assert "label quality FAILED" in proc.stdout and "most likely confusions" in proc.stdout
    assert "ci: running" not in proc.stdout, "the tests step ran after a failed validate"
    ci = [r for r in runs_of(client, "ci") if r.info.status == "FAILED"]
    assert len(ci) == 1
    (validate,) = [r for r in runs_of(client, "validate") if r.data.tags.get("mlflow.parentRunId") == ci[0].info.run_id]
    assert validate.data.tags["mnistops.label_quality"] == "failed"
    assert validate.data.tags["mnistops.validation"] == "failed"
    assert validate.data.metrics["validate/extra_train_0/label_noise"] > 0.05
    logged = {f.path for f in client.list_artifacts(validate.info.run_id, "validation/label_quality/extra_train_0")}
    assert {"validation/label_quality/extra_train_0/label_quality.json",
            "validation/label_quality/extra_train_0/suspects.png"} <= logged
    assert {r.info.run_id for r in runs_of(client, "train")} == trains_before, "a train run started"

    clean = write_batch(tmp_path / "clean.npz", images, labels)
    # (no training behind it: the CI going on past validate is the run finishing, and what follows
    # validate in a whole CI is test_pipelines_rehearsal.py's and test_ci_steps.py's)
    proc = run_cli(["env=qa", "stage=ci", "stage.steps=[data,validate]", f"data.extra_train=[{clean}]"],
                   judged_home, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "label quality PASSED" in proc.stdout
    ci = [r for r in runs_of(client, "ci") if r.info.status == "FINISHED"]
    assert len(ci) == 1
    children = {r.data.tags["mnistops.stage"]: r for r in client.search_runs(
        [ci[0].info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{ci[0].info.run_id}'")}
    assert children["validate"].data.tags["mnistops.label_quality"] == "passed"
    assert children["validate"].data.metrics["validate/extra_train_0/label_noise"] <= 0.05
    assert children["validate"].data.tags["mnistops.validation"] == "passed"


@pytest.mark.integration
def test_label_issues_drop_drops_the_suspects_and_records_them(judged_home, tmp_path):
    images, labels = slice_of_test_set(judged_home, n=600, start=2000)
    noisy_labels = half_of(labels, 4, 9, 3)
    wrong = np.flatnonzero(noisy_labels != labels)
    noisy = write_batch(tmp_path / "noisy.npz", images, noisy_labels)

    proc = run_cli(["env=qa", "stage=validate", f"validate.batch={noisy}", "quality.label_issues=drop"],
                   judged_home, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "systematic confusion" in proc.stdout and "4 labelled 9" in proc.stdout
    assert "label quality SUSPECTS DROPPED" in proc.stdout and "would fail: systematic confusion" in proc.stdout
    assert "quality.label_issues=drop: dropped" in proc.stdout
    client = mlflow_client(judged_home, "qa")
    run = max(runs_of(client, "validate"), key=lambda r: r.info.start_time)
    assert run.data.tags["mnistops.label_quality"] == "dropped"
    import mlflow

    report = json.loads(mlflow.artifacts.load_text(
        f"runs:/{run.info.run_id}/validation/label_quality/batch/label_quality.json"))
    dropped = np.array(report["dropped_rows"])
    assert run.data.metrics["validate/labels_dropped"] == len(dropped) == len(noisy_labels) - report["kept"]
    assert np.isin(wrong, dropped).mean() >= 0.8
    kept = np.load(mlflow.artifacts.download_artifacts(
        f"runs:/{run.info.run_id}/validation/label_quality/batch/kept.npz", dst_path=str(tmp_path)))
    keep = np.setdiff1d(np.arange(len(noisy_labels)), dropped)
    assert np.array_equal(kept["labels"], noisy_labels[keep]) and np.array_equal(kept["images"], images[keep])

    # labels that are not digits are not judged (the suite names them), and the batch is refused
    bad_labels = noisy_labels.copy()
    bad_labels[0] = 12
    bad = write_batch(tmp_path / "bad.npz", images, bad_labels)
    proc = run_cli(["env=qa", "stage=validate", f"validate.batch={bad}"], judged_home, timeout=600)
    assert proc.returncode == 2 and f"label quality of {bad}: not checked: labels must be 0..9" in proc.stdout


@pytest.mark.integration
def test_without_a_champion_the_class_mean_check_judges_the_labels(judged_home, tmp_path):
    images, labels = slice_of_test_set(judged_home, start=3000)
    noisy = write_batch(tmp_path / "noisy40.npz", images, random_wrong(labels, 0.4, 9))
    # an alias no version carries: the env has no champion to judge labels with
    proc = run_cli(["env=qa", "stage=validate", f"validate.batch={noisy}",
                    "quality.model=models:/mnist-classifier@nobody"], judged_home, timeout=600)
    assert proc.returncode == 2
    assert "no models:/mnist-classifier@nobody in env 'qa' to judge them" in proc.stdout
    assert "label_matches_template" in proc.stderr  # the class-mean consistency check refused them
    client = mlflow_client(judged_home, "qa")
    run = max(runs_of(client, "validate"), key=lambda r: r.info.start_time)
    assert run.data.tags["mnistops.label_quality"] == "not checked"
    assert "validate/label_noise" not in run.data.metrics

    # a champion too weak to tell its own mistakes from wrong labels does not judge either
    weak = run_cli(["env=qa", "stage=validate", f"validate.batch={noisy}", "quality.min_model_accuracy=0.9999"],
                   judged_home, timeout=600)
    assert weak.returncode == 2 and "label_matches_template" in weak.stderr
    assert "is too weak to judge them (quality.min_model_accuracy 100%)" in weak.stdout
