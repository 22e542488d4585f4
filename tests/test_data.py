"""stage=data and the dataset catalog: mirrors in order, files verified by their content (so a
mirror may recompress them or serve them uncompressed), an atomic cache, clear errors for
unreachable mirrors and broken files, splits by name read once per process, and what the stage
logs to MLflow."""

from __future__ import annotations

import gzip
import http.server
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import numpy as np

from conftest import CONF, REPO, compose, mirror_url, mlflow_client, run_cli, runs_of
from mnistops.data import catalog, mirrors
from mnistops.data.idx import read_idx
from mnistops.errors import MnistopsError

FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
KEYS = dict(zip(FILES, ["train_images", "train_labels", "test_images", "test_labels"]))


def fetch_with(tmp_path, monkeypatch, *mirror_dirs, overrides=()):
    monkeypatch.delenv("MNISTOPS_DATA_MIRROR", raising=False)
    urls = ",".join(d if str(d).startswith(("http", "file")) else Path(d).as_uri() for d in mirror_dirs)
    cfg = compose([f"data.mirrors=[{urls}]", "data.retries=0", "data.timeout_s=5", *overrides], tmp_path)
    return cfg, mirrors.fetch(cfg)


@pytest.fixture(scope="module")
def other_mirrors(tmp_path_factory, mirror_dir):
    """The real files as other mirrors serve them: recompressed (another level, another mtime and
    file name in the header: other .gz bytes, same content) and uncompressed (no .gz at all)."""
    root = tmp_path_factory.mktemp("mirrors")
    recompressed, uncompressed = root / "recompressed", root / "uncompressed"
    recompressed.mkdir()
    uncompressed.mkdir()
    for name in FILES:
        raw = gzip.decompress((mirror_dir / f"{name}.gz").read_bytes())
        (uncompressed / name).write_bytes(raw)
        with open(recompressed / f"{name}.gz", "wb") as out:
            with gzip.GzipFile(filename="other-name", mode="wb", fileobj=out, compresslevel=1, mtime=1234567890) as gz:
                gz.write(raw)
    return {"recompressed": recompressed, "uncompressed": uncompressed}


def sha256_overrides(mirror_dir) -> list:
    """The MNIST files described the way conf/data/fashion_mnist.yaml describes its own: a SHA-256
    of the decompressed bytes and no MD5."""
    import hashlib

    out = []
    for name, key in KEYS.items():
        raw = gzip.decompress((mirror_dir / f"{name}.gz").read_bytes())
        out += [f"data.{key}.md5=null", f"data.{key}.sha256={hashlib.sha256(raw).hexdigest()}"]
    return out


def broken_mirror(tmp_path, mirror_dir, name, mutate) -> Path:
    """A copy of the real mirror with one file deliberately damaged by `mutate(bytes) -> bytes`."""
    bad = tmp_path / "bad-mirror"
    shutil.copytree(mirror_dir, bad)
    target = bad / f"{name}.gz"
    os.chmod(target, 0o644)
    target.write_bytes(mutate(target.read_bytes()))
    return bad


def cache_files(home: Path):
    cache = home / "data" / "mnist"
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_fetch_verifies_and_caches(tmp_path, monkeypatch, mirror_dir):
    cfg, paths = fetch_with(tmp_path, monkeypatch, mirror_dir)
    assert read_idx(paths["train_images"]).shape == (60000, 28, 28)
    assert read_idx(paths["test_labels"]).shape == (10000,)
    for key in mirrors.FILE_KEYS:
        assert mirrors.md5_of(paths[key]) == cfg.data[key].md5
    before = {p: p.stat().st_mtime_ns for p in paths.values()}
    # a second run downloads nothing, even with every mirror gone
    _, again = fetch_with(tmp_path, monkeypatch, tmp_path / "nowhere")
    assert {p: p.stat().st_mtime_ns for p in again.values()} == before


@pytest.mark.parametrize("form", ["recompressed", "uncompressed"])
def test_a_mirror_that_recompresses_or_does_not_compress_verifies(form, tmp_path, monkeypatch, mirror_dir,
                                                                 other_mirrors):
    served = other_mirrors[form]
    if form == "recompressed":  # other .gz bytes: a check of the .gz digest would refuse them
        assert (served / f"{FILES[1]}.gz").read_bytes() != (mirror_dir / f"{FILES[1]}.gz").read_bytes()
    cfg, paths = fetch_with(tmp_path, monkeypatch, served)
    for key in mirrors.FILE_KEYS:
        assert mirrors.md5_of(paths[key]) == cfg.data[key].md5


@pytest.mark.parametrize("form", ["recompressed", "uncompressed"])
def test_a_dataset_known_by_sha256_verifies_from_any_faithful_mirror(form, tmp_path, monkeypatch, mirror_dir,
                                                                    other_mirrors):
    overrides = sha256_overrides(mirror_dir)
    if form == "uncompressed":  # a digest that is not the file's: refused (checked before the rest is fetched)
        wrong = [o if not o.startswith("data.train_images.sha256=") else "data.train_images.sha256=" + "0" * 64
                 for o in overrides]
        with pytest.raises(MnistopsError, match="train-images-idx3-ubyte.*checksum mismatch: sha256"):
            fetch_with(tmp_path / "wrong", monkeypatch, other_mirrors[form], overrides=wrong)
    cfg, paths = fetch_with(tmp_path / "ok", monkeypatch, other_mirrors[form], overrides=overrides)
    assert read_idx(paths["test_labels"])[:3].tolist() == [7, 2, 1]


def test_a_publishers_gz_digest_is_accepted_but_not_required(tmp_path, monkeypatch, mirror_dir, other_mirrors):
    import hashlib

    only_gz = []
    for name, key in KEYS.items():
        gz_md5 = hashlib.md5((mirror_dir / f"{name}.gz").read_bytes()).hexdigest()
        only_gz += [f"data.{key}.md5=null", f"data.{key}.gz_md5={gz_md5}"]
    _, paths = fetch_with(tmp_path / "canonical", monkeypatch, mirror_dir, overrides=only_gz)
    assert all(p.is_file() for p in paths.values())
    # with nothing but a .gz digest, an uncompressed file cannot be verified: refused, saying why
    with pytest.raises(MnistopsError, match="no md5/sha256 of the decompressed bytes"):
        fetch_with(tmp_path / "raw", monkeypatch, other_mirrors["uncompressed"], overrides=only_gz)


def test_a_file_with_nothing_to_verify_it_is_refused(tmp_path, monkeypatch, mirror_dir):
    with pytest.raises(MnistopsError, match="data.test_labels .*has no md5, sha256 or gz_md5"):
        fetch_with(tmp_path, monkeypatch, mirror_dir, overrides=["data.test_labels.md5=null"])


def test_every_dataset_config_gives_content_digests():
    """Every file of every conf/data option is verified by its decompressed bytes, so a mirror that
    recompresses or serves uncompressed files verifies (a .gz digest alone would refuse it)."""
    for path in sorted((CONF / "data").glob("*.yaml")):
        cfg = compose([f"data={path.stem}"])
        for key in mirrors.FILE_KEYS:
            assert mirrors.expected_digests(cfg.data[key]), f"{path.name}: {key} has no md5/sha256"


def test_mirrors_are_tried_in_order(tmp_path, monkeypatch, mirror_dir, other_mirrors, caplog):
    """Past the broken mirrors, the first good one serves every file; the good one after it is never asked."""
    def sources(*mirror_dirs, into):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger=mirrors.__name__):
            _, paths = fetch_with(into, monkeypatch, *mirror_dirs)
        assert all(p.is_file() for p in paths.values())
        return {r.args[0]: r.args[1] for r in caplog.records if r.getMessage().startswith("fetched ")}

    canonical, uncompressed = mirror_dir.as_uri() + "/", other_mirrors["uncompressed"].as_uri() + "/"
    broken = [tmp_path / "missing-mirror", "http://127.0.0.1:9/"]
    assert sources(*broken, mirror_dir, other_mirrors["uncompressed"], into=tmp_path / "a") == \
        {name: canonical for name in FILES}
    assert sources(*broken, other_mirrors["uncompressed"], mirror_dir, into=tmp_path / "b") == \
        {name: uncompressed for name in FILES}


def test_all_mirrors_unreachable_is_one_clear_error(tmp_path, monkeypatch):
    with pytest.raises(MnistopsError) as err:
        fetch_with(tmp_path, monkeypatch, tmp_path / "missing-mirror", "http://127.0.0.1:9/")
    msg = str(err.value)
    assert "train-images-idx3-ubyte" in msg and "missing-mirror" in msg and "127.0.0.1:9" in msg
    assert "\n" not in msg
    assert [f for f in cache_files(tmp_path) if not f.startswith(".")] == []


def test_checksum_mismatch_is_refused(tmp_path, monkeypatch, mirror_dir):
    def flip_a_label(gz: bytes) -> bytes:
        raw = bytearray(gzip.decompress(gz))
        raw[100] = (raw[100] + 1) % 10
        return gzip.compress(bytes(raw))

    bad = broken_mirror(tmp_path, mirror_dir, "train-labels-idx1-ubyte", flip_a_label)
    with pytest.raises(MnistopsError, match="checksum mismatch"):
        fetch_with(tmp_path, monkeypatch, bad)
    assert "train-labels-idx1-ubyte" not in cache_files(tmp_path)
    # the same broken mirror first, a good one second: the good copy wins
    _, paths = fetch_with(tmp_path, monkeypatch, bad, mirror_dir)
    assert mirrors.md5_of(paths["train_labels"]) == "a25bea736e30d166cdddb491f175f624"


def test_truncated_download_is_refused(tmp_path, monkeypatch, mirror_dir):
    bad = broken_mirror(tmp_path, mirror_dir, "t10k-images-idx3-ubyte", lambda gz: gz[: len(gz) // 2])
    with pytest.raises(MnistopsError, match="truncated or corrupt"):
        fetch_with(tmp_path, monkeypatch, bad)
    assert "t10k-images-idx3-ubyte" not in cache_files(tmp_path)
    assert not [f for f in cache_files(tmp_path) if f.endswith(".part")]


def test_not_gzip_is_refused(tmp_path, monkeypatch, mirror_dir):
    bad = broken_mirror(tmp_path, mirror_dir, "t10k-labels-idx1-ubyte", lambda gz: b"<html>404</html>")
    with pytest.raises(MnistopsError, match="t10k-labels-idx1-ubyte.*not a gzip file"):
        fetch_with(tmp_path, monkeypatch, bad)


def test_a_corrupt_cached_file_is_fetched_again(tmp_path, monkeypatch, mirror_dir):
    cfg, paths = fetch_with(tmp_path, monkeypatch, mirror_dir)
    paths["test_labels"].write_bytes(paths["test_labels"].read_bytes()[:500])
    _, again = fetch_with(tmp_path, monkeypatch, mirror_dir)
    assert mirrors.md5_of(again["test_labels"]) == cfg.data.test_labels.md5


def test_catalog_splits_by_name(data_cache):
    home = data_cache.parent  # the session's verified cache, only read here
    cfg = compose(["seed=3", "data.val_size=1000"], home)
    train, test, fit, val = (catalog.load(cfg, s) for s in ("train", "test", "fit", "val"))
    assert (len(train), len(test), len(fit), len(val)) == (60000, 10000, 59000, 1000)
    for split in (train, test, fit, val):
        assert split.images.dtype == np.uint8 and split.images.shape[1:] == (28, 28)
        assert split.labels.dtype == np.int64 and set(np.unique(split.labels)) == set(range(10))
        assert not split.images.flags.writeable and not split.labels.flags.writeable
    assert test.labels[:3].tolist() == [7, 2, 1]
    # val and fit partition the training file, by a permutation seeded by `seed`
    val_idx, fit_idx = catalog.holdout(cfg, 60000)
    assert sorted(np.concatenate([val_idx, fit_idx]).tolist()) == list(range(60000))
    assert np.array_equal(val.images, train.images[val_idx]) and np.array_equal(fit.labels, train.labels[fit_idx])
    other_seed = catalog.load(compose(["seed=4", "data.val_size=1000"], home), "val")
    assert not np.array_equal(other_seed.labels, val.labels)
    with pytest.raises(MnistopsError, match="unknown dataset split 'validation'"):
        catalog.load(cfg, "validation")


def test_catalog_reads_once_and_notices_a_changed_file(tmp_path, data_cache):
    shutil.copytree(data_cache, tmp_path / "data")
    cfg = compose([], tmp_path)
    first = catalog.load(cfg, "test")
    assert catalog.load(cfg, "test").images is first.images  # a stage that asks twice reads once
    with pytest.raises(ValueError):
        first.images[0, 0, 0] = 1  # and nobody changes what another caller sees
    labels = tmp_path / "data" / "mnist" / "t10k-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:500])  # damaged on disk: verified and fetched again
    again = catalog.load(cfg, "test")
    assert again.labels is not first.labels and np.array_equal(again.labels, first.labels)


def test_extra_training_data_joins_the_fit_split(tmp_path, data_cache):
    home = data_cache.parent  # the session's verified cache, only read here
    extra = tmp_path / "extra.npz"
    np.savez(extra, images=np.full((7, 28, 28), 255, np.uint8), labels=np.arange(7))
    cfg = compose([f"data.extra_train=[{extra}]"], home)
    fit = catalog.load(cfg, "fit")
    assert len(fit) == 55000 + 7 and fit.labels[-7:].tolist() == list(range(7))
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((2, 27, 27), np.uint8), labels=[1, 2])
    with pytest.raises(MnistopsError, match="data.extra_train: .*bad.npz.*uint8 \\(N, 28, 28\\)"):
        catalog.load(compose([f"data.extra_train=[{bad}]"], home), "fit")


def test_corrupt_idx_header_is_named(tmp_path):
    bad = tmp_path / "x-idx1-ubyte"
    bad.write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x10" + b"\x01" * 3)
    with pytest.raises(MnistopsError, match="corrupt IDX file .*x-idx1-ubyte"):
        read_idx(bad)


class _SlowHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the real files, but stalls halfway through the big one."""

    def do_GET(self):  # noqa: N802
        path = Path(self.server.root) / self.path.lstrip("/")
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if "train-images" in self.path:
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.server.halfway.set()
            time.sleep(30)
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.mark.integration
def test_killed_mid_download_leaves_nothing_a_later_run_trusts(tmp_path, mirror_dir):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowHandler)
    server.root, server.halfway = str(mirror_dir), threading.Event()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        env = {**os.environ, "MNISTOPS_HOME": str(tmp_path), "MNISTOPS_DATA_MIRROR": url}
        proc = subprocess.Popen([sys.executable, "-m", "mnistops", "stage=data"], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert server.halfway.wait(120), "download never started"
        deadline = time.monotonic() + 120  # killed once the half it got is in its scratch file
        while not any(f.endswith(".part") for f in cache_files(tmp_path)):
            assert time.monotonic() < deadline and proc.poll() is None, "no scratch file of the download"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        server.shutdown()
    assert "train-images-idx3-ubyte" not in cache_files(tmp_path)
    assert any(f.endswith(".part") for f in cache_files(tmp_path))  # the scratch dir of the dead download
    proc = run_cli(["stage=data"], tmp_path, env={"MNISTOPS_DATA_MIRROR": mirror_url()}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert not [f for f in cache_files(tmp_path) if f.endswith(".part")]
    assert mirrors.md5_of(tmp_path / "data" / "mnist" / "train-images-idx3-ubyte") == "6bbc9ace898e44ae57da46a324031adb"


@pytest.mark.integration
def test_data_stage_logs_dataset_and_pictures(home):
    proc = run_cli(["stage=data"], home, check=True)
    assert "verified" in proc.stdout and "5923" in proc.stdout
    client = mlflow_client(home)
    (run,) = runs_of(client, "data")
    digest = run.data.tags["mnistops.dataset_digest"]
    assert len(digest) == 16
    names = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert {"mnist-train", "mnist-test"} <= set(names)
    assert names["mnist-train"].dataset.digest.startswith(digest)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "data")}
    assert {"data/samples.png", "data/class_histogram.png", "data/stats.json"} <= artifacts
    local = Path(client.download_artifacts(run.info.run_id, "data/samples.png"))
    assert local.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert run.data.metrics["data/train_images"] == 60000


@pytest.mark.integration
def test_data_stage_error_is_one_line_and_exit_code(tmp_path):
    proc = run_cli(["stage=data", "data.mirrors=[]", "data.retries=0"], tmp_path,
                   env={"MNISTOPS_DATA_MIRROR": (tmp_path / "none").as_uri()}, timeout=120)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("mnistops: error:")]
    assert len(errors) == 1 and "could not get a verified" in errors[0]
    assert "Traceback" not in proc.stderr
