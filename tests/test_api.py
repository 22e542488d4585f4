"""The Python API (mnistops.compose / mnistops.run): the CLI's config, stores and errors, from a
notebook or a script, any number of times in one process."""

from __future__ import annotations

import subprocess
import sys

import pytest
from omegaconf import OmegaConf

import mnistops
from conftest import QUICK, REPO, compose as cli_compose, failing_tests, mlflow_client, run_cli, runs_of
from mnistops.api import ConfigError, Result
from mnistops.errors import MnistopsError


def test_import_stays_cheap():
    code = ("import sys, mnistops; heavy = [m for m in ('torch', 'mlflow', 'hydra', 'lightning', 'omegaconf') "
            "if m in sys.modules]; assert not heavy, heavy; assert callable(mnistops.run) and callable(mnistops.compose); "
            "assert 'hydra' not in sys.modules; import os; assert os.environ['OMP_WAIT_POLICY']")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_compose_is_the_clis_config(tmp_path):
    overrides = ["model=logreg", "env=qa", "trainer.max_epochs=3", f"paths.home={tmp_path}"]
    cfg = mnistops.compose(overrides)
    assert cfg.model.name == "logreg" and cfg.env.name == "qa" and cfg.stage.name == "pipeline"
    assert OmegaConf.to_container(cfg) == OmegaConf.to_container(cli_compose(overrides))
    assert mnistops.compose(overrides) == cfg, "composes again in the same process"


def test_compose_inside_a_callers_hydra(tmp_path):
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        assert mnistops.compose(["model=logreg"]).model.name == "logreg"
        assert GlobalHydra.instance().is_initialized(), "the caller's Hydra is left as it was"
    assert not GlobalHydra.instance().is_initialized()


@pytest.mark.integration
@pytest.mark.parametrize("override, says", [
    ("model.lrr=0.1", "Key 'lrr' not in 'ModelConfig'"),  # a misspelt key
    ("model=nope", "Could not find 'model/nope'"),  # an unknown group option
    ("stage=nope", "Could not find 'stage/nope'"),  # an unknown stage
    ("endpoint.port=abc", "full_key: endpoint.port"),  # a wrong type
])
def test_bad_overrides_raise_what_the_cli_prints(override, says, tmp_path):
    with pytest.raises(ConfigError) as raised:
        mnistops.compose([override])
    message = str(raised.value)
    assert says in message and isinstance(raised.value, MnistopsError)
    cli = run_cli(["--cfg", "job", override], tmp_path)
    assert cli.returncode != 0 and message in cli.stderr


def test_run_refuses_a_bad_stage_before_running_anything(tmp_path):
    home = [f"paths.home={tmp_path}"]
    with pytest.raises(ConfigError, match="Could not find 'stage/nope'") as raised:
        mnistops.run("nope", home)
    assert "pipeline" in str(raised.value), "lists the stages there are"
    with pytest.raises(ConfigError, match="first argument"):
        mnistops.run("data", [*home, "stage=train"])
    with pytest.raises(ConfigError, match="stage name"):
        mnistops.run("stage=data", home)
    with pytest.raises(TypeError, match="list of strings"):
        mnistops.compose("model=logreg")
    assert not (tmp_path / "dev").exists(), "nothing written"


@pytest.mark.integration
def test_run_data_returns_what_it_produced(home):
    result = mnistops.run("data", [f"paths.home={home}"])
    assert isinstance(result, Result) and result.stage == "data" and result.run_id
    assert result.metrics["data/train_images"] == 60000 and result.endpoint_url is None
    assert set(result.files) >= {"samples", "class_histogram"}
    assert all(p.suffix == ".png" and p.stat().st_size > 0 for p in result.files.values())
    assert result.config.paths.home == str(home)
    shown = repr(result)
    assert shown.startswith(f"Result(stage='data', run_id='{result.run_id}')") and "samples: " in shown


@pytest.mark.integration
def test_a_failed_stage_raises_and_leaves_no_open_run(home):
    import mlflow

    overrides = [f"paths.home={home}"]
    with pytest.raises(MnistopsError, match=r"code tests failed \(pytest exit 1\)"):
        mnistops.run("ci", [*overrides, "stage.steps=[tests]", failing_tests(home)])
    assert mlflow.active_run() is None
    mnistops.run("data", overrides)
    client = mlflow_client(home)
    (failed,) = runs_of(client, "ci")
    (data,) = runs_of(client, "data")
    assert failed.info.status == "FAILED"
    assert "mlflow.parentRunId" not in data.data.tags, "the next run is not nested under the failed one"


def test_endpoint_stages_name_their_url(home):
    status = mnistops.run("endpoint", [f"paths.home={home}", "endpoint.port=5999"])
    assert status.metrics["endpoint/running"] == 0.0 and status.endpoint_url is None


@pytest.mark.integration
def test_two_pipelines_in_one_process(home):
    import mlflow

    first = mnistops.run("pipeline", [*QUICK, f"paths.home={home}"])
    second = mnistops.run("pipeline", [*QUICK, f"paths.home={home}"])
    assert mlflow.active_run() is None
    assert first.run_id != second.run_id
    assert (first.model_uri, second.model_uri) == ("models:/mnist-classifier/1", "models:/mnist-classifier/2")
    for result in (first, second):
        assert result.metrics["test/acc"] > 0.7 and result.score == result.metrics["best/val/acc"]
        assert {"samples", "checkpoint", "confusion_matrix", "misclassified", "onnx"} <= set(result.files)
    client = mlflow_client(home)
    parents = runs_of(client, "pipeline")
    assert {r.info.run_id for r in parents} == {first.run_id, second.run_id}
    assert all(r.info.status == "FINISHED" for r in parents)
    trains = runs_of(client, "train")
    assert sorted(r.data.tags["mlflow.parentRunId"] for r in trains) == sorted([first.run_id, second.run_id])
