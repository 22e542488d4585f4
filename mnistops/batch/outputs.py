"""What stage=batch writes: one row per image, in the format the output's suffix names.

    .parquet   id, digit, probabilities (list of 10 float32) [, ood_score, ood]; the model and the
               input's digest in the file's metadata (mnistops.model, mnistops.input_digest)
    .jsonl     one JSON object a line with the same fields: the endpoint's prediction objects plus `id`
    .csv       id, digit, p0 .. p9 [, ood_score, ood] (CSV has no lists)

The file appears whole or not at all (atomic.atomic_path: a temp file renamed into place).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from mnistops.atomic import atomic_path
from mnistops.serving.protocol import InputError

KEY = "batch.output"
FORMATS = (".parquet", ".csv", ".jsonl")


def check(output: Optional[str], source: Optional[str] = None) -> Path:
    """The output path, checked before anything is scored: a known suffix, not a folder, not the input."""
    if not output:
        raise InputError(f"{KEY} is not set: give a path ending in {', '.join(FORMATS)}", KEY)
    path = Path(str(output)).expanduser().absolute()
    if path.is_dir():
        raise InputError(f"{KEY}={output} is a folder: give a file path ending in {', '.join(FORMATS)}", KEY)
    if path.suffix.lower() not in FORMATS:
        raise InputError(f"{KEY}={output}: the suffix picks the format, one of {', '.join(FORMATS)}", KEY)
    if source and path.resolve() == Path(str(source)).expanduser().resolve():
        raise InputError(f"{KEY}={output} is batch.input: the scores would overwrite the images", KEY)
    return path


def table(ids: List[str], scores, flat: bool = False):
    """The rows as a pyarrow Table (`flat`: p0..p9 columns instead of a list column)."""
    import pyarrow as pa

    probs = np.ascontiguousarray(scores.probabilities, dtype=np.float32)
    columns: Dict[str, object] = {"id": pa.array(ids, pa.string()),
                                  "digit": pa.array(probs.argmax(axis=1).astype(np.int64))}
    if flat:
        for k in range(probs.shape[1]):
            columns[f"p{k}"] = pa.array(probs[:, k])
    else:
        columns["probabilities"] = pa.FixedSizeListArray.from_arrays(pa.array(probs.ravel()), probs.shape[1])
    if scores.ood_score is not None:
        columns["ood_score"] = pa.array(np.asarray(scores.ood_score, np.float32))
    if scores.ood is not None:
        columns["ood"] = pa.array(np.asarray(scores.ood, bool))
    return pa.table(columns)


def write(path: Path, ids: List[str], scores, metadata: Optional[Dict[str, str]] = None) -> Path:
    path = Path(path)
    suffix = path.suffix.lower()
    with atomic_path(path) as tmp:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            t = table(ids, scores)
            t = t.replace_schema_metadata({**(t.schema.metadata or {}), **(metadata or {})})
            pq.write_table(t, tmp)
        elif suffix == ".csv":
            import pyarrow.csv as pcsv

            pcsv.write_csv(table(ids, scores, flat=True), tmp)
        elif suffix == ".jsonl":
            _write_jsonl(tmp, ids, scores)
        else:  # check() refuses these before scoring
            raise InputError(f"{KEY}={path}: the suffix picks the format, one of {', '.join(FORMATS)}", KEY)
    return path


def _write_jsonl(tmp: Path, ids: List[str], scores) -> None:
    import orjson

    probs = np.asarray(scores.probabilities, np.float32)
    digits = probs.argmax(axis=1).tolist()
    extra = []
    if scores.ood_score is not None:
        extra.append(("ood_score", np.asarray(scores.ood_score, np.float32).tolist()))
    if scores.ood is not None:
        extra.append(("ood", np.asarray(scores.ood, bool).tolist()))
    opts = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE
    with open(tmp, "wb") as f:
        for i, rid in enumerate(ids):
            row = {"id": rid, "digit": digits[i], "probabilities": probs[i]}
            for name, values in extra:
                row[name] = values[i]
            f.write(orjson.dumps(row, option=opts))
