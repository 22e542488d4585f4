"""Each flavour owns its config (as a ZenML flavour owns its config_class): the Azure-only fields live
in mnistops/backends/azure/config.py, are joined to the sections users type (azure.*, env.azure.*,
endpoint.instance_type, compute.cluster, ...) and a third flavour adds its own without editing
mnistops/config.py. Composing never loads an Azure SDK."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field, fields
from typing import Optional

import pytest
from omegaconf import OmegaConf

from conftest import REPO, compose

AZURE_ONLY = {
    "endpoint": {"instance_type", "instance_count", "max_concurrent_requests_per_instance", "max_queue_wait_ms",
                 "liveness_probe", "readiness_probe"},
    "compute": {"cluster", "instance_count", "process_count_per_instance"},
    "env": {"azure"},
    "": {"azure"},
}


def test_the_shared_schema_holds_no_azure_field():
    from mnistops import config

    shared = {"endpoint": config.EndpointConfig, "compute": config.ComputeConfig, "env": config.EnvConfig,
              "": config.Config}
    for section, names in AZURE_ONLY.items():
        assert not names & {f.name for f in fields(shared[section])}, section
    source = (REPO / "mnistops" / "config.py").read_text()
    for word in ("Standard_DS3_v2", "class Azure", "ProbeConfig", "subscription_id", "1800"):
        assert word not in source, f"{word} is the azure flavour's (mnistops/backends/azure/config.py)"


def test_the_keys_users_type_are_unchanged(tmp_path):
    cfg = compose(["env=qa", "env.backend=azure", "compute=azure_gpu_cluster", "endpoint.instance_count=3",
                   "endpoint.readiness_probe.failure_threshold=5", "azure.dry_run=true",
                   "env.azure.workspace=ws"], tmp_path)
    assert cfg.endpoint.kind == "azure_managed"  # env.backend=azure alone selects the managed endpoint
    assert cfg.endpoint.startup_timeout_s == 1800.0  # the managed kind's default, from the flavour
    assert (cfg.endpoint.instance_count, cfg.endpoint.readiness_probe.failure_threshold) == (3, 5)
    assert cfg.endpoint.liveness_probe.failure_threshold == 30 and cfg.endpoint.instance_type == "Standard_DS3_v2"
    assert (cfg.compute.cluster, cfg.compute.num_nodes) == ("gpu-cluster", 2)
    assert cfg.azure.dry_run is True and cfg.env.azure.workspace == "ws"
    local = compose(["env=qa"], tmp_path)
    assert local.endpoint.kind == "local" and local.endpoint.startup_timeout_s == 90.0


def test_a_misspelt_flavour_key_is_refused_naming_it(tmp_path):
    from mnistops.api import ConfigError, compose as api_compose

    with pytest.raises(ConfigError, match=r"instance_typo"):
        api_compose(["endpoint.instance_typo=x", f"paths.home={tmp_path}"])
    with pytest.raises(ConfigError, match=r"azure\.dry_run"):
        api_compose(["azure.dry_run=maybe", f"paths.home={tmp_path}"])


@dataclass
class VertexFields:  # a third flavour's endpoint knobs
    machine_type: str = "n1-standard-4"


@dataclass
class GcpProject:
    project: Optional[str] = None


@dataclass
class GcpRoot:
    gcp: GcpProject = field(default_factory=GcpProject)


def test_a_third_flavour_joins_its_fields_without_editing_config_py():
    from mnistops.config import FlavourConfig, build_schema, flavour_configs

    third = FlavourConfig(name="gcp", endpoint_kind="vertex", sections={"endpoint": VertexFields, "": GcpRoot})
    schema = build_schema(flavour_configs() + [third])
    root = OmegaConf.structured(schema[""])
    assert root.gcp.project is None and "azure" in root  # both flavours' sections
    endpoint = OmegaConf.structured(schema["endpoint"])
    assert endpoint.machine_type == "n1-standard-4" and endpoint.instance_type == "Standard_DS3_v2"
    assert endpoint.max_batch == 64  # the shared fields stay
    with pytest.raises(TypeError, match="nonsense"):
        build_schema([FlavourConfig(name="x", sections={"nonsense": VertexFields})])


def test_flavour_configs_are_found_by_place():
    from mnistops.config import flavour_configs

    found = {f.name: f for f in flavour_configs()}
    assert set(found) == {p.parent.name for p in (REPO / "mnistops" / "backends").glob("*/config.py")} >= {"azure"}
    assert found["azure"].endpoint_kind == "azure_managed"


def test_composing_loads_no_azure_sdk():
    code = ("import sys, mnistops.config, mnistops.api as a; a.compose(['env.backend=azure']); "
            "print(sorted(m for m in sys.modules if m.startswith(('azure.', 'azureml'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
