"""One meaning for every model reference: one table of cases, resolved by both flavours. The local
flavour reads a real MLflow registry (sqlite, real versions and aliases); the azure flavour reads
Azure ML's answers to the SDK's version listing (handwritten in the API's shape, aliases as the
flavour keeps them: `mnistops.alias.<alias>` tags). Both must give the same version or the same
error."""

from __future__ import annotations

import pytest

from conftest import needs_module  # a missing extra fails in CI, skips elsewhere
needs_module("azure.ai.ml", "pip install -e '.[azure]'")
pytestmark = pytest.mark.integration  # a real MLflow store (sqlite) for the local side

from azure_workspace import FakeWorkspace, StaticToken  # noqa: E402

from mnistops import tags as T  # noqa: E402
from mnistops.errors import MnistopsError  # noqa: E402

NAME = "m"
APPROVED = {T.GATE_DECISION: T.APPROVED}
# version -> tags; @champion moved 1 -> 2 (the gate's choice), v3 is approved too but never became
# champion (the old Azure rule "newest approved" would answer 3), @candidate is on v3
VERSIONS = {"1": APPROVED, "2": APPROVED, "3": APPROVED}
ALIASES = {"champion": "2", "candidate": "3"}

CASES = [  # reference -> the version, or the start of the error (registry location replaced by <where>)
    ("models:/m/2", "2"),
    ("models:/m/latest", "3"),
    ("models:/m@candidate", "3"),
    ("models:/m@champion", "2"),
    ("models:/m@staging", "error: no version of m has alias @staging in <where> (aliases there: @candidate, @champion)"),
    ("models:/m/9", "error: model models:/m/9 not found in <where> (versions: 1, 2, 3)"),
    ("models:/nope/1", "error: model 'nope' has no registered version in <where>"),
    ("models:/nope@champion", "error: model 'nope' has no registered version in <where>"),
    ("models:/m", "error: model='models:/m' is not a model reference"),
    ("runs:/0123/model", "error: model='runs:/0123/model' is not a model reference"),
]


@pytest.fixture(scope="module")
def local_registry(tmp_path_factory):
    from mlflow.tracking import MlflowClient

    from mnistops.backends.local.mlflow_registry import MlflowRegistry

    uri = f"sqlite:///{tmp_path_factory.mktemp('local-registry') / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    client.create_registered_model(NAME)
    for version, tags in VERSIONS.items():
        created = client.create_model_version(NAME, f"file:///models/{version}", tags=tags)
        assert str(created.version) == version
    client.set_registered_model_alias(NAME, "champion", "1")  # the first champion ...
    for alias, version in ALIASES.items():  # ... then the gate moved it
        client.set_registered_model_alias(NAME, alias, version)
    return MlflowRegistry("qa", uri)


def azure_answers() -> FakeWorkspace:
    """The versions as Azure ML lists them, with the flavour's alias tags; a move that crashed
    half-way left @champion on v1 too, with the older timestamp."""
    ws = FakeWorkspace()
    stamps = {"champion": "2026-01-02T10:00:00.000000Z", "candidate": "2026-01-02T09:00:00.000000Z"}
    for version, tags in VERSIONS.items():
        alias_tags = {T.alias(a): stamps[a] for a, v in ALIASES.items() if v == version}
        if version == "1":
            alias_tags[T.alias("champion")] = "2026-01-01T10:00:00.000000Z"
        ws.seed(f"models/{NAME}/versions/{version}",
                {"modelType": "mlflow_model", "modelUri": f"runs:/run{version}/model", "flavors": {},
                 "tags": {**tags, **alias_tags}, "properties": {T.FILES_RUN_ID: f"run{version}"},
                 "isArchived": False, "isAnonymous": False})
    return ws


@pytest.fixture(scope="module")
def azure_registry():
    from mnistops.backends.azure.model_registry import AzureModelRegistry
    from mnistops.backends.azure.workspace import Connection, use_transport

    from conftest import compose

    ws = azure_answers()
    cfg = compose(["env=qa", "env.backend=azure", f"env.azure.subscription_id={ws.subscription}",
                   f"env.azure.resource_group={ws.resource_group}", f"env.azure.workspace={ws.workspace}"])
    with use_transport(ws, StaticToken()):
        yield AzureModelRegistry("qa", Connection(cfg), lambda: "unused"), ws


def outcome(registry, reference: str) -> str:
    try:
        return registry.resolve(reference).version
    except MnistopsError as err:
        return "error: " + str(err).replace(registry.where, "<where>")


@pytest.mark.parametrize("reference,expected", CASES, ids=[c[0] for c in CASES])
def test_both_flavours_resolve_a_reference_alike(reference, expected, local_registry, azure_registry):
    registry, _ = azure_registry
    local, azure = outcome(local_registry, reference), outcome(registry, reference)
    assert local.startswith(expected), local
    assert azure.startswith(expected), azure
    assert local == azure


def test_the_azure_flavour_reads_versions_with_one_listing_and_hides_its_alias_tags(azure_registry):
    registry, ws = azure_registry
    before = len(ws.requests)
    champion = registry.resolve("models:/m@champion")
    sent = ws.requests[before:]
    assert [(r.method, ws.relative(r.path)) for r in sent] == [("GET", "models/m/versions")]
    assert sent[0].query.get("listViewType") == "ActiveOnly"  # archived versions are not candidates
    assert champion.tags == APPROVED and champion.run_id == "run2"  # no mnistops.alias.* among the tags
