"""The one rule of a traffic split, wherever a split is written down: the deploy and canary stages
(``endpoint.traffic`` / ``endpoint.mirror_traffic``), the admin route ``PUT /admin/traffic`` and its
OpenAPI model (``schemas.TrafficRequest``). Same verdict, same words; only the key's name differs
(``endpoint.traffic`` in the config, ``traffic`` in the JSON body).

- ``traffic``: {deployment: integer percent 0..100} summing to 100;
- ``mirror_traffic``: {deployment: integer percent 0..100} summing to at most 100, only to
  deployments with 0 % live traffic (a mirror's answer is discarded: it must not be a live one too).

Whether the named deployments exist is the caller's to check (it knows the endpoint's state).
Plain Python, no framework: serving and stages both import it.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional


class SplitError(ValueError):
    """A traffic map that breaks the rule: ``str()`` is the one-line message, ``field`` the key at fault."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


def percentages(values: Any, key: str) -> Dict[str, int]:
    """``values`` as {deployment: percent}, each percent an integer 0..100 (booleans are not)."""
    if not isinstance(values, Mapping):
        raise SplitError(f"'{key}' must be an object {{deployment: percent}}, got {values!r}", key)
    for name, pct in values.items():
        if not isinstance(pct, int) or isinstance(pct, bool) or not 0 <= pct <= 100:
            raise SplitError(f"'{key}.{name}' must be an integer 0..100, got {pct!r}", key)
    return {str(name): int(pct) for name, pct in values.items()}


def live(values: Any, key: str = "traffic") -> Dict[str, int]:
    """The live split: percentages that sum to 100."""
    traffic = percentages(values, key)
    total = sum(traffic.values())
    if total != 100:
        raise SplitError(f"'{key}' must sum to 100, got {total}", key)
    return traffic


def mirror(values: Any, traffic: Mapping[str, int], key: str = "mirror_traffic") -> Dict[str, int]:
    """The mirror split beside the live ``traffic``: percentages summing to at most 100, none to a
    deployment that takes live traffic (one at 0 % may be named)."""
    shadow = percentages(values, key)
    for name, pct in shadow.items():
        if pct > 0 and traffic.get(name, 0) > 0:
            raise SplitError(f"'{key}': {name!r} also has live traffic; mirror only to a deployment with 0% live "
                             "traffic", key)
    total = sum(shadow.values())
    if total > 100:
        raise SplitError(f"'{key}' must sum to at most 100, got {total}", key)
    return shadow


def split(traffic: Any, mirror_traffic: Optional[Any] = None, prefix: str = ""):
    """Both maps at once -> (live split, mirror split or None when not given); ``prefix`` names
    where they sit (``"endpoint."`` in the config)."""
    live_split = live(traffic, f"{prefix}traffic")
    if mirror_traffic is None:
        return live_split, None
    return live_split, mirror(mirror_traffic, live_split, f"{prefix}mirror_traffic")
