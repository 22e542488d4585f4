"""The env's Azure ML workspace: which one (settings), who we are (credential) and the MLClient.

Settings come from `env.azure.*` (conf/env/<env>.yaml reads them from environment variables). Inside
an Azure ML job (`azure.inside_job=true`, appended by the job runner) they fall back to the
variables Azure ML sets in every job (AZUREML_ARM_SUBSCRIPTION, _RESOURCEGROUP, _WORKSPACE_NAME),
and the credential is the compute's managed identity (DefaultAzureCredential's
ManagedIdentityCredential; DEFAULT_IDENTITY_CLIENT_ID picks a user-assigned one): the job acts on its
own workspace's registry as the cluster's identity, which needs "AzureML Data Scientist" there.
Each missing piece fails before any call, in one line naming the key or the credential chain.

One credential per process serves every env it touches (promotion reads QA's workspace from PROD's
agent): QA and PROD live in one Microsoft Entra tenant, in one subscription or two. PROD's identity
reads QA through a role assignment in QA (infra/identity.tf), which a user-assigned managed identity
can only get in its own tenant.

Tests route every SDK request (and the blob reads of collected_data.py) through their own HTTP
transport and a static token with `use_transport(transport, credential)`: the one seam between this
flavour and the network.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
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
STORAGE_SCOPE = "https://storage.azure.com/.default"  # collected_data.py reads the collector's blobs
# Every scope this flavour asks a credential for. The GitHub workflows ask the CLI for each one right
# after azure/login, while its federated sign-in is fresh (a later first request fails: AADSTS700024).
TOKEN_SCOPES = (MANAGEMENT_SCOPE, STORAGE_SCOPE)

# the test seam: (transport, credential) every new MLClient uses; None: the network and DefaultAzureCredential
_SEAM: Optional[Tuple[object, object]] = None
_CLIENTS: Dict[tuple, object] = {}
_CREDENTIAL: Dict[bool, object] = {}


@dataclass(frozen=True)
class Workspace:
    subscription_id: str
    resource_group: str
    workspace: str

    def __str__(self) -> str:
        return f"workspace {self.workspace} (resource group {self.resource_group})"


def settings(env_section: DictConfig, inside_job: bool = False) -> Workspace:
    """One env's workspace from its `env` section, all three set, or the first missing one named."""
    values = {}
    for key, variable in SETTINGS.items():
        value = env_section.azure[key] or (os.environ.get(IN_JOB[key]) if inside_job else None)
        if not value:
            raise MnistopsError(f"env.azure.{key} is not set for env={env_section.name}: export "
                                f"{variable.format(ENV=env_section.name.upper())} (or pass env.azure.{key}=...)")
        values[key] = str(value)
    return Workspace(**values)


def of_env(cfg: DictConfig, env_name: Optional[str] = None) -> Workspace:
    """This env's workspace, or another env's (promote.source_env) from its conf/env/<env>.yaml."""
    from mnistops.config import other_env

    if env_name is None or env_name == cfg.env.name:
        return settings(cfg.env, bool(cfg.azure.inside_job))
    return settings(other_env(cfg, env_name))


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
                 "run `az login`, or set AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET, or use a managed identity")
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
