"""The Azure pipelines in jobs/ as Azure DevOps and GitHub read them (tests/pipeline_files.py): their
`python -m mnistops` steps composed exactly as written, how they sign in, and what Azure DevOps needs
before it can queue them. Unit tier: nothing runs, nothing connects (azure.dry_run=true)."""

from __future__ import annotations

import re

import pytest

import pipeline_files as pf
from conftest import REPO, compose

NEUTRAL = {**pf.Neutral().values,  # endpoint names Azure accepts (3-32 letters, digits, '-')
           **{f"{prefix}AZUREML_{env}_ENDPOINT": f"mnist-{env.lower()}-0a1b2c" for env in ("QA", "PROD")
              for prefix in ("", "vars.")}}
AZURE = [p for p in pf.pipelines() if pf.setup(p) == "azure" and p.stem != "iac"]
STEPS = [s for p in AZURE for s in pf.steps(p, NEUTRAL) if "env.backend=azure" in s.args]
ADO = sorted((REPO / "jobs" / "azure-devops").glob("*.yml"))
GITHUB = sorted((REPO / "jobs" / "github-actions").glob("*.yml"))


def step_id(step) -> str:
    return f"{step.pipeline.parent.name}/{step.pipeline.name}:{step.value('stage')}"


def test_the_azure_pipelines_have_azure_steps():
    stages = {s.value("stage") for s in STEPS}
    assert {"provision", "ci", "cd", "endpoint", "promote", "monitor"} <= stages, stages


@pytest.mark.parametrize("step", STEPS, ids=step_id)
def test_env_backend_azure_alone_selects_the_managed_endpoint(step, tmp_path, monkeypatch):
    """Issue 17 (2): the CD and monitoring steps never said endpoint=azure_managed, so the composed
    endpoint was the local one and the managed endpoint refused. The backend is the one knob."""
    from mnistops import backends

    for name, value in step.env.items():
        if name.startswith(("AZURE_", "AZUREML_")):
            monkeypatch.setenv(name, value)
    cfg = compose([*step.args, "azure.dry_run=true"], tmp_path)
    assert cfg.endpoint.kind == "azure_managed", step.raw
    assert cfg.endpoint.startup_timeout_s == 1800.0  # the managed kind's own defaults come with it
    if step.value("stage") in ("cd", "endpoint", "monitor", "deploy", "smoke", "rollback", "traffic"):
        endpoint = backends.get(cfg).endpoint()  # ManagedEndpoint refuses any other kind
        assert type(endpoint).__name__ == "ManagedEndpoint"


def test_the_local_backend_keeps_the_local_endpoint_and_an_explicit_kind_wins(tmp_path):
    assert compose(["env=qa"], tmp_path).endpoint.kind == "local"
    assert compose(["env=qa"], tmp_path).endpoint.startup_timeout_s == 90.0
    assert compose(["env=qa", "env.backend=azure", "endpoint=azure_managed"], tmp_path).endpoint.kind == "azure_managed"
    assert compose(["env=qa", "env.backend=azure", "endpoint.startup_timeout_s=60"], tmp_path).endpoint.startup_timeout_s == 60


# ----------------------------------------------------------------------------- signing in

def azure_cli_tasks(path):
    doc = pf.load(path)
    for _, job, _ in pf._ado_jobs(doc):
        for step in pf._job_steps(job):
            if str(step.get("task", "")).startswith("AzureCLI@"):
                yield step


@pytest.mark.parametrize("path", [p for p in ADO if p.stem != "iac"], ids=lambda p: p.name)
def test_azure_devops_steps_keep_the_cli_sign_in_alive(path):
    """Issue 17 (8): DefaultAzureCredential reaches AzureCLI@2's sign-in through the Azure CLI; the
    federated sign-in expires after minutes, and a token for a new scope asked for later fails
    (AADSTS700024). keepAzSessionActive signs in again. SYSTEM_ACCESSTOKEN does nothing for it."""
    text = path.read_text()
    assert "refresh the federated token" not in text, "DefaultAzureCredential never reads SYSTEM_ACCESSTOKEN"
    for task in azure_cli_tasks(path):
        assert task["task"] == "AzureCLI@2"
        assert task["inputs"].get("keepAzSessionActive") == "true", (path.name, task.get("displayName"))
        assert "SYSTEM_ACCESSTOKEN" not in (task.get("env") or {}), (path.name, task.get("displayName"))


@pytest.mark.parametrize("path", [p for p in GITHUB if p.stem != "iac"], ids=lambda p: p.name)
def test_github_jobs_ask_for_every_scope_while_the_oidc_sign_in_is_fresh(path):
    from mnistops.backends.azure.workspace import TOKEN_SCOPES

    doc = pf.load(path)
    for name, job in doc["jobs"].items():
        steps = job.get("steps", [])
        logins = [i for i, s in enumerate(steps) if str(s.get("uses", "")).startswith("azure/login@")]
        if not logins:
            continue
        after = steps[logins[0] + 1]
        asked = re.findall(r"https://[\w./-]+\.default", after.get("run", ""))
        assert "az account get-access-token" in after.get("run", ""), (path.name, name)
        assert set(asked) == set(TOKEN_SCOPES), (path.name, name, asked)
        first_mnistops = next(i for i, s in enumerate(steps) if "python -m mnistops" in str(s.get("run", "")))
        assert logins[0] < logins[0] + 1 < first_mnistops


# ----------------------------------------------------------------------------- queueing

def test_ci_can_be_queued_before_the_alert_webhook_connection_exists():
    """Issue 17 (9): Azure DevOps resolves `resources` when it compiles a pipeline; a webhook resource
    whose service connection does not exist yet makes ci.yml impossible to queue."""
    connections_named = {}
    for path in ADO:
        doc = pf.load(path)
        webhooks = (doc.get("resources") or {}).get("webhooks") or []
        connections_named[path.stem] = {w["connection"] for w in webhooks}
    for stem in ("ci", "cd-qa", "cd-prod", "monitor"):
        assert not connections_named[stem], f"{stem}.yml names {connections_named[stem]}"
    # the alerts still queue CI, from a pipeline of their own that holds the webhook
    assert connections_named["alert-to-ci"] == {"mnistops-endpoint-alerts"}
    text = (REPO / "jobs" / "azure-devops" / "alert-to-ci.yml").read_text()
    assert "_apis/pipelines/$(QA_CI_PIPELINE_ID)/runs" in text
    assert "alert-to-ci.yml" in (REPO / "README.md").read_text()


# ----------------------------------------------------------------------------- tenants

def test_one_tenant_for_qa_and_prod_everywhere():
    """Issue 17 (7): one DefaultAzureCredential per process serves both envs (promotion reads QA as
    PROD's identity, through a role assignment in QA): QA and PROD are one tenant, maybe two
    subscriptions. Nothing may promise different tenants."""
    sources = [REPO / "README.md", *(REPO / "conf" / "env").glob("*.yaml"), *(REPO / "infra").glob("*.tf"),
               *(REPO / "jobs").rglob("*.yml"), *(REPO / "mnistops" / "backends" / "azure").glob("*.py")]
    claim = re.compile(r"different tenants|\(and tenant\)|subscriptions and tenants|across tenants", re.I)
    found = [f"{p.relative_to(REPO)}: {m[0]}" for p in sources for m in claim.finditer(p.read_text())]
    assert not found, found
    assert "same Microsoft Entra tenant" in (REPO / "README.md").read_text()


def test_the_readmes_first_run_steps_are_what_the_qa_pipelines_run(tmp_path, monkeypatch):
    """README "First run on Azure" steps 4-6 by hand compose exactly as ci.yml's provision and ci steps and
    cd-qa.yml's cd step (with MNISTOPS_ARGS empty), which the release chain runs
    (tests/test_azure_release_chain.py), as it runs step 7 as written."""
    from omegaconf import OmegaConf

    section = (REPO / "README.md").read_text().split("### First run on Azure", 1)[1].split("```bash", 1)[1].split("```")[0]
    values = {**NEUTRAL, "MNISTOPS_ARGS": ""}
    shared = re.search(r'^A="([^"]+)"$', section, re.M).group(1)
    shared = re.sub(r"\$(\w+)", lambda m: values[m.group(1)], shared).split()
    by_hand = {m.group(1): [*shared, f"stage={m.group(1)}"]
               for m in re.finditer(r"^\.venv/bin/python -m mnistops \$A stage=(\w+)$", section, re.M)}
    assert list(by_hand) == ["provision", "ci", "cd"], section
    for pipeline, stage in (("ci.yml", "provision"), ("ci.yml", "ci"), ("cd-qa.yml", "cd")):
        (step,) = [s for s in pf.steps(REPO / "jobs" / "azure-devops" / pipeline, values) if s.value("stage") == stage]
        for name, value in {**step.env, "AZUREML_QA_ENDPOINT": values["AZUREML_QA_ENDPOINT"]}.items():
            if name.startswith(("AZURE_", "AZUREML_")):
                monkeypatch.setenv(name, value)
        composed = [OmegaConf.to_container(compose([*args, "azure.dry_run=true"], tmp_path), resolve=True)
                    for args in (by_hand[stage], step.args)]
        if stage != "cd":  # $A names QA's endpoint for step 6; CI's steps reach no endpoint, and name none
            assert composed[0]["azure"].pop("endpoint_name") == values["AZUREML_QA_ENDPOINT"]
            assert composed[1]["azure"].pop("endpoint_name") is None
        else:  # $A names the cluster for steps 4-5; CD submits no job, and names none
            assert composed[0].pop("compute")["name"] == "azure_cpu_cluster" and composed[1].pop("compute")["name"] == "cpu"
        assert composed[0] == composed[1], (stage, by_hand[stage], step.args)


def azure_jobs():
    """(pipeline, job, [script text of each step]) of the Azure pipelines, both platforms."""
    for path in sorted(ADO + GITHUB):
        doc = pf.load(path)
        if pf.flavour(path) == "azure-devops":
            jobs = [(name, pf._job_steps(job)) for name, job, _ in pf._ado_jobs(doc)]
            yield from ((path, name, [(s.get("script") or s.get("bash") or (s.get("inputs") or {}).get("inlineScript")
                                       or "").strip() for s in steps]) for name, steps in jobs)
        else:
            yield from ((path, name, [(s.get("run") or "").strip() for s in job.get("steps", [])])
                        for name, job in (doc.get("jobs") or {}).items())


def test_every_azure_job_installs_with_make_setup_as_ci_does():
    """Issue 17 (3): the install step is rehearsed once, by .ci/run's own `make setup` (the venv every
    rehearsal step runs in), because every Azure job installs exactly that way before its first step."""
    checked = 0
    for path, job, scripts in azure_jobs():
        uses = [i for i, text in enumerate(scripts) if "-m mnistops" in text]
        if not uses:
            continue
        installs = [i for i, text in enumerate(scripts) if text.split("#")[0].strip() == "make setup"]
        assert installs and installs[0] < uses[0], f"{path.name} job {job}: no `make setup` before its first step"
        assert not any(re.search(r"\bpip install\b", text) for text in scripts), f"{path.name} job {job} pip-installs"
        checked += 1
    assert checked >= 8  # ci, cd-qa, cd-prod, monitor on both platforms
    ci_run = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^make setup$", ci_run, re.M) and re.search(r"^make test$", ci_run, re.M)
