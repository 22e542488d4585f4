"""Run history's artifact routes in the Azure stand-in (tests/azure_run_artifacts.py), as azureml-mlflow's
own REST client calls them: what it sends is checked by its own models, what it gets back parses with
them, and the routes are the workspace's metadata/artifacts operations under infra/'s roles. (The release
chain, tests/test_azure_release_chain.py, runs every stage's run files through them into Azurite.)"""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

import pytest

from conftest import needs_module

needs_module("azureml.mlflow", "pip install -e '.[azure]'")

from azure_run_artifacts import RunArtifacts  # noqa: E402
from azure_workspace import FakeWorkspace, Recorded  # noqa: E402

HISTORY = ("/history/v1.0/subscriptions/s/resourcegroups/rg/providers/microsoft.machinelearningservices/workspaces/ws"
           "/experiments/1/runs/r1/artifacts")


def test_files_are_created_with_a_write_sas_read_with_a_read_sas_and_listed():
    from azureml.mlflow._restclient.run_artifact import models as M

    files = RunArtifacts("stmlwqa", "stmlwqa.blob.core.windows.net")
    status, made = files.answer("POST", "r1", "/batch/metadata", {}, {"paths": [{"path": "model/MLmodel"}]})
    assert status == 200
    result = M.BatchArtifactContentInformationResult.deserialize(made)  # the client's own model reads it
    upload = urlparse(result.artifact_content_information["model/MLmodel"].content_uri)
    assert upload.netloc == "stmlwqa.blob.core.windows.net"
    assert upload.path == "/azureml/ExperimentRun/dcid.r1/model/MLmodel"
    assert set(parse_qs(upload.query)["sp"][0]) == {"c", "w"}  # create and write, no read

    status, info = files.answer("GET", "r1", "/contentinfo", {"path": "model/MLmodel"}, None)
    download = urlparse(M.ArtifactContentInformation.deserialize(info).content_uri)
    assert status == 200 and download.path == upload.path and parse_qs(download.query)["sp"] == ["r"]
    assert files.answer("GET", "r1", "/contentinfo", {"path": "model/nope"}, None)[0] == 404
    assert files.answer("GET", "r2", "/contentinfo", {"path": "model/MLmodel"}, None)[0] == 404  # another run's

    status, listed = files.answer("GET", "r1", "", {}, None)
    assert status == 200 and [a.path for a in M.PaginatedArtifactList.deserialize(listed).value] == ["model/MLmodel"]


@pytest.mark.parametrize("body", [{"paths": "model/MLmodel"}, {"paths": [{"path": ""}]}, {"paths": []}, "x"])
def test_a_body_that_is_not_a_list_of_artifact_paths_is_refused(body):
    status, answer = RunArtifacts("a", "a.blob.core.windows.net").answer("POST", "r1", "/batch/metadata", {}, body)
    assert status == 400 and answer["error"]["code"] == "UserError", answer


@pytest.mark.parametrize("method,route,action", [("POST", "/batch/metadata", "write"), ("GET", "/contentinfo", "read"),
                                                 ("GET", "", "read")])
def test_the_routes_are_the_workspaces_artifact_operations(method, route, action):
    assert FakeWorkspace.data_plane_action(Recorded(method, HISTORY + route, {}, None)) == \
        f"Microsoft.MachineLearningServices/workspaces/metadata/artifacts/{action}"
    run_status = HISTORY.rsplit("/artifacts", 1)[0]  # run history's own (a job's status) stays runs/read
    assert FakeWorkspace.data_plane_action(Recorded("GET", run_status, {}, None)).endswith("experiments/runs/read")
