"""stage=ci's first steps: the tests step runs the unit tier and never itself, and a failing
`validate` stops the pipeline before anything is trained or registered."""

from __future__ import annotations

import ast
import json
import re

import numpy as np
import pytest

from conftest import QUICK, REPO, compose, fresh_home, mlflow_client, mnist_split, run_cli, runs_of
from mnistops.errors import MnistopsError
from mnistops.stages import tests as tests_step


def test_the_tests_step_runs_the_unit_tier_by_default():
    args = list(compose([]).ci.pytest_args)
    assert args[args.index("-m") + 1] == "unit"


def test_the_tests_step_refuses_to_run_inside_itself(tmp_path, monkeypatch):
    monkeypatch.setenv(tests_step.INSIDE, "1")  # as in the pytest that a tests step started
    with pytest.raises(MnistopsError, match="started by a test that stage=ci's tests step runs"):
        tests_step.run(compose(["stage=ci"], tmp_path))


def test_the_tests_step_keeps_the_agents_store_and_workspace_settings_from_the_tests():
    """On an agent of `mnistops-qa`, MNISTOPS_QA_TRACKING_URI points the pipeline's steps at QA's server:
    the unit tier it runs composes env=qa too, and must not reach it (the rehearsal's first CI runs this
    for real, on a fresh clone)."""
    agent = {"PATH": "/usr/bin", "CI": "true", "MNISTOPS_DATA_MIRROR": "file:///m", "MNISTOPS_HOME": "/h",
             "MNISTOPS_QA_TRACKING_URI": "http://qa:5000", "MLFLOW_TRACKING_URI": "http://qa:5000",
             "AZURE_SUBSCRIPTION_ID": "s", "AZUREML_QA_WORKSPACE": "w", "AZURE_CLIENT_ID": "c"}
    env = tests_step.code_tests_environment(agent)
    assert env == {"PATH": "/usr/bin", "CI": "true", "MNISTOPS_DATA_MIRROR": "file:///m", "MNISTOPS_HOME": "/h",
                   tests_step.INSIDE: "1"}


@pytest.mark.integration
def test_a_failing_validate_stops_ci_before_training(tmp_path_factory, data_cache, tmp_path):
    home = fresh_home(tmp_path_factory, data_cache, "ci-validate-home")
    run_cli(["env=qa", "stage=baseline"], home, check=True)  # the suite new data is checked against
    images, labels = mnist_split(home, "test", 1000)
    inverted = tmp_path / "inverted.npz"
    np.savez(inverted, images=255 - images, labels=labels)

    proc = run_cli(["env=qa", "stage=ci", *QUICK, f"validate.batch={inverted}"], home, timeout=900)
    assert proc.returncode == 2 and "validation of" in proc.stderr and "mean_intensity" in proc.stderr
    assert "ci: running" not in proc.stdout, "the tests step ran after a failed validate"
    client = mlflow_client(home, "qa")
    (ci,) = runs_of(client, "ci")
    assert ci.info.status == "FAILED"
    (validate,) = runs_of(client, "validate")
    assert validate.data.tags["mlflow.parentRunId"] == ci.info.run_id
    assert validate.data.tags["mnistops.validation"] == "failed"
    assert runs_of(client, "train") == [] and client.search_registered_models() == []


# --- the budget of stage=ci runs with training (CI_TRAINING_BUDGET in tests/conftest.py) --------------
# Tests whose stage=ci never reaches its train step (or runs nothing), and why; any other test that
# runs stage=ci must be marked ci_training, and the marked ones stay within the budget.
NO_TRAINING = {
    "test_ci_steps.py::test_the_tests_step_refuses_to_run_inside_itself": "composes stage=ci; runs the guard only",
    "test_ci_steps.py::test_a_failing_validate_stops_ci_before_training": "its validate fails first",
    "test_label_quality.py::test_a_noisy_feedback_batch_stops_ci_before_training_and_a_clean_one_passes":
        "validate fails first; then stage.steps=[data,validate]",
    "test_api.py::test_a_failed_stage_raises_and_leaves_no_open_run": "stage.steps=[tests]",
    "test_azure_job.py::test_ci_runs_the_tests_here_then_submits_the_other_steps_as_one_job":
        "the training is submitted to the (fake) workspace, not run",
    "test_azure_job.py::test_a_failing_test_stops_ci_before_anything_is_submitted": "its tests step fails first",
    "test_monitoring.py::test_a_retraining_whose_gate_refuses_leaves_the_champion": "stage.steps=[register,gate]",
    "test_monitoring.py::test_a_retraining_in_qa_that_passes_hands_over_and_runs_qas_ci": "stage.steps=[data,validate]",
    "test_azure_job.py::test_the_ci_job_registers_through_the_flavour_and_leaves_baselines_for_the_next_job":
        "stage.steps=[data,validate,register,baseline,gate] on an earlier job's train run",
    "test_azure_live.py::test_the_qa_quickstart_runs_on_a_real_workspace":
        "trains on Azure ML, not here (skipped without a workspace)",
    "test_azure_live_tier.py::test_it_runs_the_readmes_first_run_steps_in_order": "reads the README, runs nothing",
    "test_jobs.py::test_a_misspelt_variable_fails_instead_of_vanishing": "a pipeline file's text, not run",
    "test_ci_steps.py::test_every_test_that_runs_stage_ci_with_training_is_marked_and_within_the_budget":
        "this check: reads the tests' sources",
}


def _marks(decorators) -> dict:
    """{mark name: its call node or None} of `@pytest.mark.NAME(...)` decorators / a pytestmark value."""
    marks = {}
    for node in decorators:
        call = node if isinstance(node, ast.Call) else None
        target = call.func if call else node
        if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Attribute) \
                and target.value.attr == "mark":
            marks[target.attr] = call
    return marks


def _runs_stage_ci(function: ast.FunctionDef) -> bool:
    """Whether the function's code (not its docstring or comments) runs stage=ci: a `stage=ci` or
    `monitor.on_alert=retrain` override, a `.run("ci", ...)` call (the API, a pipeline's agent),
    `run_pipeline("...ci.yml", ...)` (every step of a CI pipeline file) or a call naming a CI pipeline
    file's ci step, `f("...ci.yml", "ci", ...)`."""
    docstring = function.body[0].value if function.body and isinstance(function.body[0], ast.Expr) else None
    for node in ast.walk(function):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node is not docstring:
            if re.search(r"(^|\s)stage=ci\b|monitor\.on_alert=retrain", node.value):
                return True
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "run" \
                and node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value == "ci":
            return True
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "run_pipeline" \
                and node.args and isinstance(node.args[0], ast.Constant) and str(node.args[0].value).endswith("ci.yml"):
            return True  # every step of a CI pipeline file, its stage=ci included
        if isinstance(node, ast.Call) and len(node.args) >= 2 and all(isinstance(a, ast.Constant) for a in node.args[:2]) \
                and str(node.args[0].value).endswith("ci.yml") and node.args[1].value == "ci":
            return True  # one step of a CI pipeline file: its stage=ci step (`run("ci.yml", "ci", ...)`)
    return False


def test_every_test_that_runs_stage_ci_with_training_is_marked_and_within_the_budget():
    from conftest import CI_TRAINING, CI_TRAINING_BUDGET

    unmarked, marked, fixtures = [], {}, []
    for path in sorted((REPO / "tests").glob("test_*.py")):
        tree = ast.parse(path.read_text(), str(path))
        module_marks = {}
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in node.targets):
                value = node.value
                module_marks = _marks(value.elts if isinstance(value, (ast.List, ast.Tuple)) else [value])
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef):
                continue
            name = f"{path.name}::{node.name}"
            marks = {**module_marks, **_marks(node.decorator_list)}
            if CI_TRAINING in marks:
                call = marks[CI_TRAINING]
                kwargs = {k.arg: k.value.value for k in call.keywords} if call is not None else {}
                marked[name] = int(kwargs.get("runs", 1))
            elif not _runs_stage_ci(node):
                continue
            elif any("fixture" in ast.dump(d) for d in node.decorator_list):
                fixtures.append(name)
            elif name not in NO_TRAINING and node.name.startswith("test"):
                unmarked.append(name)
    # the notebooks run in a kernel: the test that executes one with a CI cell carries the mark
    for notebook in sorted((REPO / "notebooks").glob("*.ipynb")):
        code = "\n".join("".join(c["source"]) for c in json.loads(notebook.read_text())["cells"]
                         if c["cell_type"] == "code")
        if re.search(r"\.run\(\s*[\"']ci[\"']", code):
            assert any(n.startswith("test_notebook.py::") for n in marked), \
                f"{notebook.name} runs stage=ci: mark the test that executes it {CI_TRAINING}"
    assert not fixtures, (f"fixtures run stage=ci: {fixtures}; build the store with the stages (pipeline, "
                          f"baseline, gate) or run stage=ci in a test marked {CI_TRAINING}")
    assert not unmarked, (f"these tests run stage=ci but are not marked {CI_TRAINING} (or listed in NO_TRAINING "
                          f"with the reason their CI never trains): {unmarked}")
    assert set(NO_TRAINING) <= {f"{p.name}::{f.name}" for p in (REPO / "tests").glob("test_*.py")
                                for f in ast.walk(ast.parse(p.read_text())) if isinstance(f, ast.FunctionDef)
                                and _runs_stage_ci(f)}, "NO_TRAINING names a test that no longer runs stage=ci"
    total = sum(marked.values())
    assert total <= CI_TRAINING_BUDGET, (f"stage=ci with training runs {total} times, over the budget "
                                         f"{CI_TRAINING_BUDGET}: {marked}; share a store or run the one CI step")
