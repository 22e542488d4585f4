"""stage=ui: MLflow's UI on an env's store, opened in a real headless Chromium after a real main job:
the run with its metrics and the evaluation plots, and the registered model with its alias and
lineage tags, as a person would find them. Started as a user does (`python -m mnistops stage=ui`,
in the foreground) and stopped with Ctrl-C (SIGINT) or kill (SIGTERM).

Needs Debian's Chromium and playwright, like tests/test_browser.py: skipped without them on a
laptop, a failure in CI (CI=true).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import REPO, TINY, compose, free_port, fresh_home, mirror_url, mlflow_client, needs_tool, runs_of
from mnistops.errors import MnistopsError
from mnistops.stages import run_stage

CHROMIUM = os.environ.get("MNISTOPS_CHROMIUM", "/usr/bin/chromium")
WAIT_MS = 60_000  # the UI is a single-page app: generous waits for a loaded machine


def test_no_store_yet_is_one_clear_error(tmp_path):
    with pytest.raises(MnistopsError, match="env 'qa' has no MLflow store yet .*python -m mnistops env=qa"):
        run_stage(compose(["stage=ui", "env=qa"], tmp_path))


def test_a_tracking_server_is_its_own_ui(tmp_path, capsys):
    result = run_stage(compose(["stage=ui", "env.tracking_uri=http://mlflow.example:5000"], tmp_path))
    assert result.artifacts["url"] == "http://mlflow.example:5000"
    assert "http://mlflow.example:5000" in capsys.readouterr().out


def _unavailable(reason: str):
    needs_tool(f"{reason}: the browser tests need it")


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def store(tmp_path_factory, data_cache):
    """A dev store after the main job on a sliver of training: runs, plots, mnist-classifier v1 @candidate."""
    home = fresh_home(tmp_path_factory, data_cache, "ui-home")
    result = run_stage(compose(["model=logreg", *TINY], home))
    client = mlflow_client(home)
    (train,) = runs_of(client, "train")
    return home, train, result


@pytest.fixture(scope="module")
def ui(store):
    """`python -m mnistops stage=ui` in the foreground, as `make ui` runs it; Ctrl-C at the end."""
    home, _, _ = store
    port = free_port()
    env = {**os.environ, "MNISTOPS_HOME": str(home), "MNISTOPS_DATA_MIRROR": mirror_url(), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mnistops", "stage=ui", f"ui.port={port}"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail(f"stage=ui never answered: {proc.stdout.read()[-3000:]}")
    yield url
    proc.send_signal(signal.SIGINT)  # Ctrl-C, as a user stops it
    proc.communicate(timeout=60)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install -e '.[test]')")
    if not os.path.isfile(CHROMIUM):
        _unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    yield context.new_page()
    context.close()


@pytest.mark.integration
def test_the_registered_model_with_alias_and_lineage(ui, store, page):
    url = ui
    _, train, _ = store
    page.goto(f"{url}/#/models/mnist-classifier")
    page.get_by_text("Version 1", exact=True).wait_for(timeout=WAIT_MS)
    page.get_by_text("candidate").first.wait_for(timeout=WAIT_MS)  # the alias, shown as "@ candidate"
    body = page.inner_text("body")
    assert "mnist-classifier" in body and "mnistops.run_id" in body and train.info.run_id in body


@pytest.mark.integration
def test_the_train_run_with_its_metrics_and_evaluation_plots(ui, store, page):
    url = ui
    _, train, _ = store
    run_url = f"{url}/#/experiments/{train.info.experiment_id}/runs/{train.info.run_id}"
    page.goto(run_url)
    page.get_by_text("test/acc", exact=True).wait_for(timeout=WAIT_MS)
    assert "val/acc" in page.inner_text("body")
    page.goto(f"{run_url}/artifacts")
    page.get_by_text("evaluation", exact=True).click(timeout=WAIT_MS)
    page.get_by_text("confusion_matrix.png", exact=True).click(timeout=WAIT_MS)
    # the preview is the PNG itself, fetched through the UI's server: 7 x 6 inches at 100 dpi
    page.wait_for_function("Array.from(document.images).some(i => i.src.startsWith('blob:') && i.complete"
                           " && i.naturalWidth === 700 && i.naturalHeight === 600)", timeout=WAIT_MS)


@pytest.mark.integration
def test_the_data_runs_sample_grid_is_served(ui, store):
    url = ui
    home, _, _ = store
    (data,) = runs_of(mlflow_client(home), "data")
    with urllib.request.urlopen(f"{url}/get-artifact?path=data/samples.png&run_uuid={data.info.run_id}",
                                timeout=30) as resp:
        assert resp.read()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.integration
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "kill"])
def test_ctrl_c_or_kill_stops_the_ui(stop, store):
    home, _, _ = store
    port = free_port()
    env = {**os.environ, "MNISTOPS_HOME": str(home), "MNISTOPS_DATA_MIRROR": mirror_url(), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mnistops", "stage=ui", f"ui.port={port}"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = proc.stdout.readline()  # printed once the UI answers
    assert first.startswith("MLflow UI for env dev") and listening(port), first
    proc.send_signal(stop)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "MLflow UI stopped" in out
    deadline = time.monotonic() + 30
    while listening(port) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not listening(port), "the MLflow server outlived stage=ui"
