"""jobs/ and infra/: every `python -m mnistops ...` step of every pipeline composes, every file a
pipeline names exists, and the Terraform declares each environment's Azure resources."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess

import pytest
import yaml

from conftest import REPO, compose

PIPELINES = sorted((REPO / "jobs").rglob("*.yml"))
COMMAND = re.compile(r"python -m mnistops(?P<args>[^\n#]*)")


def commands():
    for path in PIPELINES:
        for match in COMMAND.finditer(path.read_text()):
            yield path.relative_to(REPO), shlex.split(match["args"])


def test_pipelines_exist_for_every_flow():
    names = {p.relative_to(REPO).as_posix() for p in PIPELINES}
    for flow in ("ci", "cd-qa", "cd-prod", "iac", "monitor"):
        assert f"jobs/azure-devops/{flow}.yml" in names
    assert {"jobs/github-actions/ci.yml", "jobs/github-actions/cd.yml", "jobs/github-actions/monitor.yml"} <= names


def test_monitoring_runs_on_the_configured_schedule():
    schedule = compose([]).monitor.schedule
    ado = yaml.safe_load((REPO / "jobs" / "azure-devops" / "monitor.yml").read_text())
    gh = yaml.safe_load((REPO / "jobs" / "github-actions" / "monitor.yml").read_text())
    assert ado["schedules"][0]["cron"] == schedule and ado["schedules"][0]["always"] is True
    assert gh[True]["schedule"][0]["cron"] == schedule  # YAML 1.1 reads the key `on` as True


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.name)
def test_pipeline_is_valid_yaml(path):
    assert isinstance(yaml.safe_load(path.read_text()), dict)


@pytest.mark.parametrize("where,args", list(commands()), ids=lambda v: " ".join(v) if isinstance(v, list) else str(v))
def test_every_mnistops_step_composes(where, args, tmp_path):
    cfg = compose(args, tmp_path)
    assert cfg.stage.name in {a.split("=", 1)[1] for a in args if a.startswith("stage=")}


def test_promotion_needs_a_manual_approval():
    text = (REPO / "jobs" / "azure-devops" / "cd-prod.yml").read_text()
    assert "ManualValidation@0" in text and text.index("ManualValidation") < text.index("stage=promote")
    gh = yaml.safe_load((REPO / "jobs" / "github-actions" / "cd.yml").read_text())
    assert gh["jobs"]["cd-prod"]["environment"] == "prod" and gh["jobs"]["cd-prod"]["needs"] == "cd-qa"


def test_files_named_by_pipelines_exist():
    makefile = (REPO / "Makefile").read_text()
    for path in PIPELINES:
        text = path.read_text()
        for target in re.findall(r"make (\w[\w-]*)", text):
            assert re.search(rf"^{target}:", makefile, re.M), f"{path}: make {target} is not a Makefile target"
        for var_file in re.findall(r"-var-file=\$\((\w+)\)\.tfvars|-var-file=\$\{\{ matrix\.(\w+) \}\}\.tfvars", text):
            for env in ("qa", "prod"):
                assert (REPO / "infra" / f"{env}.tfvars").is_file()
        for ref in re.findall(r"\b((?:infra|jobs|tests)/[\w./-]+\.\w+)", text):
            assert (REPO / ref).exists(), f"{path} names {ref}, which does not exist"


def test_terraform_declares_each_environments_resources():
    hcl2 = pytest.importorskip("hcl2")
    resources, variables = set(), set()
    for tf in (REPO / "infra").glob("*.tf"):
        with tf.open() as f:
            parsed = hcl2.load(f)
        for block in parsed.get("resource", []):
            resources.update(block)
        for block in parsed.get("variable", []):
            variables.update(block)
    assert {"azurerm_resource_group", "azurerm_storage_account", "azurerm_key_vault", "azurerm_application_insights",
            "azurerm_container_registry", "azurerm_machine_learning_workspace",
            "azurerm_machine_learning_compute_cluster"} <= {r.strip('"') for r in resources}
    for env in ("qa", "prod"):
        with (REPO / "infra" / f"{env}.tfvars").open() as f:
            values = hcl2.load(f)
        assert values["environment"].strip('"') == env
        assert set(values) <= {v.strip('"') for v in variables}, "a tfvars key is not a declared variable"


@pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform is not installed here")
def test_terraform_fmt():
    proc = subprocess.run(["terraform", "fmt", "-check", "-diff"], cwd=REPO / "infra", capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
