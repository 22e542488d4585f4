"""stage=data: mirrors in order, checksums of the decompressed bytes, an atomic cache, clear
errors for unreachable mirrors and broken files, and what it logs to MLflow."""

from __future__ import annotations

import gzip
import http.server
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO, compose, mirror_url, mlflow_client, run_cli, runs_of
from mnistops.data import mirrors
from mnistops.data.idx import read_idx
from mnistops.errors import MnistopsError

FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def fetch_with(tmp_path, monkeypatch, *mirror_dirs):
    monkeypatch.delenv("MNISTOPS_DATA_MIRROR", raising=False)
    urls = ",".join(d if str(d).startswith(("http", "file")) else Path(d).as_uri() for d in mirror_dirs)
    cfg = compose([f"data.mirrors=[{urls}]", "data.retries=0", "data.timeout_s=5"], tmp_path)
    return cfg, mirrors.fetch(cfg)


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


def test_mirrors_are_tried_in_order(tmp_path, monkeypatch, mirror_dir):
    _, paths = fetch_with(tmp_path, monkeypatch, tmp_path / "missing-mirror", "http://127.0.0.1:9/", mirror_dir)
    assert all(p.is_file() for p in paths.values())


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
    with pytest.raises(MnistopsError, match="t10k-labels-idx1-ubyte.*(corrupt|gzip)"):
        fetch_with(tmp_path, monkeypatch, bad)


def test_a_corrupt_cached_file_is_fetched_again(tmp_path, monkeypatch, mirror_dir):
    cfg, paths = fetch_with(tmp_path, monkeypatch, mirror_dir)
    paths["test_labels"].write_bytes(paths["test_labels"].read_bytes()[:500])
    _, again = fetch_with(tmp_path, monkeypatch, mirror_dir)
    assert mirrors.md5_of(again["test_labels"]) == cfg.data.test_labels.md5


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
        time.sleep(0.5)
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


def test_data_stage_error_is_one_line_and_exit_code(tmp_path):
    proc = run_cli(["stage=data", "data.mirrors=[]", "data.retries=0"], tmp_path,
                   env={"MNISTOPS_DATA_MIRROR": (tmp_path / "none").as_uri()}, timeout=120)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("mnistops: error:")]
    assert len(errors) == 1 and "could not get a verified" in errors[0]
    assert "Traceback" not in proc.stderr
