"""What stage=batch reads, decoded exactly as the online endpoint decodes the same images.

    a folder    every picture under it (PNG, JPEG, GIF, BMP, WebP, TIFF; sub-folders too, sorted by
                path), each framed the MNIST way as a /predict upload is (serving/images.py);
                id: its path relative to the folder
    .npz        the array `images` (or the file's only array): 28x28 images or 784-long rows;
                id: the row number
    .parquet    784 numeric pixel columns, or one column of images (784-long lists, 28x28 nested
                lists, or encoded picture bytes, framed as uploads); an `id` column is the id, else
                the row number

Pixel arrays follow the protocol's one rule (protocol.to_batch: integers 0-255, floats 0-1 unless
above 1) applied to the whole input at once, as /score applies it to one request. A bad input is
an InputError naming the file; nothing is scored before the whole input has been read. The digest
(sha256 of the bytes read) names the input in the batch run and lets a later run tell the same input.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np

from mnistops.serving.protocol import InputError, to_batch

KEY = "batch.input"
PICTURES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")
ARRAYS = (".npz", ".parquet")
FORMS = "a folder of pictures, an .npz or a .parquet file"


@dataclass
class BatchInput:
    ids: List[str]  # one per image: a picture's relative path, or a row's id / number
    images: np.ndarray  # float32 (N, 1, 28, 28) in [0, 1]: what the endpoint hands its model
    digest: str  # sha256 of the bytes read (a folder: of its files' names and digests)
    kind: str  # folder | npz | parquet

    def __len__(self) -> int:
        return len(self.ids)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read(source: str, threads: int = 0) -> BatchInput:
    """`batch.input` -> ids, images and digest; InputError (naming the key and the file) otherwise."""
    if not source:
        raise InputError(f"{KEY} is not set: give {FORMS}", KEY)
    path = Path(str(source)).expanduser()
    if path.is_dir():
        return read_folder(path, threads)
    if not path.exists():
        raise InputError(f"{KEY}={source}: no such file or folder", KEY)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        ids, x = read_npz(path)
        return BatchInput(ids, x, sha256_file(path), "npz")
    if suffix == ".parquet":
        ids, x = read_parquet(path, threads)
        return BatchInput(ids, x, sha256_file(path), "parquet")
    raise InputError(f"{KEY}={source}: {path.suffix or 'a file without suffix'} is not {FORMS}", KEY)


def digest(source: str) -> str:
    """The input's digest without decoding it (what a remote job is handed): a file's sha256; a
    folder's over its pictures and array files, by the rule read() applies to a folder of pictures."""
    path = Path(str(source)).expanduser()
    if not path.is_dir():
        return sha256_file(path)
    listing = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in PICTURES + ARRAYS
                       and not any(part.startswith(".") for part in p.relative_to(path).parts)):
        listing.update(f"{file.relative_to(path).as_posix()}\0{sha256_file(file)}\n".encode())
    return listing.hexdigest()


# --------------------------------------------------------------------------- pictures

def pictures_under(folder: Path) -> List[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in PICTURES
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def picture(data: bytes, name: str) -> np.ndarray:
    """Encoded picture bytes -> uint8 (28, 28), framed as the endpoint frames an upload."""
    from mnistops.serving.images import normalise

    try:
        return normalise(data)
    except InputError as err:
        raise InputError(f"{KEY}: {name}: {err.message}", KEY) from None


def pictures(blobs: Sequence[bytes], names: Sequence[str], threads: int = 0) -> np.ndarray:
    """Many encoded pictures -> uint8 (N, 28, 28), decoded on `threads` threads (0: every core)."""
    workers = threads or os.cpu_count() or 1
    if len(blobs) < 64 or workers == 1:
        return np.stack([picture(b, n) for b, n in zip(blobs, names)])
    with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        return np.stack(list(pool.map(picture, blobs, names, chunksize=64)))


def read_folder(folder: Path, threads: int = 0) -> BatchInput:
    files = pictures_under(folder)
    if not files:
        raise InputError(f"{KEY}={folder}: the folder holds no pictures ({', '.join(PICTURES)})", KEY)
    names = [p.relative_to(folder).as_posix() for p in files]
    blobs, listing = [], hashlib.sha256()
    for path, name in zip(files, names):
        try:
            data = path.read_bytes()
        except OSError as err:
            raise InputError(f"{KEY}: {name}: unreadable ({err.strerror or err})", KEY) from None
        blobs.append(data)
        listing.update(f"{name}\0{hashlib.sha256(data).hexdigest()}\n".encode())
    images = pictures(blobs, names, threads)
    return BatchInput(names, to_batch(images, KEY), listing.hexdigest(), "folder")


def read_files(paths: Sequence[str], threads: int = 0) -> Tuple[List[str], np.ndarray]:
    """A list of files of any kind above (Azure's batch deployment hands one per mini-batch) -> ids
    (a picture's name; `<file>#<row>` for an array file's rows) and images, in the order given."""
    ids: List[str] = []
    parts: List[np.ndarray] = []
    names, blobs = [], []
    for raw in paths:
        path = Path(raw)
        suffix = path.suffix.lower()
        if suffix in PICTURES:
            names.append(path.name)
            blobs.append(path.read_bytes())
            continue
        if suffix == ".npz":
            rows, x = read_npz(path)
        elif suffix == ".parquet":
            rows, x = read_parquet(path, threads)
        else:
            raise InputError(f"{KEY}: {path.name}: not a picture, .npz or .parquet file", KEY)
        ids += [f"{path.name}#{r}" for r in rows]
        parts.append(x)
    if blobs:
        ids = names + ids
        parts.insert(0, to_batch(pictures(blobs, names, threads), KEY))
    if not parts:
        raise InputError(f"{KEY}: no files to score", KEY)
    return ids, np.concatenate(parts)


# --------------------------------------------------------------------------- arrays

def read_npz(path: Path) -> Tuple[List[str], np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = list(npz.files)
            if "images" in names:
                raw = npz["images"]
            elif len(names) == 1:
                raw = npz[names[0]]
            else:
                raise InputError(f"{KEY}={path}: an .npz needs an array named 'images' (it holds "
                                 f"{', '.join(names) or 'no arrays'})", KEY)
    except InputError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:  # not a zip, truncated, pickled objects
        raise InputError(f"{KEY}={path}: not a readable .npz ({str(err)[:200]})", KEY) from None
    x = to_batch(raw, KEY)
    return [str(i) for i in range(len(x))], x


def _flat_lists(column) -> np.ndarray:
    """A list (or list-of-lists) column -> (N, values per cell), every cell the same size."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(column)
    values = column
    while pa.types.is_list(values.type) or pa.types.is_large_list(values.type) \
            or pa.types.is_fixed_size_list(values.type):
        if values.null_count:
            raise InputError(f"{KEY}: the image column has empty (null) cells", KEY)
        values = pc.list_flatten(values)
    flat = values.to_numpy(zero_copy_only=False)
    if n == 0 or flat.size % n:
        raise InputError(f"{KEY}: every image cell must hold the same number of pixels", KEY)
    rows = flat.reshape(n, -1)
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    if lengths.min() != lengths.max():
        raise InputError(f"{KEY}: every image cell must hold the same number of pixels", KEY)
    return rows


def read_parquet(path: Path, threads: int = 0) -> Tuple[List[str], np.ndarray]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as err:
        raise InputError(f"{KEY}={path}: not a readable .parquet file ({str(err).splitlines()[0][:200]})", KEY) from None
    if table.num_rows == 0:
        raise InputError(f"{KEY}={path}: the table has no rows", KEY)
    names = table.column_names
    ids = [str(v) for v in table.column("id").to_pylist()] if "id" in names else \
        [str(i) for i in range(table.num_rows)]
    columns = [c for c in names if c != "id"]
    if len(columns) == 1:
        column = table.column(columns[0]).combine_chunks()
        kind = column.type
        if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
            blobs = column.to_pylist()
            if any(b is None for b in blobs):
                raise InputError(f"{KEY}: column {columns[0]!r} has empty (null) cells", KEY)
            return ids, to_batch(pictures(blobs, [f"row {i} ({ids[i]})" for i in range(len(blobs))], threads), KEY)
        if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
            return ids, to_batch(_flat_lists(column), KEY)
        raise InputError(f"{KEY}={path}: column {columns[0]!r} ({kind}) is not images (lists of pixels or "
                         "encoded pictures)", KEY)
    if len(columns) != 28 * 28:
        raise InputError(f"{KEY}={path}: expected 784 pixel columns or one image column (besides 'id'), got "
                         f"{len(columns)} columns", KEY)
    bad = [c for c in columns if not (pa.types.is_integer(table.schema.field(c).type)
                                      or pa.types.is_floating(table.schema.field(c).type))]
    if bad:
        raise InputError(f"{KEY}={path}: pixel column {bad[0]!r} is not numeric", KEY)
    pixels = np.column_stack([table.column(c).to_numpy() for c in columns])
    return ids, to_batch(pixels, KEY)

