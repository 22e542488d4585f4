"""Fetch the raw files from the first mirror that serves them intact, verify them, cache them.

A file is verified by its content: the decompressed bytes' size and digest (`md5` and/or `sha256`
in the data config). So a mirror may serve `<name>.gz` compressed any way it likes, or `<name>`
uncompressed; the publisher's `.gz` digest (`gz_md5`) is accepted when a dataset has no content
digest, never required. A file enters the cache only after verification and only by an atomic
rename: a download killed halfway leaves a `.part` file that no run trusts.
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
from typing import Dict, List, Optional

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


class Missing(MirrorError):
    """The mirror has no such file (404, no file at a file:// path): try the other form."""


CONTENT_DIGESTS = ("md5", "sha256")  # of the decompressed bytes
GZIP_MAGIC = b"\x1f\x8b"


def mirrors(data: DictConfig) -> List[str]:
    urls = list(data.mirrors)
    if os.environ.get(MIRROR_ENV):
        urls.insert(0, os.environ[MIRROR_ENV])
    if not urls:
        raise MnistopsError("data.mirrors is empty and MNISTOPS_DATA_MIRROR is not set: nowhere to download from")
    return [u if u.endswith("/") else u + "/" for u in urls]


def cache_dir(cfg: DictConfig) -> Path:
    """The dataset's verified cache (mnistops.layout owns where)."""
    from mnistops import layout

    return layout.data_cache(cfg)


def expected_digests(spec: DictConfig) -> Dict[str, str]:
    """{algorithm: hex digest} of the decompressed bytes that `spec` gives."""
    return {alg: str(spec[alg]).lower() for alg in CONTENT_DIGESTS if spec.get(alg)}


def check_spec(key: str, spec: DictConfig) -> None:
    if not expected_digests(spec) and not spec.get("gz_md5"):
        raise MnistopsError(f"data.{key} ({spec.name}) has no md5, sha256 or gz_md5: nothing to verify a download against")


def digests_of(path: Path, algorithms=CONTENT_DIGESTS) -> Dict[str, str]:
    hashes = {alg: hashlib.new(alg) for alg in algorithms}
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            for h in hashes.values():
                h.update(block)
    return {alg: h.hexdigest() for alg, h in hashes.items()}


def md5_of(path: Path) -> str:
    return digests_of(path, ("md5",))["md5"]


def content_problem(size: int, digests: Dict[str, str], spec: DictConfig) -> Optional[str]:
    """Why decompressed bytes of this size and these digests are not `spec`'s file (None: they are)."""
    if size != spec.size:
        return f"wrong size: {size} bytes decompressed, expected {spec.size} (truncated or not this file)"
    for alg, want in expected_digests(spec).items():
        if digests[alg] != want:
            return f"checksum mismatch: {alg} {digests[alg]} != expected {want}"
    return None


def is_valid(path: Path, spec: DictConfig) -> bool:
    """A cached file: the right size and content digests (gz_md5-only datasets: the size)."""
    if not path.is_file() or path.stat().st_size != spec.size:
        return False
    wanted = expected_digests(spec)
    return not wanted or content_problem(spec.size, digests_of(path, tuple(wanted)), spec) is None


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
        kind = Transient if err.code >= 500 else Missing if err.code in (404, 410) else MirrorError
        raise kind(f"HTTP {err.code} {err.reason}") from err
    except urllib.error.URLError as err:
        reason = err.reason
        if isinstance(reason, (FileNotFoundError, IsADirectoryError)):
            raise Missing("no such file") from err
        raise Transient(f"unreachable ({reason})") from err
    except (TimeoutError, ConnectionError, OSError) as err:
        raise Transient(f"{type(err).__name__}: {err}") from err
    return h.hexdigest()


def _decompress(gz: Path, dest: Path) -> Dict[str, str]:
    """Gunzip `gz` into `dest`; return the content digests of the decompressed bytes."""
    hashes = {alg: hashlib.new(alg) for alg in CONTENT_DIGESTS}
    try:
        with gzip.open(gz, "rb") as src, open(dest, "wb") as out:
            while block := src.read(CHUNK):
                out.write(block)
                for h in hashes.values():
                    h.update(block)
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise MirrorError(f"truncated or corrupt gzip ({err})") from err
    return {alg: h.hexdigest() for alg, h in hashes.items()}


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


def _verify(size: int, digests: Dict[str, str], spec: DictConfig, gz_md5: Optional[str]) -> Optional[str]:
    """Why these decompressed bytes are refused (None: accepted); gz_md5: of the .gz, if one came."""
    if expected_digests(spec):
        return content_problem(size, digests, spec)
    if gz_md5 is None:
        return "the data config gives no md5/sha256 of the decompressed bytes (only gz_md5) to verify an uncompressed file"
    return content_problem(size, digests, spec) or (
        None if gz_md5 == spec.gz_md5 else f"checksum mismatch: .gz md5 {gz_md5} != expected {spec.gz_md5}")


def _fetch_from(base: str, spec: DictConfig, final: Path, timeout: float) -> str:
    """Get `spec`'s file from one mirror, `<name>.gz` or else `<name>`, verified; return the form."""
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=f".{spec.name}.", suffix=f".{os.getpid()}.part") as tmp:
        got, raw = Path(tmp) / "download", Path(tmp) / spec.name
        try:
            gz_md5 = _download(f"{base}{spec.name}.gz", got, timeout)
        except Missing:  # no .gz on this mirror: the uncompressed file, maybe
            _download(f"{base}{spec.name}", raw, timeout)
            problem = _verify(raw.stat().st_size, digests_of(raw), spec, None)
            form = "uncompressed"
        else:
            with open(got, "rb") as f:
                is_gzip = f.read(2) == GZIP_MAGIC
            if is_gzip:
                digests = _decompress(got, raw)
                problem = _verify(raw.stat().st_size, digests, spec, gz_md5)
                form = "gzip"
            else:  # served as .gz but not gzip: the decompressed file itself, or a broken answer
                os.replace(got, raw)
                problem = _verify(raw.stat().st_size, digests_of(raw), spec, None)
                if problem:
                    problem = f"not a gzip file, nor the verified decompressed file ({problem})"
                form = "uncompressed, named .gz"
        if problem:
            raise MirrorError(problem)
        os.replace(raw, final)
        return form


def ensure_file(spec: DictConfig, cache: Path, urls: List[str], timeout: float, retries: int) -> Path:
    """The verified file in the cache, downloading it if it is missing or fails verification."""
    final = cache / spec.name
    if is_valid(final, spec):
        return final
    if final.exists():
        log.warning("cached %s fails verification; fetching it again", final)
    problems = []
    for base in urls:
        for attempt in range(retries + 1):
            try:
                form = _fetch_from(base, spec, final, timeout)
                log.info("fetched %s from %s (%s)", spec.name, base, form)
                return final
            except Transient as err:
                if attempt == retries:
                    problems.append(f"{base}{spec.name}[.gz]: {err}")
                else:
                    time.sleep(0.5 * 2**attempt)
            except MirrorError as err:
                problems.append(f"{base}{spec.name}[.gz]: {err}")
                break
    raise MnistopsError(f"could not get a verified {spec.name} from any mirror: " + "; ".join(problems))


def fetch(cfg: DictConfig) -> Dict[str, Path]:
    """All four files of `cfg.data`, verified, from the cache or the mirrors."""
    for key in FILE_KEYS:
        check_spec(key, cfg.data[key])
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
        h.update(f"|{spec.name}:{spec.size}:{spec.md5 or spec.get('sha256') or spec.gz_md5}".encode())
    return h.hexdigest()[:16]


def _write_manifest(cfg: DictConfig, cache: Path) -> None:
    manifest = {"dataset": cfg.data.name, "digest": digest(cfg),
                "files": {cfg.data[k].name: {"size": cfg.data[k].size, **expected_digests(cfg.data[k])} for k in FILE_KEYS}}
    tmp = cache / f".manifest.json.{os.getpid()}.part"  # per process: DDP ranks write it at the same time
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, cache / "manifest.json")
