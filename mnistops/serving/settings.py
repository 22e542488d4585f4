"""The endpoint directory written by the deploy stage: ``server.json`` and ``key``.

``<endpoint_dir>/server.json``  {"name", "env", "host", "port", "auth", "max_body_bytes",
                                 "request_timeout_ms", "max_batch", "max_wait_ms", "max_queue",
                                 "collect", "collect_sampling_rate", "collect_rotate_mb", ...}
``<endpoint_dir>/key``          the API key, one line, mode 0600 (read once at startup, never logged)
``<endpoint_dir>/state.json``   owned by the server (see ``deployments.py``)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional


class ConfigError(Exception):
    """A broken endpoint directory: the server refuses to start with one clear line."""


@dataclass(frozen=True)
class ServerConfig:
    name: str = "mnist"
    env: str = "dev"
    host: str = "127.0.0.1"
    port: int = 5080
    auth: bool = True
    max_body_bytes: int = 2_000_000
    request_timeout_ms: float = 2000.0
    max_batch: int = 64
    max_wait_ms: float = 2.0
    max_queue: int = 2048
    # the data collector (see collector.py); its files go to <home>/<env>/monitoring/<name>/
    collect: bool = True
    collect_sampling_rate: float = 1.0
    collect_rotate_mb: float = 64.0
    collect_rotate_minutes: float = 60.0
    collect_flush_ms: float = 200.0
    collect_max_pending: int = 50000

    @classmethod
    def from_dict(cls, raw: dict, source: str = "server.json") -> "ServerConfig":
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: expected a JSON object")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}")
        values = {}
        for key, value in raw.items():
            default = known[key].default
            if isinstance(default, bool):
                ok = isinstance(value, bool)
            elif isinstance(default, int):
                ok = isinstance(value, int) and not isinstance(value, bool)
            elif isinstance(default, float):
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
                value = float(value) if ok else value
            else:
                ok = isinstance(value, str) and value != ""
            if not ok:
                raise ConfigError(f"{source}: '{key}' must be a {type(default).__name__}, got {value!r}")
            values[key] = value
        cfg = cls(**values)
        for key in ("max_body_bytes", "request_timeout_ms", "max_batch", "max_queue", "collect_rotate_mb",
                    "collect_rotate_minutes", "collect_flush_ms", "collect_max_pending"):
            if getattr(cfg, key) <= 0:
                raise ConfigError(f"{source}: '{key}' must be > 0")
        if cfg.max_wait_ms < 0 or not 0 <= cfg.port <= 65535:
            raise ConfigError(f"{source}: 'max_wait_ms' must be >= 0 and 'port' in 0..65535")
        if not 0.0 <= cfg.collect_sampling_rate <= 1.0:
            raise ConfigError(f"{source}: 'collect_sampling_rate' must be in 0..1")
        return cfg


def load_config(endpoint_dir: Path) -> ServerConfig:
    path = Path(endpoint_dir) / "server.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no server.json in endpoint dir {endpoint_dir}") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable ({exc})") from None
    return ServerConfig.from_dict(raw, str(path))


def load_key(endpoint_dir: Path, required: bool) -> Optional[str]:
    path = Path(endpoint_dir) / "key"
    try:
        key = path.read_text().strip()
    except FileNotFoundError:
        key = ""
    except OSError as exc:
        raise ConfigError(f"{path}: unreadable ({exc.strerror})") from None
    if required and not key:
        raise ConfigError(f"auth is on but {path} is missing or empty")
    if key and os.name == "posix" and path.stat().st_mode & 0o077:
        import logging

        logging.getLogger("mnistops.serving").warning("%s is readable by group/others; chmod 600 it", path)
    return key or None
