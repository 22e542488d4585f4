"""The env's Azure ML workspace: which one (settings), who we are (credential) and the MLClient.

Settings come from `env.azure.*` (conf/env/<env>.yaml reads them from environment variables). Inside
an Azure ML job (`azure.inside_job=true`, appended by the job runner) they fall back to the
variables Azure ML sets in every job (AZUREML_ARM_SUBSCRIPTION, _RESOURCEGROUP, _WORKSPACE_NAME),
and the credential is the compute's managed identity (DefaultAzureCredential's
ManagedIdentityCredential; DEFAULT_IDENTITY_CLIENT_ID picks a user-assigned one): the job acts on its
own workspace's registry as the cluster's identity, which needs "AzureML Data Scientist" there.
Each missing piece fails before any call, in one line naming the key or the credential chain.

In Azure ML Studio (a notebook on a compute instance) no such variable is set: the env's own workspace
then comes from the workspace `config.json` Azure ML writes there, found as `MLClient.from_config`
finds it (.azureml/, aml_config/ or the folder itself, from the cwd up; then ~/.azureml/), and
DefaultAzureCredential signs in as the compute instance's managed identity (Azure sets MSI_ENDPOINT
and MSI_SECRET on it; infra/ `compute_instance_enabled` creates one with its role on the workspace).

One credential per process serves every env it touches (promotion reads QA's workspace from PROD's
agent): QA and PROD live in one Microsoft Entra tenant, in one subscription or two. PROD's identity
reads QA through a role assignment in QA (infra/identity.tf), which a user-assigned managed identity
can only get in its own tenant.

Tests route every SDK request (and the blob reads of data_collector_reader.py) through their own HTTP
transport and a static token with `use_transport(transport, credential)`: the one seam between this
flavour and the network.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

from omegaconf import DictConfig

from mnistops.errors import MnistopsError

SETTINGS = {  # key -> the environment variable conf/env/<env>.yaml reads it from ({ENV}: the env name)
    "subscription_id": "AZURE_{ENV}_SUBSCRIPTION_ID or AZURE_SUBSCRIPTION_ID",
    "resource_group": "AZUREML_{ENV}_RESOURCE_GROUP",
    "workspace": "AZUREML_{ENV}_WORKSPACE",
}
IN_JOB = {  # key -> what Azure ML sets in every job's environment
    "subscription_id": "AZUREML_ARM_SUBSCRIPTION",
    "resource_group": "AZUREML_ARM_RESOURCEGROUP",
    "workspace": "AZUREML_ARM_WORKSPACE_NAME",
}
MANAGEMENT_SCOPE = "https://management.azure.com/.default"  # azure-ai-ml, azureml-mlflow
STORAGE_SCOPE = "https://storage.azure.com/.default"  # data_collector_reader.py reads the collector's blobs
# Every scope this flavour asks a credential for. The GitHub workflows ask the CLI for each one right
# after azure/login, while its federated sign-in is fresh (a later first request fails: AADSTS700024).
TOKEN_SCOPES = (MANAGEMENT_SCOPE, STORAGE_SCOPE)
# Where MLClient.from_config looks for the workspace config.json, in its order: these folders of the
# cwd, then of each parent (20 levels); ~/.azureml/config.json (azureml-core's place) after that.
CONFIG_DIRS = (".azureml", "aml_config", "")
CONFIG_NAMES = ("config.json", "project.json")
CONFIG_LEVELS = 20

# the test seam: (transport, credential) every new MLClient uses; None: the network and DefaultAzureCredential
_SEAM: Optional[Tuple[object, object]] = None
_CLIENTS: Dict[tuple, object] = {}
_CREDENTIAL: Dict[bool, object] = {}


@dataclass(frozen=True)
class Workspace:
    subscription_id: str
    resource_group: str
    workspace: str
    source: str = field(default="", compare=False)  # where it was read: "" for the env's settings, else a config.json

    def __str__(self) -> str:
        return f"workspace {self.workspace} (resource group {self.resource_group})"


def find_config_file(start: Optional[Path] = None) -> Optional[Path]:
    """The workspace config.json MLClient.from_config would read from `start` (the cwd), else
    ~/.azureml/config.json; None when there is neither."""
    here = Path(start or Path.cwd()).resolve()
    for folder in CONFIG_DIRS:
        for name in CONFIG_NAMES:
            for level in [here, *here.parents][:CONFIG_LEVELS + 1]:
                candidate = level / folder / name
                if candidate.is_file():
                    return candidate
    home = Path.home() / ".azureml" / "config.json"
    return home if home.is_file() else None


def read_config_file(path: Path) -> Workspace:
    """A workspace config.json as Azure ML writes it (subscription_id, resource_group,
    workspace_name; or the workspace's ARM id as "Scope"), or one line naming what it lacks."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise MnistopsError(f"workspace config {path} cannot be read: {err}") from None
    if not isinstance(data, dict):
        raise MnistopsError(f"workspace config {path}: expected a JSON object")
    if data.get("Scope"):
        pieces = str(data["Scope"]).split("/")
        if len(pieces) < 9:
            raise MnistopsError(f"workspace config {path}: Scope is not a workspace id: {data['Scope']}")
        values = {"subscription_id": pieces[2], "resource_group": pieces[4], "workspace_name": pieces[8]}
    else:
        values = {key: data.get(key) for key in ("subscription_id", "resource_group", "workspace_name")}
    missing = [key for key, value in values.items() if not value]
    if missing:
        raise MnistopsError(f"workspace config {path} lacks {missing[0]}")
    return Workspace(str(values["subscription_id"]), str(values["resource_group"]), str(values["workspace_name"]),
                     source=str(path))


def settings(env_section: DictConfig, inside_job: bool = False, config_file: bool = False) -> Workspace:
    """One env's workspace from its `env` section, all three set, or the first missing one named.
    With `config_file` (the env the process runs for) and none of the three set: the workspace
    config.json of an Azure ML compute instance (find_config_file)."""
    values = {key: env_section.azure[key] or (os.environ.get(IN_JOB[key]) if inside_job else None) for key in SETTINGS}
    found = find_config_file() if config_file and not any(values.values()) else None
    if found is not None:
        return read_config_file(found)
    for key, variable in SETTINGS.items():
        if not values[key]:
            looked = (f", and no workspace config.json in {Path.cwd()} or its parents (.azureml/, aml_config/) "
                      f"nor in {Path.home() / '.azureml'}") if config_file and not any(values.values()) else ""
            raise MnistopsError(f"env.azure.{key} is not set for env={env_section.name}: export "
                                f"{variable.format(ENV=env_section.name.upper())} (or pass env.azure.{key}=...)"
                                f"{looked}")
    return Workspace(**{key: str(value) for key, value in values.items()})


def of_env(cfg: DictConfig, env_name: Optional[str] = None) -> Workspace:
    """This env's workspace (its settings, else a compute instance's config.json), or another env's
    (promote.source_env) from its conf/env/<env>.yaml: a config.json names one workspace, never another env's."""
    from mnistops.config import other_env

    if env_name is None or env_name == cfg.env.name:
        return settings(cfg.env, bool(cfg.azure.inside_job), config_file=True)
    return settings(other_env(cfg, env_name))


def found_workspace(cfg: DictConfig) -> Optional[Workspace]:
    """The workspace a stage of cfg's env would use, or None where no setting and no config.json
    names one (the quickstart notebook then previews its Azure cells as a dry run)."""
    if not any(cfg.env.azure[key] for key in SETTINGS) and find_config_file() is None:
        return None
    return of_env(cfg)


def error_line(err: Exception) -> str:
    """The first line that says something of an SDK error (they come coloured and framed)."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", getattr(err, "message", None) or str(err))
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith(("1)", "Details"))]
    meaningful = [line for line in lines if not re.fullmatch(r"[\W_]*", line)]
    return (meaningful[0] if meaningful else type(err).__name__)[:300]


def quiet_sdk() -> None:
    """The SDK logs a warning per HTTP call and per experimental class it builds: what the stages
    say would drown."""
    import logging

    logging.getLogger("azure").setLevel(logging.WARNING)
    logging.getLogger("azure.ai.ml._utils._experimental").setLevel(logging.ERROR)
    logging.getLogger("azure.identity").setLevel(logging.ERROR)  # the chain's failure is our error line


def credential(inside_job: bool = False):
    """DefaultAzureCredential, tried once now so a missing login fails here and not mid-stage."""
    if _SEAM is not None:
        return _SEAM[1]
    if inside_job in _CREDENTIAL:
        return _CREDENTIAL[inside_job]
    from azure.core.exceptions import ClientAuthenticationError
    from azure.identity import DefaultAzureCredential

    identity = os.environ.get("DEFAULT_IDENTITY_CLIENT_ID") if inside_job else None
    try:
        cred = DefaultAzureCredential(managed_identity_client_id=identity) if identity else DefaultAzureCredential()
        cred.get_token(MANAGEMENT_SCOPE)
    except ValueError as err:  # e.g. AZURE_CLIENT_ID set but not an application id
        raise MnistopsError(f"invalid Azure credential settings: {err}") from None
    except ClientAuthenticationError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        where = ("the compute's managed identity (give the cluster an identity with AzureML Data Scientist on the "
                 "workspace)" if inside_job else
                 "run `az login`, or set AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET, or use a managed identity "
                 "(a compute instance's: infra/ compute_instance_enabled)")
        raise MnistopsError(f"no Azure credential: DefaultAzureCredential found none ({where}): {first}") from None
    _CREDENTIAL[inside_job] = cred
    return cred


def client(ws: Workspace, inside_job: bool = False):
    """The MLClient of `ws` (one per workspace and process: the SDK's clients are reusable)."""
    key = (ws, inside_job)
    if key not in _CLIENTS:
        from azure.ai.ml import MLClient

        extra = {"transport": _SEAM[0], "enable_telemetry": False} if _SEAM is not None else {}
        _CLIENTS[key] = MLClient(credential(inside_job), ws.subscription_id, ws.resource_group, ws.workspace,
                                 show_progress=False, **extra)
    return _CLIENTS[key]


def storage_options() -> dict:
    """Keyword arguments for an Azure Storage client (azure-storage-blob): the test seam's transport,
    so blob reads go where the SDK's requests go."""
    return {"transport": _SEAM[0]} if _SEAM is not None else {}


@contextlib.contextmanager
def use_transport(transport, credential_) -> Iterator[None]:
    """Every MLClient made inside sends through `transport` (an azure.core HttpTransport) and
    authenticates with `credential_` (e.g. a static AccessToken): for tests, which record the
    requests the SDK would send and answer them with the API's JSON."""
    global _SEAM
    previous = _SEAM
    _SEAM = (transport, credential_)
    _CLIENTS.clear()
    try:
        yield
    finally:
        _SEAM = previous
        _CLIENTS.clear()


class Connection:
    """One env's workspace, connected on first use: a dry run reads no setting and never connects."""

    def __init__(self, cfg: DictConfig, env_name: Optional[str] = None):
        self.cfg = cfg
        self.env_name = env_name or cfg.env.name
        self.inside_job = bool(cfg.azure.inside_job) and self.env_name == cfg.env.name
        self._workspace: Optional[Workspace] = None

    @property
    def workspace(self) -> Workspace:
        if self._workspace is None:
            self._workspace = of_env(self.cfg, self.env_name)
        return self._workspace

    @property
    def ml(self):
        if self.cfg.azure.dry_run:
            raise RuntimeError("azure.dry_run=true: nothing may connect to Azure")  # a bug, not a user error
        return client(self.workspace, self.inside_job)

    def mlflow_tracking_uri(self) -> str:
        """The workspace's MLflow (azureml://...), as Azure ML reports it."""
        uri = self.ml.workspaces.get(self.workspace.workspace).mlflow_tracking_uri
        if not uri:
            raise MnistopsError(f"{self.workspace} reports no MLflow tracking URI")
        return uri
