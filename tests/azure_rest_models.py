"""What Azure ML's control plane accepts in a PUT/POST body, read from azure-ai-ml's own generated REST
client rather than written here: tests/azure_workspace.py checks every body the flavour sends and
answers 400 with ARM's error body on anything the service's models refuse.

azure-ai-ml 1.35 ships one TypeSpec-generated client for the resource provider
(`azure.ai.ml._restclient.arm_ml_service`, models of api-version 2025-12-01) and sends every
api-version it uses (2022-05-01 ... 2025-01-01-preview) through it, so one model set serves all of
them. Those models are azure-core `model_base` models, not msrest ones: there is no `validate()`,
so this module walks their `rest_field`s — the same declarations the SDK serialises from:

- which model a request body is: the operations module's request builders give (method, URL
  template), the operation that calls each builder gives its `body: _models.X`;
- required: a field whose annotation is not Optional and that a client may send (visibility
  includes "create"/"update", or is unrestricted); a discriminator names the subclass, and an
  unknown value is refused with the known ones;
- types: str / int / float / bool, lists, string maps, nested models, enums (`Union[str, Enum]`:
  the value must be one of the enum's, case-insensitively, as CaseInsensitiveEnumMeta compares);
- read-only fields (visibility ["read"]) are what the service fills in: ARM ignores them in a PUT,
  so `strip_read_only` drops them before the fake stores the resource (a client cannot set a job's
  status or a provisioning state).
"""

from __future__ import annotations

import ast
import enum
import functools
import inspect
import re
import typing
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

CLIENT = "azure.ai.ml._restclient.arm_ml_service"
WRITE_VISIBILITY = {"create", "update"}
# Discriminator values an older api-version has and the 2025-12-01 models lack, as azure-ai-ml's own
# entities say: schedules go out as 2023-06-01-preview (ScheduleOperations' client), whose monitoring
# signals include ModelPerformance and whose rolling windows are inputDataType "Trailing" — the SDK builds
# those as plain dicts ("signals removed from arm_ml_service (ModelPerformance, GenerationSafetyQuality,
# GenerationTokenStatistics)", "inputDataType: Trailing ... (arm uses Rolling)": entities/_monitoring/
# signals.py). Such a value is accepted and its object checked as the base model only.
OLDER_DISCRIMINATORS = {
    "2023-06-01-preview": {("MonitoringSignalBase", "ModelPerformance"), ("MonitoringSignalBase", "GenerationSafetyQuality"),
                           ("MonitoringSignalBase", "GenerationTokenStatistics"), ("MonitoringInputDataBase", "Trailing")},
}
_API_VERSION: List[Optional[str]] = [None]  # the api-version of the request being checked


@dataclass(frozen=True)
class Route:
    method: str
    template: str  # the builder's URL template, e.g. /subscriptions/{subscriptionId}/.../models/{name}/versions/{version}
    model: str  # the body's model class in the client's models module
    pattern: "re.Pattern[str]"


def models_module():
    import importlib

    return importlib.import_module(f"{CLIENT}.models")


@functools.lru_cache(maxsize=1)
def routes() -> Tuple[Route, ...]:
    """Every (method, URL template) whose operation sends a model as its body."""
    import importlib

    ops = importlib.import_module(f"{CLIENT}.operations._operations")
    tree = ast.parse(inspect.getsource(ops))
    builders = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("build_"):
            url = method = None
            for sub in ast.walk(node):
                if isinstance(sub, ast.AnnAssign) and getattr(sub.target, "id", "") == "_url" and \
                        isinstance(sub.value, ast.Constant) or isinstance(sub, ast.Assign) and \
                        any(getattr(t, "id", "") == "_url" for t in sub.targets) and isinstance(sub.value, ast.Constant):
                    url = sub.value.value if url is None else url
                if isinstance(sub, ast.Call) and getattr(sub.func, "id", "") == "HttpRequest":
                    for kw in sub.keywords:
                        if kw.arg == "method" and isinstance(kw.value, ast.Constant):
                            method = kw.value.value
            if url and method:
                builders[node.name] = (method, url)
    found = {}
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        for fn in (n for n in cls.body if isinstance(n, ast.FunctionDef)):
            body_arg = next((a for a in fn.args.args + fn.args.kwonlyargs if a.arg == "body" and a.annotation), None)
            if body_arg is None:
                continue
            model = re.search(r"_models\.(\w+)", ast.unparse(body_arg.annotation))
            if not model:
                continue
            for sub in ast.walk(fn):
                if isinstance(sub, ast.Call) and getattr(sub.func, "id", "") in builders:
                    method, url = builders[sub.func.id]
                    found[(method, url)] = model[1]
    return tuple(Route(method, url, model, re.compile(re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(url)), re.I))
                 for (method, url), model in sorted(found.items()))


def route_for(method: str, path: str) -> Optional[Route]:
    """The route of a request (path without the query); the most specific template when several match."""
    matches = [r for r in routes() if r.method == method and r.pattern.fullmatch(path)]
    return max(matches, key=lambda r: len(r.template.replace("{", "").split("/"))) if matches else None


# --------------------------------------------------------------------------- a body against its model

def _fields(cls) -> dict:
    cls.__new__(cls)  # model_base computes _attr_to_rest_field on first construction
    return cls._attr_to_rest_field


@functools.lru_cache(maxsize=None)
def _hints(cls) -> dict:
    import sys

    mod = sys.modules[cls.__module__]
    hints = {}
    for klass in reversed(cls.__mro__):
        for attr, annotation in getattr(klass, "__annotations__", {}).items():
            if isinstance(annotation, str):
                try:
                    annotation = eval(annotation, vars(mod), {"_models": models_module()})  # noqa: S307 (generated code)
                except Exception:  # noqa: BLE001 - an annotation we cannot read is not checked
                    annotation = Any
            hints[attr] = annotation
    return hints


def _resolve(t):
    """A forward reference ('_models.X') as the class it names."""
    if isinstance(t, typing.ForwardRef) or type(t) is str:  # (an enum member is a str too: a value, kept)
        import sys

        mod = sys.modules[models_module().__name__ + "._models"]
        try:
            return _resolve(eval(getattr(t, "__forward_arg__", t), vars(mod), {"_models": models_module()}))  # noqa: S307
        except Exception:  # noqa: BLE001
            return Any
    return t


def _optional(annotation) -> Tuple[bool, Any]:
    if typing.get_origin(annotation) is typing.Union and type(None) in typing.get_args(annotation):
        rest = [_resolve(a) for a in typing.get_args(annotation) if a is not type(None)]
        return True, (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)])
    return False, _resolve(annotation)


def _is_model(t) -> bool:
    return inspect.isclass(t) and hasattr(t, "_attr_to_rest_field") or (
        inspect.isclass(t) and any(b.__name__ == "Model" and "model_base" in b.__module__ for b in t.__mro__))


def _writable(rf) -> bool:
    return rf._visibility is None or bool(WRITE_VISIBILITY & set(rf._visibility))


def _read_only(rf) -> bool:
    return rf._visibility is not None and not (WRITE_VISIBILITY & set(rf._visibility))


def _subclass(cls, data: dict, where: str, problems: List[str]):
    """The concrete class a discriminated body names (its discriminator field's value)."""
    seen = []
    while hasattr(cls, "__mapping__") and cls.__mapping__:
        disc = cls._get_discriminator(seen)
        if disc is None:
            break
        seen.append(disc._rest_name)
        value = data.get(disc._rest_name)
        if value is None:
            problems.append(f"{where}{disc._rest_name}: required ({cls.__name__} needs one of "
                            f"{sorted(cls.__mapping__)})")
            return None
        mapped = next((c for k, c in cls.__mapping__.items() if str(k).lower() == str(value).lower()), None)
        if mapped is None and (cls.__name__, str(value)) in OLDER_DISCRIMINATORS.get(_API_VERSION[0] or "", ()):
            return cls
        if mapped is None:
            problems.append(f"{where}{disc._rest_name}: '{value}' is not one of {sorted(cls.__mapping__)}")
            return None
        if mapped is cls:
            break
        cls = mapped
    return cls


def check(cls, data: Any, where: str = "") -> List[str]:
    """Problems of `data` as a body of model `cls`, each naming its field ('properties.jobType: ...')."""
    problems: List[str] = []
    _check_model(cls, data, where, problems)
    return problems


def _check_model(cls, data: Any, where: str, problems: List[str]) -> None:
    if not isinstance(data, dict):
        problems.append(f"{where.rstrip('.') or 'body'}: expected an object, got {type(data).__name__}")
        return
    cls = _subclass(cls, data, where, problems)
    if cls is None:
        return
    hints = _hints(cls)
    for attr, rf in _fields(cls).items():
        name = rf._rest_name
        annotation = hints.get(attr, Any)
        optional, inner = _optional(annotation)
        if name not in data or data[name] is None:
            if not optional and _writable(rf) and not rf._is_discriminator and rf._default is _unset():
                problems.append(f"{where}{name}: required ({cls.__name__})")
            continue
        if _read_only(rf):
            continue  # what the service fills in: ignored (strip_read_only)
        _check_value(inner, data[name], f"{where}{name}", problems)


def _unset():
    from azure.ai.ml._restclient.arm_ml_service._utils.model_base import _UNSET

    return _UNSET


def _check_value(t, value: Any, where: str, problems: List[str]) -> None:  # noqa: C901 - one case per type
    t = _resolve(t)
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin is not typing.Literal:
        args = tuple(_resolve(a) for a in args)
    if t is Any or t is None:
        return
    if origin is typing.Union:
        options = [a for a in args if a is not type(None)]
        enums = [a for a in options if inspect.isclass(a) and issubclass(a, enum.Enum)]
        if enums and str in options:
            known = [str(m.value) for e in enums for m in e]
            if not isinstance(value, str):
                problems.append(f"{where}: expected a string (one of {known}), got {value!r}")
            elif value.lower() not in {k.lower() for k in known}:
                problems.append(f"{where}: '{value}' is not one of {known}")
            return
        errors = []
        for option in options:
            attempt: List[str] = []
            _check_value(option, value, where, attempt)
            if not attempt:
                return
            errors.append(attempt)
        problems.extend(min(errors, key=len) if errors else [])
        return
    if origin is typing.Literal:
        allowed = [a.value if isinstance(a, enum.Enum) else a for a in args]
        if str(value).lower() not in {str(a).lower() for a in allowed}:
            problems.append(f"{where}: '{value}' is not one of {allowed}")
        return
    if origin in (list, typing.List):
        if not isinstance(value, list):
            problems.append(f"{where}: expected an array, got {type(value).__name__}")
            return
        for i, item in enumerate(value):
            _check_value(args[0] if args else Any, item, f"{where}[{i}]", problems)
        return
    if origin in (dict, typing.Dict):
        if not isinstance(value, dict):
            problems.append(f"{where}: expected an object, got {type(value).__name__}")
            return
        for key, item in value.items():
            if len(args) > 1 and _resolve(args[1]) is str and isinstance(item, (int, float, bool)):
                continue  # a string map takes a JSON number: azure-ai-ml sends codes' hash_version as one on every upload
            _check_value(args[1] if len(args) > 1 else Any, item, f"{where}.{key}", problems)
        return
    if inspect.isclass(t) and issubclass(t, enum.Enum):
        known = [str(m.value) for m in t]
        if str(value).lower() not in {k.lower() for k in known}:
            problems.append(f"{where}: '{value}' is not one of {known}")
        return
    if _is_model(t):
        _check_model(t, value, where + ".", problems)
        return
    expected = {str: (str,), bool: (bool,), int: (int,), float: (int, float)}.get(t)
    if t is bytes or t is dict or t is list:
        return
    if expected is None:  # datetime, timedelta, ...: strings on the wire
        if getattr(t, "__module__", "") == "datetime" and not isinstance(value, str):
            problems.append(f"{where}: expected a date/time string, got {value!r}")
        return
    if not isinstance(value, expected) or (t is not bool and isinstance(value, bool)):
        problems.append(f"{where}: expected {t.__name__}, got {value!r}")


def strip_read_only(cls, data: Any) -> Any:
    """`data` without the fields the service sets (ARM ignores them in a PUT), recursively."""
    if not isinstance(data, dict):
        return data
    problems: List[str] = []
    cls = _subclass(cls, data, "", problems) or cls
    hints = _hints(cls)
    out = dict(data)
    for attr, rf in _fields(cls).items():
        name = rf._rest_name
        if name not in out:
            continue
        if _read_only(rf) and not rf._is_discriminator:
            out.pop(name)
            continue
        _, inner = _optional(hints.get(attr, Any))
        if _is_model(inner):
            out[name] = strip_read_only(inner, out[name])
    return out


def model_class(name: str):
    return getattr(models_module(), name)


def validate_request(method: str, path: str, body: Any, api_version: Optional[str] = None
                     ) -> Tuple[Optional[Route], List[str]]:
    """(route, problems) of one request; (None, []) where no operation sends a body there."""
    route = route_for(method, path)
    if route is None:
        return None, []
    _API_VERSION[0] = api_version
    try:
        return route, check(model_class(route.model), body)
    finally:
        _API_VERSION[0] = None
