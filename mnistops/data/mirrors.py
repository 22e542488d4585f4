"""Fetch the raw files from the first mirror that serves them intact, verify them, cache them.

A file enters the cache only after its decompressed bytes match the canonical size and MD5, and
only by an atomic rename: a download killed halfway leaves a `.part` file that no run trusts.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Dict, List

from omegaconf import DictConfig
from tqdm import tqdm

from mnistops.errors import MnistopsError

log = logging.getLogger(__name__)

FILE_KEYS = ("train_images", "train_labels", "test_images", "test_labels")
MIRROR_ENV = "MNISTOPS_DATA_MIRROR"
CHUNK = 1 << 20


class MirrorError(Exception):
    """This mirror failed for this file; the next mirror may do better."""


class Transient(MirrorError):
    """Worth retrying on the same mirror (timeouts, resets, 5xx)."""


def mirrors(data: DictConfig) -> List[str]:
    urls = list(data.mirrors)
    if os.environ.get(MIRROR_ENV):
        urls.insert(0, os.environ[MIRROR_ENV])
    if not urls:
        raise MnistopsError("data.mirrors is empty and MNISTOPS_DATA_MIRROR is not set: nowhere to download from")
    return [u if u.endswith("/") else u + "/" for u in urls]


def cache_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.home) / "data" / cfg.data.name


def md5_of(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def is_valid(path: Path, spec: DictConfig) -> bool:
    if not path.is_file() or path.stat().st_size != spec.size:
        return False
    return spec.md5 is None or md5_of(path) == spec.md5


def _download(url: str, dest: Path, timeout: float) -> str:
    """Stream `url` to `dest` with a progress bar; return the MD5 of the bytes received."""
    h = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(dest, "wb") as out:
            total = resp.headers.get("Content-Length")
            with tqdm(total=int(total) if total else None, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=Path(url).name, disable=None, leave=False) as bar:
                while block := resp.read(CHUNK):
                    out.write(block)
                    h.update(block)
                    bar.update(len(block))
    except urllib.error.HTTPError as err:
        raise (Transient if err.code >= 500 else MirrorError)(f"HTTP {err.code} {err.reason}") from err
    except urllib.error.URLError as err:
        reason = err.reason
        if isinstance(reason, FileNotFoundError):
            raise MirrorError("no such file") from err
        raise Transient(f"unreachable ({reason})") from err
    except (TimeoutError, ConnectionError, OSError) as err:
        raise Transient(f"{type(err).__name__}: {err}") from err
    return h.hexdigest()


def _decompress(gz: Path, dest: Path) -> str:
    h = hashlib.md5()
    try:
        with gzip.open(gz, "rb") as src, open(dest, "wb") as out:
            while block := src.read(CHUNK):
                out.write(block)
                h.update(block)
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise MirrorError(f"truncated or corrupt gzip ({err})") from err
    return h.hexdigest()


def _remove_stale_parts(cache: Path) -> None:
    """Drop the scratch dirs of downloads whose process died (killed mid-download)."""
    import shutil

    for part in cache.glob(".*.part"):
        try:
            pid = int(part.name.split(".")[-2])
            os.kill(pid, 0)  # still running: leave it alone
        except (ValueError, IndexError, ProcessLookupError):
            if part.is_dir():
                shutil.rmtree(part, ignore_errors=True)
            else:
                part.unlink(missing_ok=True)
        except PermissionError:
            pass


def _fetch_from(url: str, spec: DictConfig, final: Path, timeout: float) -> None:
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=f".{spec.name}.", suffix=f".{os.getpid()}.part") as tmp:
        gz, raw = Path(tmp) / "download.gz", Path(tmp) / spec.name
        gz_md5 = _download(url, gz, timeout)
        if spec.gz_md5 and gz_md5 != spec.gz_md5:
            raise MirrorError(f"checksum mismatch: .gz md5 {gz_md5} != expected {spec.gz_md5}")
        raw_md5 = _decompress(gz, raw)
        size = raw.stat().st_size
        if size != spec.size:
            raise MirrorError(f"wrong size: {size} bytes decompressed, expected {spec.size} (truncated or not this file)")
        if spec.md5 and raw_md5 != spec.md5:
            raise MirrorError(f"checksum mismatch: md5 {raw_md5} != expected {spec.md5}")
        os.replace(raw, final)


def ensure_file(spec: DictConfig, cache: Path, urls: List[str], timeout: float, retries: int) -> Path:
    """The verified file in the cache, downloading it if it is missing or fails verification."""
    final = cache / spec.name
    if is_valid(final, spec):
        return final
    if final.exists():
        log.warning("cached %s fails verification; fetching it again", final)
    problems = []
    for base in urls:
        url = f"{base}{spec.name}.gz"
        for attempt in range(retries + 1):
            try:
                _fetch_from(url, spec, final, timeout)
                log.info("fetched %s from %s", spec.name, base)
                return final
            except Transient as err:
                if attempt == retries:
                    problems.append(f"{url}: {err}")
                else:
                    time.sleep(0.5 * 2**attempt)
            except MirrorError as err:
                problems.append(f"{url}: {err}")
                break
    raise MnistopsError(f"could not get a verified {spec.name} from any mirror: " + "; ".join(problems))


def fetch(cfg: DictConfig) -> Dict[str, Path]:
    """All four files of `cfg.data`, verified, from the cache or the mirrors."""
    cache = cache_dir(cfg)
    cache.mkdir(parents=True, exist_ok=True)
    _remove_stale_parts(cache)
    urls = mirrors(cfg.data)
    paths = {key: ensure_file(cfg.data[key], cache, urls, cfg.data.timeout_s, cfg.data.retries) for key in FILE_KEYS}
    _write_manifest(cfg, cache)
    return paths


def digest(cfg: DictConfig) -> str:
    """The dataset's identity: a hash of its files' names, sizes and checksums."""
    h = hashlib.sha256(cfg.data.name.encode())
    for key in FILE_KEYS:
        spec = cfg.data[key]
        h.update(f"|{spec.name}:{spec.size}:{spec.md5 or spec.gz_md5}".encode())
    return h.hexdigest()[:16]


def _write_manifest(cfg: DictConfig, cache: Path) -> None:
    manifest = {"dataset": cfg.data.name, "digest": digest(cfg),
                "files": {cfg.data[k].name: {"size": cfg.data[k].size, "md5": cfg.data[k].md5} for k in FILE_KEYS}}
    tmp = cache / f".manifest.json.{os.getpid()}.part"  # per process: DDP ranks write it at the same time
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, cache / "manifest.json")
