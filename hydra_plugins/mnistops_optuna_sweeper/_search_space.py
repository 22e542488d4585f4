"""Hydra sweep overrides (``interval``, ``tag(log, interval)``, ``range``, ``choice``) as Optuna
distributions. Imports optuna, so it is loaded only when a sweep runs; the leading underscore keeps
Hydra's plugin scan (which imports every other module of hydra_plugins) away from it."""

from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution


def to_distribution(override: Override) -> Any:
    """One parsed override -> an Optuna distribution, or its value string if it is no sweep."""
    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    value = override.value()
    if isinstance(value, IntervalSweep):
        assert value.start is not None and value.end is not None
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log_scale)
        return FloatDistribution(value.start, value.end, log=log_scale)
    if isinstance(value, RangeSweep):
        start, stop, step = value.start, value.stop, value.step
        if not value.shuffle and all(type(v) is int for v in (start, stop, step)) and step > 0:
            # range() excludes stop; IntDistribution includes high.
            return IntDistribution(start, start + (stop - 1 - start) // step * step, step=step)
    if isinstance(value, (ChoiceSweep, RangeSweep)):
        choices = list(override.sweep_iterator(transformer=Transformer.encode))
        if not choices or not all(isinstance(c, (str, int, float, bool)) for c in choices):
            raise ValueError(f"choices must be non-empty str/int/float/bool, got {choices}")
        return CategoricalDistribution(choices)
    raise ValueError(f"{type(value).__name__} sweeps are not supported")


def parse_search_space(lines: Sequence[str]) -> Tuple[Dict[str, BaseDistribution], Dict[str, str]]:
    """Override strings -> (search space, fixed overrides); for a repeated key the last wins."""
    parser = OverridesParser.create()
    space: Dict[str, Any] = {}
    for line in lines:
        try:
            (override,) = parser.parse_overrides([line])
            space[override.get_key_element()] = to_distribution(override)
        except Exception as e:
            raise ValueError(f"Optuna sweeper: bad search-space entry {line!r} (from "
                             f"hydra.sweeper.params or the command line): {e}") from e
    dists = {k: v for k, v in space.items() if isinstance(v, BaseDistribution)}
    return dists, {k: v for k, v in space.items() if k not in dists}
