"""Multirun sweeps: one child MLflow run per trial under one sweep run, the best trial reported;
the Optuna study stored in the env so a stopped sweep resumes."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from conftest import TINY, mlflow_client, run_cli, runs_of

pytestmark = pytest.mark.integration  # sweeps through the CLI (trains)


def sweep_dirs(home: Path):
    return sorted((home / "dev" / "multirun").glob("*/*"))


def test_grid_multirun_logs_child_runs_and_best(home):
    proc = run_cli(["-m", "stage=train", "model=logreg", "model.lr=1e-3,3e-2", *TINY], home, check=True)
    assert "best of 2 trials" in proc.stdout
    client = mlflow_client(home)
    (parent,) = runs_of(client, "sweep")
    children = runs_of(client, "train")
    assert len(children) == 2
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert {c.data.params["model.lr"] for c in children} == {"0.001", "0.03"}
    parent = client.get_run(parent.info.run_id)
    best = max(children, key=lambda r: r.data.metrics["val/acc"])
    assert parent.data.tags["mnistops.best_run_id"] == best.info.run_id
    assert parent.info.status == "FINISHED"
    (sweep,) = sweep_dirs(home)
    summary = yaml.safe_load((sweep / "best.yaml").read_text())
    assert summary["best_run_id"] == best.info.run_id and summary["trials"] == 2
    assert any(o.startswith("model.lr=") for o in summary["best_overrides"])
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]


def test_optuna_sweep_is_stored_and_resumes(home):
    args = ["-m", "hparams_search=optuna", "model=logreg", "hydra.sweeper.n_trials=2", *TINY]
    first = run_cli(args, home, check=True)
    assert "best of 2 trials" in first.stdout
    storage = f"sqlite:///{home / 'dev' / 'optuna.db'}"
    study = optuna.load_study(study_name="mnistops-logreg-mnist", storage=storage)
    assert len([t for t in study.trials if t.state.name == "COMPLETE"]) == 2
    assert all(0 < t.value <= 1 for t in study.trials)
    run_cli(args, home, check=True)
    study = optuna.load_study(study_name="mnistops-logreg-mnist", storage=storage)
    assert len([t for t in study.trials if t.state.name == "COMPLETE"]) == 4
    client = mlflow_client(home)
    assert len(runs_of(client, "sweep")) == 2 and len(runs_of(client, "train")) == 4
    results = yaml.safe_load(next((home / "dev" / "multirun").glob("*/*/optimization_results.yaml")).read_text())
    # data.batch_size=32 on the command line fixes that knob: it leaves the search space
    assert set(results["best_params"]) == {"model.lr", "model.weight_decay", "model.label_smoothing"}
