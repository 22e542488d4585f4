"""stage=deploy/smoke/rollback/endpoint against a real supervised endpoint (endpoint.workers) on 127.0.0.1
and real registered versions: blue/green under continuous traffic, failed deploys, rollback, a server
that comes back by itself after a kill, keys rotated under load."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from conftest import QUICK, compose, free_port, fresh_home, mlflow_client, run_cli
from mnistops.data.idx import read_idx
from mnistops.errors import MnistopsError
from mnistops.serving.deployments import now_iso
from mnistops.stages import run_stage

pytestmark = pytest.mark.integration  # trains a model and serves it on real endpoints



@pytest.fixture(scope="module")
def registry_home(tmp_path_factory, data_cache):
    """A dev registry with two good versions of one trained model (v1, v2) and a broken one (v3)."""
    home = fresh_home(tmp_path_factory, data_cache, "deploy-home")
    run_cli(QUICK, home, check=True)
    client = mlflow_client(home)
    v1 = client.get_model_version("mnist-classifier", "1")
    run_cli(["stage=register", f"register.run_id={v1.run_id}"], home, check=True)  # v2: same weights
    broken = home / "broken-model"
    shutil.copytree(_download(home, "models:/mnist-classifier/1"), broken)
    (broken / "artifacts" / "model.onnx").write_bytes(b"this is not an onnx graph")
    client.create_model_version("mnist-classifier", broken.as_uri(), run_id=v1.run_id)  # v3
    return home


def _download(home: Path, uri: str) -> str:
    import mlflow

    mlflow_client(home)
    return mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(home / "dl"))


@pytest.fixture
def endpoint_cfg(registry_home, tmp_path):
    """Overrides for a fresh endpoint (own name, own free port) on the shared registry; stopped after."""
    name = f"ep{tmp_path.name[-12:].replace('_', '')}"
    overrides = [f"paths.home={registry_home}", f"endpoint.name={name}", f"endpoint.port={free_port()}"]
    yield overrides
    run_stage(compose(["stage=endpoint", "endpoint.action=stop", *overrides]))


def deploy(overrides, *extra):
    return run_stage(compose(["stage=deploy", *overrides, *extra]))


def state(overrides):
    from mnistops.backends.local.server import EndpointServer

    return EndpointServer(compose(overrides)).state()


_ENDPOINTS = {}


def score_once(overrides, images, deployment=None):
    """One /score request as a user sends it (composing once per endpoint: threads call this)."""
    from mnistops.backends.local.server import EndpointServer
    from mnistops.serving_client import score

    key = tuple(overrides)
    if key not in _ENDPOINTS:
        ep = EndpointServer(compose(overrides))
        _ENDPOINTS[key] = (ep.url, ep.key())
    url, api_key = _ENDPOINTS[key]
    with httpx.Client() as client:
        return score(client, url, api_key, images, deployment)


@pytest.fixture(scope="module")
def test_images(registry_home):
    return (read_idx(registry_home / "data" / "mnist" / "t10k-images-idx3-ubyte")[:50],
            read_idx(registry_home / "data" / "mnist" / "t10k-labels-idx1-ubyte")[:50])


def test_deploy_serves_candidate_and_is_idempotent(endpoint_cfg, test_images, capsys):
    result = deploy(endpoint_cfg, "deploy.model=models:/mnist-classifier/1")
    out = capsys.readouterr().out
    assert "scoring URL: http://127.0.0.1:" in out and "curl -s" in out and "Authorization: Bearer" in out
    assert result.model_uri == "models:/mnist-classifier/1"
    key_file = Path(result.artifacts["key_file"])
    assert oct(key_file.stat().st_mode)[-3:] == "600"
    st = state(endpoint_cfg)
    assert st["traffic"] == {"blue": 100} and st["deployments"]["blue"]["version"] == "1"
    status, body = score_once(endpoint_cfg, test_images[0][:5])
    assert status == 200 and body["version"] == "1" and body["deployment"] == "blue"
    assert len(body["predictions"]) == 5
    server_log = (key_file.parent / "server.log").read_text()
    assert key_file.read_text().strip() not in server_log, "the key must never be logged"

    deploy(endpoint_cfg, "deploy.model=models:/mnist-classifier/1")
    assert "no change" in capsys.readouterr().out
    assert state(endpoint_cfg) == st

    # a running server keeps the worker count it started with, and deploy says so (no wait, no error)
    from mnistops.backends.local.server import EndpointServer

    running = len(EndpointServer(compose(endpoint_cfg)).worker_pids())
    deploy(endpoint_cfg, "deploy.model=models:/mnist-classifier/1", f"endpoint.workers={running + 1}")
    out = capsys.readouterr().out
    assert f"runs with {running} worker(s); endpoint.workers={running + 1} applies when it next starts" in out
    assert "no change" in out


def test_blue_green_switch_under_traffic_loses_no_request(endpoint_cfg, test_images):
    deploy(endpoint_cfg, "deploy.model=models:/mnist-classifier/1")
    score_once(endpoint_cfg, test_images[0][:1])
    stop, results = threading.Event(), []

    def hammer():
        while not stop.is_set():
            results.append(score_once(endpoint_cfg, test_images[0][:1]))

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()

    def answered(n: int) -> None:  # traffic before and after the switch: counted answers, not seconds
        deadline = time.monotonic() + 120
        while len(results) < n:
            assert time.monotonic() < deadline, f"only {len(results)} answers"
            time.sleep(0.05)

    answered(10)
    deploy(endpoint_cfg, "deploy.model=models:/mnist-classifier/2")
    answered(len(results) + 11)
    stop.set()
    for t in threads:
        t.join()
    statuses = [s for s, _ in results]
    assert len(statuses) > 20 and set(statuses) == {200}, f"failed requests during the switch: {set(statuses)}"
    versions = [b["version"] for _, b in results]
    assert versions[0] == "1" and versions[-1] == "2"
    st = state(endpoint_cfg)
    assert st["traffic"] == {"green": 100} and st["deployments"]["blue"]["version"] == "1"

    run_stage(compose(["stage=rollback", *endpoint_cfg]))
    st = state(endpoint_cfg)
    assert st["traffic"] == {"blue": 100}
    assert score_once(endpoint_cfg, test_images[0][:1])[1]["version"] == "1"


def test_canary_traffic_split_and_header_pinning(endpoint_cfg, test_images):
    deploy(endpoint_cfg, "deploy.model=models:/mnist-classifier/1")
    deploy(endpoint_cfg, "deploy.model=models:/mnist-classifier/2", "endpoint.traffic={blue:50,green:50}")
    seen = [score_once(endpoint_cfg, test_images[0][:1])[1]["deployment"] for _ in range(80)]
    assert 15 < seen.count("green") < 65 and seen.count("blue") + seen.count("green") == 80
    for dep, version in (("blue", "1"), ("green", "2")):
        status, body = score_once(endpoint_cfg, test_images[0][:1], deployment=dep)
        assert status == 200 and body["deployment"] == dep and body["version"] == version
    with pytest.raises(MnistopsError, match="sum to 100"):
        deploy(endpoint_cfg, "deploy.model=models:/mnist-classifier/2", "endpoint.traffic={blue:50,green:60}")


def test_a_version_that_fails_to_load_leaves_the_old_one_serving(endpoint_cfg, test_images):
    deploy(endpoint_cfg, "deploy.model=models:/mnist-classifier/1")
    before = state(endpoint_cfg)
    with pytest.raises(MnistopsError, match="refused"):
        deploy(endpoint_cfg, "deploy.model=models:/mnist-classifier/3")
    after = state(endpoint_cfg)
    assert after["traffic"] == before["traffic"] == {"blue": 100}
    assert score_once(endpoint_cfg, test_images[0][:1])[0] == 200


def test_missing_model_is_one_clear_error(endpoint_cfg):
    proc = run_cli(["stage=deploy", "deploy.model=models:/mnist-classifier@nope", *endpoint_cfg[1:]],
                   Path(endpoint_cfg[0].split("=", 1)[1]), timeout=120)
    assert proc.returncode == 2 and "no version of mnist-classifier has alias @nope in the dev registry" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_killed_server_comes_back_by_itself_with_its_deployments(endpoint_cfg, test_images, capsys):
    from mnistops.backends.local.server import EndpointServer

    deploy(endpoint_cfg, "deploy.model=models:/mnist-classifier/1")
    deploy(endpoint_cfg, "deploy.model=models:/mnist-classifier/2", "endpoint.traffic={blue:20,green:80}")
    ep = EndpointServer(compose(endpoint_cfg))
    before = ep.status()
    workers = int(compose(endpoint_cfg).endpoint.workers)  # the config's count (default: one per core), not 2
    assert before["restarts"] == {"master": 0, "workers": 0} and len(before["worker_pids"]) == workers
    os.kill(before["master_pid"], signal.SIGKILL)  # the whole server: master and workers
    deadline = time.monotonic() + 90
    while True:  # no stage=deploy: the supervisor brings it back
        st = ep.status()
        if st["running"] and st["master_pid"] != before["master_pid"] and len(st["worker_pids"]) == workers \
                and not set(st["worker_pids"]) & set(before["worker_pids"]):
            break
        assert time.monotonic() < deadline, ep.last_log_line()
        time.sleep(0.2)
    assert st["traffic"] == {"blue": 20, "green": 80} and st["restarts"]["master"] == 1
    assert st["deployments"]["blue"]["version"] == "1" and st["deployments"]["green"]["version"] == "2"
    assert all(d["loaded"] for d in st["deployments"].values())
    assert score_once(endpoint_cfg, test_images[0][:3])[0] == 200
    run_stage(compose(["stage=endpoint", *endpoint_cfg]))
    assert "restarts: master 1, workers 0" in capsys.readouterr().out


def test_a_scoring_key_rotates_under_load_without_downtime(endpoint_cfg, test_images):
    from mnistops.backends.local.server import EndpointServer
    from mnistops.serving_client import score

    deploy(endpoint_cfg, "deploy.model=models:/mnist-classifier/1")
    ep = EndpointServer(compose(endpoint_cfg))
    old_primary, secondary = ep.key(), ep.secondary_key()
    stop, results = threading.Event(), []

    def hammer(key):
        with httpx.Client() as client:
            while not stop.is_set():
                results.append((key, score(client, ep.url, key, test_images[0][:1])[0]))

    threads = [threading.Thread(target=hammer, args=(secondary,)) for _ in range(3)]
    for t in threads:
        t.start()
    def answered(count: int) -> None:  # the hammering threads answered `count` in all (or died: the test fails)
        deadline = time.monotonic() + 300
        while len(results) < count:
            assert any(t.is_alive() for t in threads) and time.monotonic() < deadline, f"{len(results)} answered"
            time.sleep(0.05)

    try:
        answered(30)
        result = run_stage(compose(["stage=endpoint", "endpoint.action=regenerate-keys", "endpoint.key=primary",
                                    *endpoint_cfg]))
        answered(len(results) + 30)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert set(status for _, status in results) == {200}  # the secondary key worked throughout
    new_primary = ep.key()
    assert new_primary != old_primary and result.artifacts["key_file"] == str(ep.key_file)
    assert oct(ep.key_file.stat().st_mode)[-3:] == "600"
    with httpx.Client() as client:
        assert score(client, ep.url, new_primary, test_images[0][:1])[0] == 200
        assert score(client, ep.url, old_primary, test_images[0][:1])[0] == 401
        assert score(client, ep.url, ep.admin_key(), test_images[0][:1])[0] == 401  # admin is not a scoring key
    with pytest.raises(MnistopsError, match="endpoint.key='admin'"):
        run_stage(compose(["stage=endpoint", "endpoint.action=regenerate-keys", "endpoint.key=admin", *endpoint_cfg]))


def test_smoke_passes_and_fails_loudly(endpoint_cfg, registry_home):
    deploy(endpoint_cfg, "deploy.model=models:/mnist-classifier/1")
    result = run_stage(compose(["stage=smoke", "smoke.samples=60", "smoke.min_accuracy=0.5", "smoke.max_p95_ms=10000",
                                *endpoint_cfg]))  # (its latency limit explicit: the default is a production bar)
    assert result.metrics["smoke/errors"] == 0 and result.metrics["smoke/accuracy"] > 0.5
    run = mlflow_client(registry_home).get_run(result.run_id)
    assert run.data.tags["mnistops.smoke_passed"] == "true"
    with pytest.raises(MnistopsError, match="accuracy .* < smoke.min_accuracy 0.9999"):
        run_stage(compose(["stage=smoke", "smoke.samples=60", "smoke.min_accuracy=0.9999", *endpoint_cfg]))
    with pytest.raises(MnistopsError, match="p95 latency"):
        run_stage(compose(["stage=smoke", "smoke.samples=20", "smoke.max_p95_ms=0.001", *endpoint_cfg]))


def test_endpoint_status_and_stop(endpoint_cfg, capsys):
    deploy(endpoint_cfg, "deploy.model=models:/mnist-classifier/1")
    run_stage(compose(["stage=endpoint", *endpoint_cfg]))
    out = capsys.readouterr().out
    assert "running, pid" in out and "models:/mnist-classifier/1" in out and "workers [" in out
    assert "restarts: master 0, workers 0" in out and "admin key:" in out
    run_stage(compose(["stage=endpoint", "endpoint.action=stop", *endpoint_cfg]))
    stopped_at = now_iso()
    assert "stopped" in capsys.readouterr().out
    run_stage(compose(["stage=endpoint", *endpoint_cfg]))
    assert "not running" in capsys.readouterr().out
    with pytest.raises(MnistopsError, match="not running"):
        run_stage(compose(["stage=smoke", *endpoint_cfg]))

    # deploying the same version again restarts the server: that is news, and the status shows that the
    # running server loaded the version after the stop, not when it was first deployed
    deploy(endpoint_cfg, "deploy.model=models:/mnist-classifier/1")
    out = capsys.readouterr().out
    assert "serves again" in out and "[endpoint started]" in out and "no change" not in out
    st = state(endpoint_cfg)["deployments"]["blue"]
    assert st["serving_since"] >= stopped_at >= st["loaded_at"], st
    run_stage(compose(["stage=endpoint", *endpoint_cfg]))
    assert f"served by this server since {st['serving_since']}" in capsys.readouterr().out
