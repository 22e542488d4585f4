"""infra/*.tf read with python-hcl2, against Azure's published role definitions (vendored with their
source in tests/data/azure-roles/) and the custom role in infra/: who may do what once Terraform has
applied. Each principal the project relies on — a job's cluster identity, PROD's identity in QA, the
endpoint's own identity — is checked for the actions its calls need. Unit tier: nothing runs."""

from __future__ import annotations

import json
import re
from typing import Dict, List

import pytest
import yaml

from conftest import REPO, needs_module
import azure_rbac

ROLES = json.loads((REPO / "tests" / "data" / "azure-roles" / "builtin-roles.json").read_text())["roles"]
ML = "Microsoft.MachineLearningServices/workspaces"
WORKSPACE_SCOPE = "${azurerm_machine_learning_workspace.this.id}"

# What a job does on its own workspace, as the cluster's identity (the in-job steps of stage=ci):
# MLflow runs, metrics and files (train, evaluate, baseline), the registry (register: a model version;
# gate: aliases kept as tags), the reference-features data asset (baseline), the datastore it reads.
JOB_ACTIONS = [f"{ML}/{a}" for a in (
    "experiments/read", "experiments/write", "experiments/runs/read", "experiments/runs/write",
    "metadata/artifacts/read", "metadata/artifacts/write",
    "models/read", "models/write", "models/versions/read", "models/versions/write",
    "data/read", "data/versions/read", "data/versions/write", "datastores/read",
)]
# Promotion as PROD's identity in QA: read the approved version, its run and the run's files; the
# monitoring hand-over: a run with its file in QA's MLflow.
CROSS_ENV_ACTIONS = [f"{ML}/{a}" for a in (
    "models/versions/read", "experiments/runs/read", "metadata/artifacts/read",
    "experiments/write", "experiments/runs/write", "metadata/artifacts/write",
)]


def terraform() -> dict:
    """{"resource": {type: {name: body}}, "variable": {...}, "locals": {...}} of every infra/*.tf
    (read once, by the Azure stand-in's role check)."""
    needs_module("hcl2")
    return azure_rbac.terraform()


def allowed(action: str, role: dict) -> bool:
    """Azure RBAC: an action is allowed when one of the role's actions matches it and none of its
    notActions does (the stand-in's one wildcard rule, azure_rbac.matches)."""
    return any(azure_rbac.matches(p, action) for p in role["actions"]) \
        and not any(azure_rbac.matches(p, action) for p in role.get("notActions", []))


def role_of(assignment: dict, tf: dict) -> dict:
    if "role_definition_name" in assignment:
        return ROLES[assignment["role_definition_name"]]
    ref = re.search(r"azurerm_role_definition\.(\w+)", assignment["role_definition_id"])[1]
    return tf["resource"]["azurerm_role_definition"][ref]["permissions"][0]


def principals(assignment: dict, tf: dict) -> str:
    """The expression naming the assignment's principal(s): for a `for_each` over a local, that local's."""
    principal = assignment["principal_id"]
    if principal.startswith("${each.value"):
        principal = assignment["for_each"]
        local = re.fullmatch(r"\$\{local\.(\w+)\}", principal)
        if local:
            principal = tf["locals"][local[1]]
    return principal


def assignments_for(reference: str, tf: dict) -> List[dict]:
    """Role assignments whose principal is (or, through a for_each, includes) `reference`'s identity."""
    pattern = re.compile(re.escape(reference) + r"\b")
    return [a for a in tf["resource"]["azurerm_role_assignment"].values() if pattern.search(principals(a, tf))]


def clusters(tf: dict) -> Dict[str, dict]:
    return tf["resource"]["azurerm_machine_learning_compute_cluster"]


def test_the_role_matcher_follows_azure_wildcards_and_not_actions():
    scientist = ROLES["AzureML Data Scientist"]
    assert allowed(f"{ML}/experiments/runs/write", scientist)
    assert allowed(f"{ML}/computes/read", scientist) and allowed(f"{ML}/models/versions/write", scientist)
    assert not allowed(f"{ML}/computes/cpu-cluster/write", scientist)
    assert not allowed(f"{ML}/write", scientist) and not allowed("Microsoft.Authorization/roleAssignments/write", scientist)


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_each_cluster_identity_may_do_what_a_job_does_on_its_workspace(name):
    """Issue 17 (4): the cluster's managed identity had no role anywhere: every SDK and MLflow call of
    register, baseline and gate inside the job got 403."""
    tf = terraform()
    cluster = clusters(tf)[name]
    assert cluster["identity"][0]["type"] == "SystemAssigned"
    mine = assignments_for(f"azurerm_machine_learning_compute_cluster.{name}", tf)
    on_workspace = [a for a in mine if a["scope"] == WORKSPACE_SCOPE]
    assert on_workspace, f"no role on the workspace for cluster {name}'s identity"
    missing = [a for a in JOB_ACTIONS if not any(allowed(a, role_of(r, tf)) for r in on_workspace)]
    assert not missing, missing
    # the registry's admin user is off: the cluster pulls the environment images with its identity
    registry = [a for a in mine if a["scope"] == "${azurerm_container_registry.this.id}"]
    assert any(allowed("Microsoft.ContainerRegistry/registries/pull/read", role_of(r, tf)) for r in registry)
    for a in mine:  # and nothing that changes compute, the workspace or access
        for action in (f"{ML}/computes/{cluster['name']}/write", f"{ML}/write", "Microsoft.Authorization/roleAssignments/write"):
            assert not allowed(action, role_of(a, tf)), (a, action)


def test_the_endpoint_identity_gets_no_role_azure_ml_assigns_itself():
    """Issue 17 (5): Azure ML gives a managed online endpoint's system-assigned identity AcrPull on the
    workspace registry and Storage Blob Data Reader on the workspace storage when it creates the
    endpoint; assigning them in Terraform too fails the first apply with 409 RoleAssignmentExists."""
    tf = terraform()
    endpoint = tf["resource"]["azapi_resource"]["endpoint"]
    assert endpoint["identity"][0]["type"] == "SystemAssigned"
    assert not assignments_for("azapi_resource.endpoint.identity", tf)


def test_the_cross_env_role_reads_the_files_promotion_downloads():
    """Issue 17 (6): the cross-env role could write run files but not read them: promotion's download
    of QA's model files got 403."""
    tf = terraform()
    cross = [a for a in tf["resource"]["azurerm_role_assignment"].values()
             if "var.cross_env_principal_ids" in str(a.get("for_each")) and a["scope"] == WORKSPACE_SCOPE]
    assert cross
    missing = [a for a in CROSS_ENV_ACTIONS if not any(allowed(a, role_of(r, tf)) for r in cross)]
    assert not missing, missing
    # and still no job, endpoint, model or data asset written in QA by PROD's identity
    for action in (f"{ML}/jobs/write", f"{ML}/onlineEndpoints/write", f"{ML}/models/versions/write", f"{ML}/data/versions/write"):
        assert not any(allowed(action, role_of(r, tf)) for r in cross), action


def test_every_azure_compute_config_names_a_cluster_terraform_creates():
    """Issue 17 (12): compute=azure_gpu_cluster named `gpu-cluster`, which nothing in infra/ created.
    The GPU cluster is off by default (quota) and one variable turns it on."""
    tf = terraform()
    variables = tf["variable"]
    by_name = {}
    for name, cluster in clusters(tf).items():
        ref = re.fullmatch(r"\$\{var\.(\w+)\}", cluster["name"])
        assert ref, f"cluster {name}'s name comes from a variable"
        by_name[variables[ref[1]]["default"]] = cluster
    for path in sorted((REPO / "conf" / "compute").glob("azure_*.yaml")):
        conf = yaml.safe_load(path.read_text())
        assert conf["cluster"] in by_name, f"{path.name} names {conf['cluster']}, which infra/ does not create"
        cluster = by_name[conf["cluster"]]
        switch = re.search(r"var\.(\w+)", str(cluster.get("count", "")))
        if switch:  # optional: its variable exists, and the config says how to turn it on
            assert variables[switch[1]]["type"] == "${bool}" or variables[switch[1]]["type"] == "bool"
            assert switch[1] in path.read_text(), f"{path.name} should say `{switch[1]} = true` creates its cluster"
        max_nodes = str(cluster["scale_settings"][0]["max_node_count"])
        most = variables[re.search(r"var\.(\w+)", max_nodes)[1]]["default"]
        assert most >= conf["instance_count"], f"{path.name} asks for {conf['instance_count']} nodes, the cluster scales to {most}"


def test_a_missing_gpu_cluster_says_which_variable_creates_it(tmp_path):
    from conftest import compose
    from mnistops.backends.azure import compute

    cfg = compose(["env=qa", "env.backend=azure", "compute=azure_gpu_cluster"], tmp_path)
    message = str(compute.missing(cfg, "workspace mlw-mnistops-qa"))
    assert "gpu-cluster" in message and "gpu_cluster_enabled = true" in message and "qa.tfvars" in message
