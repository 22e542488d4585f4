"""The Azure stand-in refuses the bodies Azure ML's control plane would: each PUT/POST/PATCH is checked
against azure-ai-ml's own generated REST models for its route (tests/azure_rest_models.py), so a body
the SDK builds from the flavour's entities passes and a hand-broken one gets 400 naming its field."""

from __future__ import annotations

import json

import pytest

from conftest import compose, needs_module

needs_module("azure.ai.ml", "pip install -e '.[azure]'")

from azure_rest_models import check, model_class, route_for, routes  # noqa: E402
from azure_workspace import FakeWorkspace, StaticToken  # noqa: E402

WS = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.MachineLearningServices/workspaces/ws"


def test_the_route_table_comes_from_the_sdks_operations():
    assert len(routes()) > 40
    for method, path, model in [("PUT", f"{WS}/jobs/j1", "JobBase"), ("PUT", f"{WS}/models/m/versions/3", "ModelVersion"),
                                ("PUT", f"{WS}/onlineEndpoints/e", "OnlineEndpoint"),
                                ("PUT", f"{WS}/onlineEndpoints/e/deployments/blue", "OnlineDeployment"),
                                ("PUT", f"{WS}/batchEndpoints/b/deployments/d", "BatchDeployment"),
                                ("PUT", f"{WS}/environments/env/versions/1", "EnvironmentVersion"),
                                ("PUT", f"{WS}/data/d/versions/1", "DataVersionBase"), ("PUT", f"{WS}/schedules/s", "Schedule"),
                                ("PUT", f"{WS}/codes/c/versions/1", "CodeVersion"),
                                ("POST", f"{WS}/datastores/workspaceblobstore/listSecrets", "SecretExpiry")]:
        assert route_for(method, path.lower()).model == model, path  # paths compare case-insensitively
    assert route_for("GET", f"{WS}/jobs/j1") is None and route_for("PUT", f"{WS}/no-such/x") is None


@pytest.fixture(scope="module")
def flavour_bodies(tmp_path_factory):
    """What the SDK sends for the entities the flavour builds (their REST objects, serialised as the
    SDK's operations serialise them), with the api-version each is sent with."""
    from azure.ai.ml._restclient.arm_ml_service._utils.model_base import SdkJSONEncoder

    from mnistops.backends.azure import batch_specs, command_job, environments, monitoring_specs, online_specs

    home = tmp_path_factory.mktemp("home")
    cfg = compose(["env=qa", "env.backend=azure", "compute=azure_cpu_cluster", "endpoint.collect.enabled=false"], home)
    env_ref, code = f"{WS}/environments/mnistops-inference/versions/1", f"{WS}/codes/mnistops-code/versions/1"

    def wire(rest):
        return json.loads(json.dumps(rest, cls=SdkJSONEncoder, exclude_readonly=True))

    return {
        "OnlineEndpoint": (wire(online_specs.endpoint(cfg, "mnist-qa-abc123")._to_rest_online_endpoint("westeurope")), None),
        "OnlineDeployment": (wire(online_specs.deployment(cfg, "mnist-qa-abc123", "blue", "mnist", "3", env_ref, code,
                                                          "gt")._to_rest_object(location="westeurope")), None),
        "BatchEndpoint": (wire(batch_specs.endpoint(cfg, "mnist-qa-batch")._to_rest_batch_endpoint("westeurope")), None),
        "BatchDeployment": (wire(batch_specs.deployment(cfg, "mnist-qa-batch", "mnist", "3", env_ref, code)
                                 ._to_rest_object(location="westeurope")), None),
        "EnvironmentVersion": (wire(environments.train_environment(cfg)._to_rest_object()), None),
        "JobBase": (wire(command_job.command_job(cfg, ["train"], env_ref, code)._to_job()._to_rest_object()), None),
        "Schedule": (wire(monitoring_specs.schedule(cfg, "mnist-qa-abc123", "blue", "gt")._to_rest_object()),
                     "2023-06-01-preview"),  # ScheduleOperations' client
    }


def test_every_body_the_flavour_builds_passes_the_sdks_models(flavour_bodies):
    import azure_rest_models

    for model, (body, api_version) in flavour_bodies.items():
        azure_rest_models._API_VERSION[0] = api_version
        try:
            assert check(model_class(model), body) == [], model
        finally:
            azure_rest_models._API_VERSION[0] = None


def test_the_model_performance_signal_is_valid_only_in_the_api_version_the_sdk_sends_schedules_with(flavour_bodies):
    """The 2025-12-01 models lack ModelPerformance; the SDK sends schedules as 2023-06-01-preview, which has it."""
    body, _ = flavour_bodies["Schedule"]
    problems = check(model_class("Schedule"), body)
    assert any("signals.model_performance.signalType: 'ModelPerformance' is not one of" in p for p in problems)


def put(ws: FakeWorkspace, relative: str, body: dict, api_version: str = "2024-10-01-preview"):
    """A raw PUT through the fake's transport, as the SDK's pipeline would send it."""
    from azure.core.rest import HttpRequest

    url = (f"https://management.azure.com/subscriptions/{ws.subscription}/resourceGroups/{ws.resource_group}/providers/"
           f"Microsoft.MachineLearningServices/workspaces/{ws.workspace}/{relative}?api-version={api_version}")
    response = ws.send(HttpRequest("PUT", url, json=body, headers={"Authorization": f"Bearer {StaticToken().token}"}))
    return response.status_code, json.loads(response.content or b"null")


def test_a_hand_broken_body_gets_400_with_azures_error_naming_the_field(flavour_bodies):
    ws = FakeWorkspace()
    job, _ = flavour_bodies["JobBase"]
    assert put(ws, "jobs/ok-job", job)[0] == 201 and not ws.refused

    missing = json.loads(json.dumps(job))
    del missing["properties"]["command"]
    status, answer = put(ws, "jobs/no-command", missing)
    assert status == 400 and answer["error"]["code"] == "UserError"
    assert "properties.command: required (CommandJob)" in answer["error"]["message"]
    assert answer["error"]["details"][0]["target"] == "properties.command"

    deployment, _ = flavour_bodies["OnlineDeployment"]
    wrong = json.loads(json.dumps(deployment))
    wrong["properties"]["scaleSettings"] = {"scaleType": "Elastic"}
    status, answer = put(ws, "onlineEndpoints/mnist-qa-abc123/deployments/blue", wrong)
    assert status == 400 and ("properties.scaleSettings.scaleType: 'Elastic' is not one of ['Default', "
                              "'TargetUtilization']") in answer["error"]["message"]

    typed = json.loads(json.dumps(job))
    typed["properties"]["resources"]["instanceCount"] = "two"
    status, answer = put(ws, "jobs/typed", typed)
    assert status == 400 and "properties.resources.instanceCount: expected int, got 'two'" in answer["error"]["message"]
    assert [r.path.rsplit("/", 1)[1] for r, _ in ws.refused] == ["no-command", "blue", "typed"]
    assert ws.resource("jobs/no-command") is None and ws.resource("jobs/typed") is None


def test_read_only_fields_in_a_put_are_ignored_as_arm_ignores_them():
    ws = FakeWorkspace()
    status, stored = put(ws, "models/m/versions/1", {"properties": {"modelType": "mlflow_model", "modelUri": "runs:/r/model",
                                                                    "provisioningState": "Failed"}})
    assert status == 201 and stored["properties"]["provisioningState"] == "Succeeded"


def test_the_sdks_own_requests_pass_through_the_fake(tmp_path):
    """Bodies azure-ai-ml serialises itself (its operations, not the test) are accepted and stored."""
    from azure.ai.ml import MLClient
    from azure.ai.ml.entities import Environment, Model

    ws = FakeWorkspace()
    ml = MLClient(StaticToken(), ws.subscription, ws.resource_group, ws.workspace, transport=ws, enable_telemetry=False)
    ml.models.create_or_update(Model(name="m", type="mlflow_model", path="runs:/r/model", tags={"a": "b"}))
    ml.environments.create_or_update(Environment(name="e", version="1", image="mcr.microsoft.com/azureml/base:latest"))
    assert not ws.refused and ws.resource("models/m/versions/1") and ws.resource("environments/e/versions/1")
