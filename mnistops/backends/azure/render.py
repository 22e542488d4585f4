"""azure.dry_run=true: each SDK entity a stage would create, written as the YAML that
`az ml <thing> create -f` accepts, into the run's output dir. No network, no credentials.

The YAML is the entity's own serialisation (``_to_dict()``: the SDK's marshmallow schema), so what
is previewed is exactly what the SDK would send, and ``load_*`` reads it back."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, List

from omegaconf import DictConfig

# entity class -> (az ml command group, JSON schema name) for the header line and `$schema`
KINDS = {
    "Environment": ("environment", "environment"),
    "Data": ("data", "data"),
    "Model": ("model", "model"),
    "CommandJob": ("job", "commandJob"),
    "SweepJob": ("job", "sweepJob"),
    "ManagedOnlineEndpoint": ("online-endpoint", "managedOnlineEndpoint"),
    "ManagedOnlineDeployment": ("online-deployment", "managedOnlineDeployment"),
    "MonitorSchedule": ("schedule", "schedule"),
    "BatchEndpoint": ("batch-endpoint", "batchEndpoint"),
    "BatchDeployment": ("batch-deployment", "batchDeployment"),
}


def out_dir(cfg: DictConfig) -> Path:
    """<the run's output dir>/azure: the Hydra run dir on the CLI (no MLflow store is touched)."""
    from mnistops import tracking

    path = tracking.output_dir(cfg, cfg.stage.name) / "azure"
    path.mkdir(parents=True, exist_ok=True)
    return path


def to_yaml(entity: Any) -> str:
    import yaml

    if type(entity).__name__ == "Command":  # a command() node: its job is what `az ml job create` takes
        entity = entity._to_job()
    group, schema = KINDS[type(entity).__name__]
    body = json.loads(json.dumps(entity._to_dict(), default=str))  # OrderedDicts and enums -> plain YAML
    body = {"$schema": f"https://azuremlschemas.azureedge.net/latest/{schema}.schema.json", **body}
    return yaml.safe_dump(body, sort_keys=False, default_flow_style=False)


def emit(cfg: DictConfig, entities: List[Any]) -> List[Path]:
    """Write each entity to <out>/<group>-<name>.yaml and print the `az ml` line that creates it."""
    out = out_dir(cfg)
    written = []
    for entity in entities:
        group = "job" if type(entity).__name__ == "Command" else KINDS[type(entity).__name__][0]
        name = getattr(entity, "name", None) or cfg.stage.name  # a job is named by Azure on submission
        path = out / f"{group}-{re.sub(r'[^A-Za-z0-9_.-]+', '-', name)}.yaml"
        path.write_text(to_yaml(entity))
        written.append(path)
        print(f"  az ml {group} create -f {path}")
    print(f"dry run (azure.dry_run=true): {len(written)} Azure ML entities written to {out}; nothing was sent")
    return written
