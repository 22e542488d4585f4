"""Model references in a workspace registry, and the model asset that promotion creates.

The workspace registry holds the versions that `stage=register` logged through MLflow inside a job
(MLflow model assets with the lineage tags). Aliases resolve from what the stages record on the
versions themselves: `@candidate`/`latest` is the newest version, `@champion` the newest version
whose gate decision tag says approved (the gate only approves a version not worse than the champion
it replaces)."""

from __future__ import annotations

from typing import Dict, List

from mnistops.errors import MnistopsError

APPROVED = ("mnistops.gate.decision", "approved")


def pick(versions: List, name: str, alias: str, where: str):
    """The version `alias` names among `versions` (SDK Model entities of one name)."""
    ordered = sorted(versions, key=lambda m: int(m.version), reverse=True)
    if alias in ("candidate", "latest"):
        chosen = ordered[:1]
    elif alias == "champion":
        chosen = [m for m in ordered if (m.tags or {}).get(APPROVED[0]) == APPROVED[1]][:1]
    else:
        raise MnistopsError(f"@{alias}: on Azure a model reference is models:/{name}/<version>, @candidate, "
                            "@champion or /latest")
    if not chosen:
        raise MnistopsError(f"models:/{name}@{alias} matches no version in {where}")
    return chosen[0]


def resolve(ml_client, reference: str, where: str):
    """models:/name/3, models:/name/latest, models:/name@candidate|@champion -> the SDK Model."""
    from azure.core.exceptions import ResourceNotFoundError

    from mnistops.backends.local.registry import MODEL_URI

    match = MODEL_URI.match(reference or "")
    if not match:
        raise MnistopsError(f"{reference!r} is not models:/<name>@<alias>, models:/<name>/<version> or "
                            "models:/<name>/latest")
    name = match["name"]
    try:
        if match["version"] and match["version"] != "latest":
            return ml_client.models.get(name, version=match["version"])
        versions = list(ml_client.models.list(name=name))
    except ResourceNotFoundError:
        raise MnistopsError(f"model {reference} not found in {where}") from None
    return pick(versions, name, match["alias"] or "latest", where)


def promoted(name: str, path: str, lineage: Dict[str, str], description: str):
    """The PROD copy: an MLflow model asset from the downloaded QA files, with its lineage tags."""
    from azure.ai.ml.entities import Model

    return Model(name=name, path=path, type="mlflow_model", tags=lineage, description=description[:4900])
