"""How pytest treats the live Azure test (tests/test_azure_live.py), run as a user runs it: `-m
azure_live` can pass (the test is integration too, so the tier guard lets it run the CLI) and skips
in one line without a workspace or a credential; `-m "not integration"` and `-m unit` never select
it; and nothing builds an Azure credential while pytest collects. A probe plugin stands in for
azure-identity's DefaultAzureCredential and writes down when it is built."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.integration  # pytest in subprocesses: seconds each

PROBE = textwrap.dedent('''
    import os

    def pytest_configure(config):
        import azure.identity
        from azure.core.exceptions import ClientAuthenticationError

        class Probe:
            def __init__(self, *args, **kwargs):
                with open(os.environ["PROBE_FILE"], "a") as f:
                    f.write((os.environ.get("PYTEST_CURRENT_TEST") or "collection") + "\\n")

            def get_token(self, *scopes, **kwargs):
                raise ClientAuthenticationError("probe: no credential on this machine")

        azure.identity.DefaultAzureCredential = Probe
        try:  # azureml-mlflow found (a stand-in package beside this file, never imported)
            import azureml
            azureml.__path__.append(os.path.join(os.path.dirname(__file__), "azureml"))
        except ImportError:
            pass
''')
WORKSPACE = {"AZURE_QA_SUBSCRIPTION_ID": "00000000-0000-0000-0000-000000000000",
             "AZUREML_QA_RESOURCE_GROUP": "rg-mnistops-qa", "AZUREML_QA_WORKSPACE": "mlw-mnistops-qa"}
UNSET = ("AZURE_QA_SUBSCRIPTION_ID", "AZURE_SUBSCRIPTION_ID", "AZUREML_QA_RESOURCE_GROUP", "AZUREML_QA_WORKSPACE",
         "AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "CI", "PYTEST_CURRENT_TEST")


def pytest_run(tmp_path: Path, marks: str, workspace: bool, *extra: str):
    (tmp_path / "probe_credential.py").write_text(PROBE)
    # azureml-mlflow found, so nothing short-circuits before the credential (PROBE adds it to azureml's path)
    (tmp_path / "azureml" / "mlflow").mkdir(parents=True, exist_ok=True)
    (tmp_path / "azureml" / "mlflow" / "__init__.py").write_text("# stands in for azureml-mlflow's package\n")
    probe_file = tmp_path / "probe.log"
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    env.update(WORKSPACE if workspace else {})
    env.update(PROBE_FILE=str(probe_file), PYTHONPATH=os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "probe_credential", "-p", "no:cacheprovider",
                           "-q", "-rs", "-m", marks, *extra, "tests/test_azure_live.py"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    built = probe_file.read_text().splitlines() if probe_file.exists() else []
    return proc, built


@pytest.mark.parametrize("marks", ["not integration", "unit"])
def test_the_unit_tier_never_selects_it_nor_asks_for_a_credential(tmp_path, marks):
    """Issue 17 (13): `-m "not integration"` selected it and asked Azure for a token while collecting."""
    proc, built = pytest_run(tmp_path, marks, True, "--collect-only")
    assert "no tests collected (1 deselected)" in proc.stdout, proc.stdout + proc.stderr
    assert built == [], "a credential was built while pytest collected"


def test_without_a_workspace_it_skips_in_one_line(tmp_path):
    proc, built = pytest_run(tmp_path, "azure_live", False)
    assert proc.returncode == 0 and "1 skipped" in proc.stdout, proc.stdout + proc.stderr
    skip = [line for line in proc.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(skip) == 1 and "no QA workspace: set AZURE_QA_SUBSCRIPTION_ID" in skip[0], proc.stdout
    assert built == []


def test_without_a_credential_it_skips_when_it_runs_not_when_collected(tmp_path):
    proc, built = pytest_run(tmp_path, "azure_live", True)
    assert proc.returncode == 0 and "1 skipped" in proc.stdout, proc.stdout + proc.stderr
    skip = [line for line in proc.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(skip) == 1 and "no Azure credential" in skip[0] and "probe: no credential" in skip[0], proc.stdout
    assert built and all("test_the_qa_quickstart_runs_on_a_real_workspace" in b for b in built), built


def test_the_live_test_is_marked_integration_in_its_own_module():
    """The tier guard refuses the CLI to a test not marked integration: marked in the module itself,
    not only by a collection hook, so `-m azure_live` runs it under any conftest."""
    text = (REPO / "tests" / "test_azure_live.py").read_text()
    assert "pytestmark = [pytest.mark.azure_live, pytest.mark.integration]" in text
    assert "get_token" not in text.split("def ", 1)[0], "no credential work at module level"


def test_it_runs_the_readmes_first_run_steps_in_order():
    """README "First run on Azure" is what the live test runs after `terraform apply`, in that order."""
    import re

    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### First run on Azure"):readme.index("### Quickstart (QA)")]
    readme_stages = re.findall(r"python -m mnistops \$A (stage=\w+)", section)
    live = (REPO / "tests" / "test_azure_live.py").read_text()
    live_stages = re.findall(r'step\("(stage=\w+)"', live)
    assert readme_stages == ["stage=provision", "stage=ci", "stage=cd"]
    assert live_stages[:len(readme_stages)] == readme_stages
    assert "endpoint=azure_managed" not in section  # env.backend=azure is the one knob
