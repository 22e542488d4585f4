"""The config tree: every option of every group composes; bad overrides fail at once, naming the
key; the CLI's help/config/info paths are fast (no torch or mlflow import)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import CONF, REPO, compose, run_cli

GROUPS = ["env", "data", "model", "trainer", "compute", "paths", "stage", "experiment", "hparams_search"]


def options(group: str):
    if group == "stage":  # stages come from their table, not from files
        from mnistops.stage_table import STAGES

        return sorted(STAGES)
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_of_every_group_composes(group, option, tmp_path):
    cfg = compose([f"{group}={option}"], tmp_path)
    assert cfg.paths.home == str(tmp_path)
    assert cfg.stage.name and cfg.model.name and cfg.env.name
    if group in ("env", "data", "model", "compute", "stage"):
        assert cfg[group].name == option


def test_every_group_has_options():
    for group in GROUPS:
        assert options(group), f"conf/{group} is empty"


def test_env_stores_are_separate(tmp_path):
    from mnistops import tracking

    uris = {tracking.tracking_uri(compose([f"env={e}"], tmp_path)) for e in ("dev", "qa", "prod")}
    assert len(uris) == 3 and all(str(tmp_path) in u for u in uris)


def test_default_main_job_is_the_dev_pipeline(tmp_path):
    cfg = compose([], tmp_path)
    assert cfg.env.name == "dev" and cfg.stage.name == "pipeline"
    assert list(cfg.stage.steps) == ["data", "train", "evaluate", "register"]


def test_home_defaults_to_env_var(monkeypatch, tmp_path):
    monkeypatch.setenv("MNISTOPS_HOME", str(tmp_path / "h"))
    assert compose([]).paths.home == str(tmp_path / "h")


BAD_OVERRIDES = [
    (["model.lrr=0.1"], "lrr"),
    (["model.lr=fast"], "model.lr"),
    (["trainer.max_epochs=two"], "max_epochs"),
    (["model=resnet9000"], "model/resnet9000"),
    (["stage=nonsense"], "stage/nonsense"),
    (["data.augment.enabled=maybe"], "augment.enabled"),
    (["ui.port=http"], "ui.port"),
    # what the types allow but the server refuses: checked at composition, not first at deploy
    (["endpoint.max_batch=0"], "endpoint.max_batch"),
    (["endpoint.collect.sampling_rate=1.5"], "endpoint.collect.sampling_rate"),
]


@pytest.mark.parametrize("override,needle", BAD_OVERRIDES)
def test_bad_overrides_are_refused_at_composition_naming_the_key(override, needle, tmp_path):
    from mnistops.api import ConfigError, compose as api_compose

    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        api_compose(override + [f"paths.home={tmp_path}"])
    assert not (tmp_path / "dev").exists(), "a refused config must not create stores"


@pytest.mark.integration
@pytest.mark.parametrize("override,needle", BAD_OVERRIDES[::3])
def test_bad_overrides_fail_naming_the_key(override, needle, tmp_path):
    proc = run_cli(override + ["--cfg", "job"], tmp_path, timeout=60)
    assert proc.returncode != 0
    assert needle in proc.stderr + proc.stdout
    assert not (tmp_path / "dev").exists(), "a refused config must not create stores"


@pytest.mark.integration
@pytest.mark.parametrize("stage", ["deploy", "data"])
def test_a_bad_endpoint_setting_stops_any_stage_before_it_starts(stage, tmp_path):
    proc = run_cli([f"stage={stage}", "endpoint.max_batch=0"], tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        "mnistops: error: endpoint.max_batch: Input should be greater than 0 (got 0)"], proc.stderr
    assert not (tmp_path / "dev").exists(), "nothing may start: no run directory, no store"


@pytest.mark.integration
def test_help_cfg_and_info_do_not_import_heavy_packages(tmp_path):
    code = ("import sys, runpy; sys.argv=['mnistops', '--cfg', 'job']\n"
            "try:\n    runpy.run_module('mnistops', run_name='__main__')\nexcept SystemExit: pass\n"
            "heavy=[m for m in ('torch','lightning','mlflow','great_expectations') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "MNISTOPS_HOME": str(tmp_path)}, timeout=60)
    assert "HEAVY []" in proc.stdout, proc.stdout + proc.stderr
    assert "stage:" in proc.stdout and "model:" in proc.stdout

    help_out = run_cli(["--help"], tmp_path, timeout=60)
    assert help_out.returncode == 0 and "Config groups" in help_out.stdout and "model: cnn" in help_out.stdout
    info = run_cli(["--info"], tmp_path, timeout=60)
    assert info.returncode == 0 and "Config search path" in info.stdout


@pytest.mark.integration
def test_tab_completion_lists_groups_and_options(tmp_path):
    env = {"COMP_LINE": "mnistops model=", "COMP_POINT": "15"}
    proc = run_cli(["-sc", "query=bash"], tmp_path, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "model=logreg" in proc.stdout and "model=cnn" in proc.stdout
    install = run_cli(["-sc", "install=bash"], tmp_path, timeout=60)
    assert "complete" in install.stdout
