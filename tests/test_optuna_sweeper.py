"""The mnistops Optuna sweeper, driven through a tiny Hydra app run as a subprocess."""
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from hydra_plugins.mnistops_optuna_sweeper._search_space import parse_search_space
from hydra_plugins.mnistops_optuna_sweeper.optuna_sweeper import OptunaSweeper

REPO = Path(__file__).resolve().parents[1]

APP = '''
import hydra

@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg):
    if cfg.x > cfg.fail_above:
        raise ValueError(f"x={cfg.x} is too big")
    return (cfg.x - 2) ** 2

if __name__ == "__main__":
    main()
'''


def make_app(tmp_path: Path, params: dict, n_trials: int = 4, storage: bool = True) -> Path:
    (tmp_path / "conf").mkdir()
    (tmp_path / "app.py").write_text(APP)
    sweeper = {
        "sampler": {"_target_": "optuna.samplers.RandomSampler", "seed": 0},
        "direction": "minimize",
        "storage": f"sqlite:///{tmp_path}/optuna.db" if storage else None,
        "study_name": "toy", "n_trials": n_trials, "n_jobs": 2, "params": params,
    }
    OmegaConf.save({"defaults": [{"override hydra/sweeper": "optuna"}, "_self_"],
                    "x": 0.0, "fail_above": 100, "hydra": {"sweeper": sweeper}},
                   tmp_path / "conf" / "config.yaml")
    return tmp_path


def run(app: Path, *overrides: str, sweep_dir: str = "multirun") -> subprocess.CompletedProcess:
    # The repo root on PYTHONPATH puts hydra_plugins/ on the namespace path whatever the
    # install mode (setuptools' strict editable finder hides it from Hydra's plugin scan).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "app", "-m", f"hydra.sweep.dir={app / sweep_dir}", *overrides]
    return subprocess.run(cmd, cwd=app, env=env, capture_output=True, text=True, timeout=120)


def load(app: Path) -> optuna.Study:
    return optuna.load_study(study_name="toy", storage=f"sqlite:///{app}/optuna.db")


def test_search_space_parsing():
    dists, fixed = parse_search_space([
        "lr=tag(log, interval(1e-4, 1e-1))", "bs=choice(32, 64, 128)", "layers=range(1, 5)",
        "w=interval(0, 1)", "opt=adam", "bs=choice(16, 32)",  # the last bs wins
    ])
    assert dists["lr"] == FloatDistribution(1e-4, 1e-1, log=True)
    assert dists["bs"] == CategoricalDistribution([16, 32])
    assert dists["layers"] == IntDistribution(1, 4)  # range() excludes its stop
    assert dists["w"] == FloatDistribution(0.0, 1.0)
    assert fixed == {"opt": "adam"}
    with pytest.raises(ValueError, match="bad search-space entry 'x=intervl"):
        parse_search_space(["x=intervl(0, 1)"])


def test_multi_objective_rejected():
    with pytest.raises(ValueError, match="multi-objective"):
        OptunaSweeper(sampler=None, direction=["minimize", "maximize"], storage=None,
                      study_name=None, n_trials=1, n_jobs=1, params=None)


def test_plugin_discovered():
    from hydra.core.plugins import Plugins
    from hydra.plugins.sweeper import Sweeper

    # Hydra's scan re-executes plugin modules, so compare names, not class objects.
    found = {f"{c.__module__}.{c.__name__}" for c in Plugins.instance().discover(Sweeper)}
    assert "hydra_plugins.mnistops_optuna_sweeper.optuna_sweeper.OptunaSweeper" in found


def test_hydras_plugin_scan_does_not_import_optuna():
    """Hydra imports every plugin module on each run and for --help; optuna loads only for a sweep."""
    code = ("import sys\nfrom hydra.core.plugins import Plugins\nfrom hydra.plugins.sweeper import Sweeper\n"
            "found = [c.__name__ for c in Plugins.instance().discover(Sweeper)]\n"
            "print('OptunaSweeper' in found, 'optuna' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.stdout.split() == ["True", "False"], proc.stdout + proc.stderr


@pytest.mark.integration
def test_sweep_then_resume(tmp_path):
    app = make_app(tmp_path, {"x": "interval(0, 4)"})
    first = run(app)
    assert first.returncode == 0, first.stderr
    assert sorted(p.name for p in (app / "multirun").iterdir() if p.is_dir()) == ["0", "1", "2", "3"]
    results = OmegaConf.load(app / "multirun" / "optimization_results.yaml")
    assert results.name == "optuna" and 0 <= results.best_params.x <= 4
    assert results.best_value == pytest.approx((results.best_params.x - 2) ** 2)

    load(app).ask()  # a trial left RUNNING, as by a killed sweep
    second = run(app)
    assert second.returncode == 0, second.stderr
    trials = load(app).trials
    assert [t.state for t in trials].count(TrialState.COMPLETE) == 8  # 2 * n_trials
    assert trials[4].state == TrialState.FAIL  # the stale RUNNING one
    first_xs = {t.params["x"] for t in trials[:4]}
    assert not first_xs & {t.params["x"] for t in trials[5:]}  # seed offset: new points
    # Subdirs follow trial numbers, so the resumed run doesn't overwrite the first one's.
    assert {"5", "6", "7", "8"} <= {p.name for p in (app / "multirun").iterdir()}


@pytest.mark.integration
def test_command_line_sweep_and_fixed_overrides(tmp_path):
    app = make_app(tmp_path, {"x": "interval(0, 4)"}, n_trials=3, storage=False)
    res = run(app, "x=choice(1,2,3)", "fail_above=50")
    assert res.returncode == 0, res.stderr
    for job in ("0", "1", "2"):
        overrides = OmegaConf.load(app / "multirun" / job / ".hydra" / "overrides.yaml")
        assert "fail_above=50" in overrides
        assert any(o in overrides for o in ("x=1", "x=2", "x=3"))
    results = OmegaConf.load(app / "multirun" / "optimization_results.yaml")
    assert results.best_params.x in (1, 2, 3)


@pytest.mark.integration
def test_failing_trials_are_recorded(tmp_path):
    app = make_app(tmp_path, {"x": "choice(1, 2, 5, 6)", "fail_above": 3}, n_trials=6)
    res = run(app)
    assert res.returncode == 0, res.stderr
    states = {t.number: t.state for t in load(app).trials}
    assert len(states) == 6
    assert TrialState.FAIL in states.values() and TrialState.COMPLETE in states.values()
    for t in load(app).trials:
        assert (t.state == TrialState.FAIL) == (t.params["x"] > 3)
        if t.state == TrialState.FAIL:
            assert "too big" in t.user_attrs["error"]


@pytest.mark.integration
def test_all_trials_failing_is_an_error(tmp_path):
    app = make_app(tmp_path, {"x": "choice(5, 6)", "fail_above": 3}, n_trials=2)
    res = run(app)
    assert res.returncode != 0
    assert "All 2 Optuna trials failed" in res.stderr and "too big" in res.stderr


@pytest.mark.integration
def test_bad_param_string(tmp_path):
    app = make_app(tmp_path, {"x": "intervl(0, 4)"})
    res = run(app)
    assert res.returncode != 0
    assert "bad search-space entry 'x=intervl(0, 4)'" in res.stderr
    assert not (app / "multirun" / "0").exists()
