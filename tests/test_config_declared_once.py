"""Configuration declared once: every default lives in the schema (mnistops/config.py and the
flavours' config modules), and a YAML file under conf/ sets only what its option changes.

A value restated in both places drifts (trainer.max_epochs was 6 in the YAML and 10 in the
dataclass); these tests fail on the first restatement, naming the file and the key."""

from __future__ import annotations

from typing import Any, Dict, Iterator, Tuple

from omegaconf import OmegaConf

from conftest import CONF

# override sets, not defaults: a recipe pins its values so that it does not move when a default does
NOT_DEFAULTS = ("experiment", "hparams_search", "hydra")


def schema_defaults() -> Dict[str, Any]:
    """The registered root schema with every section filled by its dataclass's defaults (unresolved)."""
    from hydra.core.config_store import ConfigStore

    import mnistops.config  # noqa: F401  (registers the schema)

    root = ConfigStore.instance().load("config_schema.yaml").node
    out = {}
    for key in root:
        node = root._get_node(key)
        kind = node._metadata.ref_type  # the section's dataclass (also where the section is MISSING)
        if OmegaConf.is_missing(root, key) and isinstance(kind, type) and kind is not dict:
            out[key] = OmegaConf.to_container(OmegaConf.structured(kind), resolve=False)
        else:
            out[key] = OmegaConf.to_container(node, resolve=False) if OmegaConf.is_config(node) else node._value()
    return out


def yaml_files() -> Iterator[Tuple[str, str]]:
    """(path relative to conf/, the package its values land in: '' for the root)."""
    yield "config.yaml", ""
    for path in sorted(CONF.glob("*/*.yaml")):
        group = path.parent.name
        if group in NOT_DEFAULTS:
            continue
        text = path.read_text()
        yield str(path.relative_to(CONF)), "" if "# @package _global_" in text else group


def leaves(value: Any, prefix: str) -> Iterator[Tuple[str, Any]]:
    if isinstance(value, dict):
        for key, sub in value.items():
            if key != "defaults":
                yield from leaves(sub, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, value


def lookup(tree: Dict[str, Any], dotted: str) -> Tuple[bool, Any]:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def test_no_yaml_value_restates_a_schema_default():
    defaults = schema_defaults()
    restated = []
    for name, package in yaml_files():
        raw = OmegaConf.to_container(OmegaConf.load(CONF / name), resolve=False) or {}
        for key, value in leaves(raw, package):
            found, default = lookup(defaults, key)
            if found and default != "???" and same(value, default):
                restated.append(f"conf/{name}: {key}: {value!r} (the schema's default)")
    assert not restated, "restated defaults (delete them from the YAML):\n" + "\n".join(restated)


def test_default_options_set_nothing_the_schema_defaults():
    """A group's `default.yaml` and the root config.yaml only select the schema: a key they set that
    the schema also defaults is one default written twice (even when the values differ)."""
    defaults = schema_defaults()
    twice = []
    for name, package in yaml_files():
        if name != "config.yaml" and not name.endswith("/default.yaml"):
            continue
        raw = OmegaConf.to_container(OmegaConf.load(CONF / name), resolve=False) or {}
        for key, value in leaves(raw, package):
            found, default = lookup(defaults, key)
            if found and default != "???":
                twice.append(f"conf/{name}: {key}: {value!r} (schema: {default!r})")
    assert not twice, "defaults written twice (keep the schema's, delete the YAML's):\n" + "\n".join(twice)


def test_the_walk_finds_the_schema_defaults():
    """The rule's own check works: the schema's values are found by the walk above."""
    defaults = schema_defaults()
    assert lookup(defaults, "trainer.max_epochs")[0] and lookup(defaults, "endpoint.collect.sampling_rate")[0]
    assert lookup(defaults, "model.lr") == (True, defaults["model"]["lr"])
    assert not lookup(defaults, "model.net._target_")[0]
