"""Names of the Azure entities that must be unique beyond the workspace.

An online endpoint's name is part of its DNS name, so it must be unique in the Azure region:
`mnist-qa` is taken by the first user to pick it. The default name gets a short, stable suffix by
the rule infra/main.tf gives its globally unique names (sha1 of "<subscription>/<env>", 6 hex
characters), so the endpoint Terraform creates and the one the stages look for are the same
without configuration; `azure.endpoint_name` overrides it (Terraform's `endpoint_name` output).
"""

from __future__ import annotations

import hashlib
import re

from omegaconf import DictConfig

from mnistops.errors import MnistopsError

ENDPOINT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{1,30}[A-Za-z0-9]$")  # Azure ML: 3-32 characters


def suffix(subscription_id: str, env: str) -> str:
    return hashlib.sha1(f"{subscription_id}/{env}".encode()).hexdigest()[:6]


def endpoint_name(cfg: DictConfig, subscription_id: str | None) -> str:
    """`azure.endpoint_name`, else <endpoint.name>-<env>-<suffix>; without a subscription (a dry
    run with no workspace set) <endpoint.name>-<env>, which the caller says is a preview."""
    name = cfg.azure.endpoint_name
    key = "azure.endpoint_name"
    if not name:
        key = "endpoint.name"
        name = f"{cfg.endpoint.name}-{cfg.env.name}"
        if subscription_id:
            name = f"{name}-{suffix(subscription_id, cfg.env.name)}"
    if not ENDPOINT_NAME.match(name):
        raise MnistopsError(f"{key}: the Azure endpoint name {name!r} must be 3-32 letters, digits or '-', start "
                            "with a letter and not end with '-'")
    return name


def ground_truth_asset(cfg: DictConfig, endpoint: str) -> str:
    """The data asset holding the endpoint's feedback (true labels by correlation id)."""
    return cfg.azure.monitoring.ground_truth or f"{endpoint}-ground-truth"
