"""The env's Azure ML workspace: its settings (env.azure.*), a DefaultAzureCredential and an MLClient.
Each missing piece fails before any call, in one line that names the key or the credential chain."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig

from mnistops.errors import MnistopsError

SETTINGS = {  # key -> the environment variable conf/env/<env>.yaml reads it from ({ENV}: the env name)
    "subscription_id": "AZURE_SUBSCRIPTION_ID",
    "resource_group": "AZUREML_{ENV}_RESOURCE_GROUP",
    "workspace": "AZUREML_{ENV}_WORKSPACE",
}
MANAGEMENT_SCOPE = "https://management.azure.com/.default"


@dataclass(frozen=True)
class Workspace:
    subscription_id: str
    resource_group: str
    workspace: str


def settings(cfg: DictConfig) -> Workspace:
    """env.azure.* of this env, all three set, or the first missing one named."""
    values = {}
    for key, variable in SETTINGS.items():
        value = cfg.env.azure[key]
        if not value:
            raise MnistopsError(f"env.azure.{key} is not set for env={cfg.env.name}: export "
                                f"{variable.format(ENV=cfg.env.name.upper())} (or pass env.azure.{key}=...)")
        values[key] = str(value)
    return Workspace(**values)


def credential():
    """DefaultAzureCredential, tried once now so a missing login fails here and not mid-stage."""
    import logging

    from azure.core.exceptions import ClientAuthenticationError
    from azure.identity import DefaultAzureCredential

    logging.getLogger("azure").setLevel(logging.WARNING)  # one line per HTTP call drowns what stages say
    logging.getLogger("azure.identity").setLevel(logging.ERROR)  # the chain's failure is our error line
    try:
        cred = DefaultAzureCredential()
        cred.get_token(MANAGEMENT_SCOPE)
    except ValueError as err:  # e.g. AZURE_CLIENT_ID set but not an application id
        raise MnistopsError(f"invalid Azure credential settings: {err}") from None
    except ClientAuthenticationError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MnistopsError("no Azure credential: DefaultAzureCredential found none (run `az login`, or set "
                            "AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET, or use a managed identity): "
                            f"{first}") from None
    return cred


def client(cfg: DictConfig, ws: Workspace | None = None):
    """An MLClient on the env's workspace (or on `ws`)."""
    from azure.ai.ml import MLClient

    ws = ws or settings(cfg)
    return MLClient(credential(), ws.subscription_id, ws.resource_group, ws.workspace)


def settings_of(cfg: DictConfig, env_name: str) -> Workspace:
    """Another env's workspace (e.g. promote.source_env=qa from env=prod), from its conf/env/<env>.yaml."""
    from importlib import resources
    from pathlib import Path

    from omegaconf import OmegaConf

    from mnistops.config import config_path

    root = config_path()
    path = resources.files("mnistops.conf") / "env" / f"{env_name}.yaml" if root.startswith("pkg://") \
        else Path(root) / "env" / f"{env_name}.yaml"
    if not path.is_file():
        raise MnistopsError(f"env {env_name!r} has no config file ({path})")
    other = OmegaConf.merge(OmegaConf.structured({"env": cfg.env}), {"env": OmegaConf.load(str(path))})
    return settings(other)
