"""The endpoint directory: the server's settings (``server.json``), its keys and its run files.

One validated model, ``ServerSettings``, is written by ``mnistops/backends/local/server.py`` (from the
composed ``endpoint.*`` config, whose dataclass holds every default) and read by the server; its
fields carry no defaults of their own and are named like the config keys, so nothing translates.

    <endpoint_dir>/server.json     ServerSettings (JSON)
    <endpoint_dir>/primary.key     scoring key (clients), mode 0600
    <endpoint_dir>/secondary.key   second scoring key: rotate one while clients move to the other
    <endpoint_dir>/admin.key       the admin routes' key (deploy, traffic, rollback, state)
    <endpoint_dir>/state.json      deployments + traffic, owned by the server (see ``live_state``)
    <endpoint_dir>/server.pid      the supervisor's pid (``supervisor.py``)
    <endpoint_dir>/run/            runtime files of the running server (workers, metrics, status)
"""

from __future__ import annotations

import hmac
import logging
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError

log = logging.getLogger("mnistops.serving")

SETTINGS_FILE = "server.json"
KEY_FILES = {"primary": "primary.key", "secondary": "secondary.key", "admin": "admin.key"}
SCORING_KEYS = ("primary", "secondary")
RUN_DIR = "run"


class ConfigError(Exception):
    """A broken endpoint directory: the server refuses to start with one clear line."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class CollectSettings(_Strict):
    """The data collector (``request_log.py``); ``endpoint.collect.*``."""

    enabled: bool
    sampling_rate: float = Field(ge=0.0, le=1.0)
    rotate_mb: float = Field(gt=0)
    rotate_minutes: float = Field(gt=0)
    flush_ms: float = Field(gt=0)
    max_pending: int = Field(gt=0)


class ServerSettings(_Strict):
    """What the server reads from server.json: the ``endpoint.*`` knobs it uses, plus its name and env."""

    name: str = Field(min_length=1)
    env: str = Field(min_length=1)
    host: str = Field(min_length=1)
    port: int = Field(ge=0, le=65535)
    workers: int = Field(ge=1, le=256)
    auth: bool
    max_body_bytes: int = Field(gt=0)
    request_timeout_ms: float = Field(gt=0)
    max_batch: int = Field(gt=0)
    max_wait_ms: float = Field(ge=0)
    max_queue: int = Field(gt=0)
    collect: CollectSettings

    @classmethod
    def from_endpoint(cls, endpoint: Mapping[str, Any], name: str, env: str) -> "ServerSettings":
        """From the composed ``endpoint`` config: the fields this model declares, by the same names."""
        collect = endpoint["collect"]
        values: Dict[str, Any] = {k: endpoint[k] for k in cls.model_fields if k not in ("name", "env", "collect")}
        values["collect"] = {k: collect[k] for k in CollectSettings.model_fields}
        try:
            return cls.model_validate({**values, "name": name, "env": env}, strict=False)
        except ValidationError as exc:
            raise ConfigError(_first_error(exc, "endpoint")) from None

    @classmethod
    def check_composed(cls, cfg: Mapping[str, Any]) -> "ServerSettings":
        """The composed config's endpoint, validated as the server would read it: called when the
        config is composed (mnistops/composition_check.py), so `endpoint.max_batch=0` fails before
        any stage starts, naming the key, and again where a server is written (the same rule)."""
        return cls.from_endpoint(cfg["endpoint"], str(cfg["endpoint"]["name"]), str(cfg["env"]["name"]))

    def write(self, endpoint_dir: Path) -> Path:
        """Atomically (temp file + rename): a server never reads half a file."""
        endpoint_dir = Path(endpoint_dir)
        endpoint_dir.mkdir(parents=True, exist_ok=True)
        path = endpoint_dir / SETTINGS_FILE
        tmp = path.with_name(f".{SETTINGS_FILE}.{os.getpid()}")
        tmp.write_text(self.model_dump_json(indent=2) + "\n")
        os.replace(tmp, path)
        return path


def _first_error(exc: ValidationError, prefix: str) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ()))
    return f"{prefix}.{where}: {err.get('msg', 'invalid')} (got {err.get('input')!r})"


def load_settings(endpoint_dir: Path) -> ServerSettings:
    path = Path(endpoint_dir) / SETTINGS_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"no {SETTINGS_FILE} in endpoint dir {endpoint_dir}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: unreadable ({exc.strerror})") from None
    try:
        return ServerSettings.model_validate_json(text, strict=False)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_first_error(exc, 'server')}") from None


# --------------------------------------------------------------------------- keys

def key_path(endpoint_dir: Path, which: str) -> Path:
    if which not in KEY_FILES:
        raise ValueError(f"no key named {which!r}: one of {', '.join(KEY_FILES)}")
    return Path(endpoint_dir) / KEY_FILES[which]


def read_key(endpoint_dir: Path, which: str) -> Optional[str]:
    path = key_path(endpoint_dir, which)
    try:
        key = path.read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"{path}: unreadable ({exc.strerror})") from None
    if key and os.name == "posix" and path.stat().st_mode & 0o077:
        log.warning("%s is readable by group/others; chmod 600 it", path)
    return key or None


class KeyRing:
    """The keys one kind of route accepts (``scoring``: primary + secondary; ``admin``: admin).

    Compared in constant time. A key that does not match makes the ring look at its files again
    (a stat each): a key rotated on disk is accepted by every worker from its first request, and
    the other key keeps working throughout, so rotation needs no restart and no downtime."""

    def __init__(self, endpoint_dir: Path, names: Tuple[str, ...], required: bool = True):
        self.dir = Path(endpoint_dir)
        self.names = names
        self.required = required
        self._keys: Tuple[bytes, ...] = ()
        self._stamp: Tuple = ()
        self.reload()
        if required and not self._keys:
            files = " or ".join(str(key_path(self.dir, n)) for n in names)
            raise ConfigError(f"no key: {files} is missing or empty")

    def _stat(self) -> Tuple:
        out = []
        for name in self.names:
            try:
                st = key_path(self.dir, name).stat()
                out.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                out.append(None)
        return tuple(out)

    def reload(self) -> bool:
        """Read the key files again if they changed; True when they did."""
        stamp = self._stat()
        if stamp == self._stamp:
            return False
        keys = [read_key(self.dir, n) for n in self.names]
        self._keys = tuple(k.encode() for k in keys if k)
        self._stamp = stamp
        return True

    def _match(self, token: bytes) -> bool:
        ok = False
        for key in self._keys:  # no early exit: the time does not tell which key matched
            ok |= hmac.compare_digest(token, key)
        return ok

    def allows(self, header: Optional[bytes]) -> bool:
        """``header``: the raw ``Authorization`` value (``Bearer <key>``), or None."""
        if not header:
            return False
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        token = token.strip()
        if not token:
            return False
        if self._match(token):
            return True
        return self.reload() and self._match(token)

    def first(self) -> str:
        """The first key on the ring (the admin key, for the workers' control messages)."""
        return self._keys[0].decode() if self._keys else ""

    def __repr__(self) -> str:  # never show a key
        return f"KeyRing({', '.join(self.names)})"
