"""Model references and the one rule that resolves them, on every flavour.

    models:/<name>/<N>       version N
    models:/<name>/latest    the highest version number
    models:/<name>@<alias>   the version the alias points to (candidate: the last registered,
                             champion: the last the gate approved, or any alias a stage set)

A flavour lists a name's versions and aliases (MLflow aliases locally; on Azure ML, whose registry
has none, tags the flavour keeps); this module decides. Nothing here imports an SDK, nor base.py
(which imports this module): a version is anything with a `version` (base.ModelVersion, here).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Optional, Protocol, Sequence, TypeVar

from mnistops.errors import MnistopsError


class Versioned(Protocol):
    version: str


V = TypeVar("V", bound=Versioned)

MODEL_URI = re.compile(r"^models:/(?P<name>[A-Za-z0-9][\w.-]*)(?:@(?P<alias>[A-Za-z][\w-]*)|/(?P<version>\d+|latest))$")
FORMS = "models:/<name>/<version>, models:/<name>/latest or models:/<name>@<alias>"


@dataclass(frozen=True)
class Reference:
    name: str
    version: Optional[str] = None  # a number, or "latest"
    alias: Optional[str] = None

    def __str__(self) -> str:
        return f"models:/{self.name}@{self.alias}" if self.alias else f"models:/{self.name}/{self.version}"


def parse(reference: str, key: str = "model") -> Reference:
    """The parts of a reference, or one line naming the config key and the forms accepted."""
    match = MODEL_URI.match(str(reference or "").strip())
    if not match:
        raise MnistopsError(f"{key}={reference!r} is not a model reference: use {FORMS}")
    return Reference(match["name"], match["version"], match["alias"])


def resolve(ref: Reference, versions: Sequence[V], aliases: Mapping[str, str], where: str) -> V:
    """The version `ref` names among `versions` (all versions of ref.name) and `aliases`."""
    if not versions:
        raise MnistopsError(f"model {ref.name!r} has no registered version in {where}")
    by_number = {str(v.version): v for v in versions}
    if ref.alias:
        number = aliases.get(ref.alias)
        if number is None:
            raise MnistopsError(f"no version of {ref.name} has alias @{ref.alias} in {where}"
                                + (f" (aliases there: {', '.join('@' + a for a in sorted(aliases))})" if aliases else ""))
        chosen = by_number.get(str(number))
        if chosen is None:
            raise MnistopsError(f"@{ref.alias} of {ref.name} points to version {number}, which is not in {where}")
        return chosen
    if ref.version == "latest":
        return max(versions, key=lambda v: int(v.version))
    chosen = by_number.get(str(ref.version))
    if chosen is None:
        raise MnistopsError(f"model {ref} not found in {where} (versions: "
                            f"{', '.join(sorted(by_number, key=int)[-10:])})")
    return chosen
