"""The azure flavour's registry: aliases kept as tags on exactly one version, registration from a
run's files (the API Azure's MLflow serves, then the SDK), downloads checked against the weights
digest, and stage=promote copying QA's approved version into PROD's workspace with its lineage.

Azure ML answers from tests/azure_workspace.py; each workspace's MLflow is a real `mlflow server`
(tests/azure_mlflow_server.py) reached through the workspace's azureml:// URI, by azureml-mlflow."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from conftest import needs_module  # a missing extra fails in CI, skips elsewhere
needs_module("azure.ai.ml", "pip install -e '.[azure]'")

from azure_mlflow_server import TOKEN, azure_mlflow  # noqa: E402,F401  (azure_mlflow: the module's MLflow servers)
from azure_workspace import FakeAzure, FakeWorkspace, StaticToken  # noqa: E402
from conftest import compose  # noqa: E402

from mnistops import tags as T  # noqa: E402
from mnistops.errors import MnistopsError  # noqa: E402

NAME = "mnist-classifier"


def settings(ws: FakeWorkspace, env: str = "qa"):
    return [f"env={env}", "env.backend=azure", f"env.azure.subscription_id={ws.subscription}",
            f"env.azure.resource_group={ws.resource_group}", f"env.azure.workspace={ws.workspace}"]


def seed_version(ws: FakeWorkspace, number: str, run: str = "", **tags) -> None:
    ws.seed(f"models/{NAME}/versions/{number}",
            {"modelType": "mlflow_model", "modelUri": f"runs:/{run or 'r' + number}/model", "flavors": {},
             "tags": tags, "properties": {T.FILES_RUN_ID: run or f"r{number}"}})


def registry_of(ws: FakeWorkspace, home: Path, mlflow_uri: str = "unused"):
    from mnistops.backends.azure.model_registry import AzureModelRegistry
    from mnistops.backends.azure.workspace import Connection

    return AzureModelRegistry("qa", Connection(compose(settings(ws), home)), lambda: mlflow_uri)


def model_dir(root: Path, weights: bytes = b"onnx weights") -> Path:
    """An MLflow model directory as register lays it out (contents are data here: nothing loads them)."""
    (root / "artifacts").mkdir(parents=True)
    (root / "MLmodel").write_text("flavors:\n  python_function:\n    loader_module: mlflow.pyfunc.model\n")
    (root / "artifacts" / "model.onnx").write_bytes(weights)
    return root


def test_an_alias_moves_to_one_version_new_holder_first(tmp_path):
    from mnistops.backends.azure.workspace import use_transport

    ws = FakeWorkspace()
    seed_version(ws, "1", **{T.alias("champion"): "2026-01-01T00:00:00.000000Z", "keep": "me"})
    seed_version(ws, "2")
    with use_transport(ws, StaticToken()):
        registry = registry_of(ws, tmp_path)
        before = len(ws.requests)
        registry.set_alias(NAME, "champion", "2")
        puts = [(ws.relative(r.path), r.body["properties"]["tags"]) for r in ws.requests[before:] if r.method == "PUT"]
        assert [p for p, _ in puts] == [f"models/{NAME}/versions/2", f"models/{NAME}/versions/1"]  # tag, then untag
        assert puts[0][1][T.alias("champion")] > "2026-01-01"
        assert puts[1][1] == {"keep": "me"}  # the old holder keeps its other tags
        assert registry.resolve(f"models:/{NAME}@champion").version == "2"
        with pytest.raises(MnistopsError, match=f"models:/{NAME}/7 not found"):
            registry.set_alias(NAME, "champion", "7")
        registry.set_tags(registry.resolve(f"models:/{NAME}/2"), {T.smoke("qa"): "passed", T.alias("x"): "sneaky"})
    tags = ws.resource(f"models/{NAME}/versions/2")["properties"]["tags"]
    assert tags[T.smoke("qa")] == "passed" and T.alias("x") not in tags and T.alias("champion") in tags


@pytest.mark.integration
def test_register_makes_the_version_from_the_runs_files_and_download_checks_them(tmp_path, azure_mlflow):
    from mlflow.tracking import MlflowClient

    from mnistops.backends.azure.workspace import use_transport

    ws = azure_mlflow.attach(FakeWorkspace())
    uri = ws.mlflow_uri
    client = MlflowClient(uri)
    # the workspace's azureml:// URI is served by azureml-mlflow's store, at the URL it derives from it
    assert type(client._tracking_client.store).__name__ == "AzureMLRestStore"
    creds = client._tracking_client.store.get_host_creds()
    assert (creds.host, creds.token) == (ws.mlflow_server.base_url, TOKEN)  # signed with the agent's az token
    run = client.create_run(client.create_experiment("mnistops"))
    files = model_dir(tmp_path / "model")
    digest = hashlib.sha256(b"onnx weights").hexdigest()
    seed_version(ws, "1")
    with use_transport(ws, StaticToken()):
        registry = registry_of(ws, tmp_path, uri)
        created = registry.register(NAME, files, run_id=run.info.run_id, description="d",
                                    tags={T.WEIGHTS_SHA256: digest, T.alias("candidate"): "no"})
        assert (created.version, created.run_id, created.tags) == ("2", run.info.run_id, {T.WEIGHTS_SHA256: digest})
        (put,) = ws.sent("PUT", f"models/{NAME}/versions/2")
        assert put.body["properties"]["modelType"] == "mlflow_model"
        assert put.body["properties"]["modelUri"] == f"runs:/{run.info.run_id}/model"
        assert put.body["properties"]["properties"] == {T.FILES_RUN_ID: run.info.run_id}
        assert {a.path for a in client.list_artifacts(run.info.run_id, "model")} == {"model/MLmodel", "model/artifacts"}

        fetched = registry.download(created, tmp_path / "cache")
        assert (fetched / "artifacts" / "model.onnx").read_bytes() == b"onnx weights"
        assert registry.download(created, tmp_path / "cache") == fetched  # once
        tampered = type(created)(NAME, "2", {T.WEIGHTS_SHA256: "0" * 64}, "", run.info.run_id)
        with pytest.raises(MnistopsError, match="does not match the registered weights digest"):
            registry.download(tampered, tmp_path / "other")
    assert not list((tmp_path / "other").glob("*"))  # nothing half-made is left to trust


@pytest.fixture
def two_workspaces(tmp_path, monkeypatch, azure_mlflow):
    """QA's workspace holding an approved, smoke-tested champion (files in QA's MLflow), PROD's empty;
    QA's settings come from the variables conf/env/qa.yaml reads, as on a PROD agent."""
    from mlflow.tracking import MlflowClient

    qa, prod = azure_mlflow.attach(
        FakeWorkspace(subscription="11111111-0000-0000-0000-000000000000", resource_group="rg-qa", workspace="mlw-qa"),
        FakeWorkspace(subscription="22222222-0000-0000-0000-000000000000", resource_group="rg-prod",
                      workspace="mlw-prod"))
    client = MlflowClient(qa.mlflow_uri)
    run = client.create_run(client.create_experiment("mnistops"))
    client.log_artifacts(run.info.run_id, str(model_dir(tmp_path / "qa-model")), "model")
    digest = hashlib.sha256(b"onnx weights").hexdigest()
    seed_version(qa, "2", run="r2", **{T.GATE_DECISION: T.REJECTED})
    seed_version(qa, "3", run=run.info.run_id, **{T.GATE_DECISION: T.APPROVED, T.smoke("qa"): "passed",
                                                  T.WEIGHTS_SHA256: digest, T.RUN_ID: "train-run-in-qa",
                                                  T.alias("champion"): "2026-01-03T00:00:00.000000Z",
                                                  T.alias("candidate"): "2026-01-03T00:00:00.000000Z"})
    for key, value in {"AZURE_SUBSCRIPTION_ID": qa.subscription, "AZURE_QA_SUBSCRIPTION_ID": qa.subscription,
                       "AZUREML_QA_RESOURCE_GROUP": qa.resource_group, "AZUREML_QA_WORKSPACE": qa.workspace}.items():
        monkeypatch.setenv(key, value)
    return qa, prod


@pytest.mark.integration
def test_promote_copies_qas_approved_version_into_prod_once_with_its_lineage(two_workspaces, home):
    import mnistops
    from mlflow.tracking import MlflowClient

    from mnistops.backends.azure.workspace import use_transport

    qa, prod = two_workspaces
    args = settings(prod, "prod")  # PROD's MLflow: the azureml:// URI its workspace reports
    with use_transport(FakeAzure(qa, prod), StaticToken("prod/pipeline")):  # PROD's agent, reading QA
        result = mnistops.run("promote", args)
        assert result.model_uri == f"models:/{NAME}/1" and result.metrics["promote/copied"] == 1.0
        put = prod.sent("PUT", f"models/{NAME}/versions/1")[0]  # then again, with the @champion tag
        tags, props = put.body["properties"]["tags"], put.body["properties"]
        assert (tags[T.SOURCE_ENV], tags[T.SOURCE_VERSION], tags[T.SOURCE_URI]) == ("qa", "3", f"models:/{NAME}/3")
        assert tags[T.ENV] == "prod" and tags[T.RUN_ID] == "train-run-in-qa" and tags[T.GATE_DECISION] == T.APPROVED
        assert not any(k.startswith(T.ALIAS_PREFIX) for k in tags)  # QA's aliases stay in QA
        promote_run = props["properties"][T.FILES_RUN_ID]
        assert props["modelUri"] == f"runs:/{promote_run}/model" and promote_run == result.run_id
        copied = MlflowClient(prod.mlflow_uri).download_artifacts(promote_run, "model/artifacts/model.onnx")
        assert Path(copied).read_bytes() == b"onnx weights"
        assert T.alias("champion") in prod.resource(f"models/{NAME}/versions/1")["properties"]["tags"]
        assert not qa.sent("PUT", ".*")  # QA is only read

        again = mnistops.run("promote", args)
        assert again.model_uri == f"models:/{NAME}/1" and again.metrics["promote/copied"] == 0.0
        assert len(prod.sent("PUT", f"models/{NAME}/versions/.*")) == 3  # the alias refreshed, no new version

        with pytest.raises(MnistopsError, match="was not approved by the qa gate"):
            mnistops.run("promote", [*args, f"promote.model=models:/{NAME}/2"])
    assert not prod.sent("PUT", f"models/{NAME}/versions/2")


def test_another_workspaces_run_files_are_read_in_that_workspace(monkeypatch):
    """azureml-mlflow's artifact repository for an azureml:// run-files URI takes its workspace from
    MLflow's global tracking store, not from the tracking URI it is handed (its get_service_context):
    PROD's promotion reading QA's run files would ask PROD's workspace for them. The registry's
    download sets the source workspace's URI globally meanwhile (tracking.global_tracking_uri)."""
    import mlflow
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    from azure_mlflow_server import scope
    from mnistops import tracking

    monkeypatch.setenv("AZUREML_CURRENT_CLOUD", "AzureCloud")  # no cloud metadata lookup (nothing is called)
    qa, prod = scope("11111111", "rg-qa", "mlw-qa"), scope("22222222", "rg-prod", "mlw-prod")
    qa_uri, prod_uri = f"azureml://qa.example:443/mlflow/v1.0{qa}", f"azureml://prod.example:443/mlflow/v1.0{prod}"
    files = f"azureml://qa.example:443/mlflow/v2.0{qa}/experiments/1/runs/abc/artifacts"  # Azure's run-files URI
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(prod_uri)
    try:
        as_is = get_artifact_repository(files, tracking_uri=qa_uri).artifacts._service_context
        assert (as_is.workspace_name, as_is.host_url) == ("mlw-prod", "https://prod.example:443")  # the trap
        with tracking.global_tracking_uri(qa_uri):
            fixed = get_artifact_repository(files, tracking_uri=qa_uri).artifacts._service_context
        assert (fixed.workspace_name, fixed.subscription_id, fixed.host_url) == ("mlw-qa", "11111111",
                                                                                 "https://qa.example:443")
        assert mlflow.get_tracking_uri() == prod_uri  # restored
    finally:
        mlflow.set_tracking_uri(previous)


def test_a_refusal_from_run_historys_rest_client_is_one_line_with_the_services_code():
    """azureml-mlflow's artifact client (azure-core) raises HttpResponseError, whose response's `text` is a
    method, not requests' property: root_cause read it as the body and died with a TypeError, so promotion
    without the cross-env role's artifacts/read printed a traceback (found by the release chain with
    run files behind run history)."""
    from azure.core.exceptions import HttpResponseError
    from azure.core.rest import HttpRequest

    from azure_workspace import json_response
    from mnistops.backends.azure.model_registry import root_cause

    said = {"error": {"code": "AuthorizationFailed", "message": "The client 'prod/pipeline' … 'metadata/artifacts/read'"}}
    response = json_response(HttpRequest("GET", "https://westeurope.api.azureml.ms/history/v1.0/x"), 403, said)
    assert callable(response.text)
    try:
        raise HttpResponseError(response=response)
    except HttpResponseError as err:
        assert root_cause(err) == "HTTP 403 AuthorizationFailed: The client 'prod/pipeline' … 'metadata/artifacts/read'"
