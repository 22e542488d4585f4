"""What the deployments' data collector wrote for an endpoint, read back from the workspace's blob
datastore into a monitoring Window, so `stage=monitor` judges Azure traffic with the same signals as
local traffic.

Where Azure ML's data collector writes (custom logging, rolling hourly; online_specs.py):

    <workspaceblobstore>/modelDataCollector/<endpoint>/<deployment>/<collection>/YYYY/MM/DD/HH/<instance>.jsonl
    <workspaceblobstore>/modelDataCollector/<endpoint>/ground_truth/YYYY/MM/DD/HH/<instance>.jsonl

(the ground truth collection's data path is one folder per endpoint, data_assets.ground_truth_path).
Each line is one record: {"specversion", "id", "source", "type": "azureml.inference.<collection>",
"datacontenttype", "time": "2026-01-01T10:00:00Z", "data": [row, ...], "correlationid",
"xrequestid", "modelversion", "collectdatatype", "agent", "contentrange": "bytes 0-N/N+1"}; a
payload too large to inline is a blob of its own ("datainblob": "true", "data": its URL). Rows of
requests close in time may share one record, so the rows' own `correlation_id` column is the key
(data_collector_rows.py), never the record's `correlationid`.

Access: the datastore's account and container come from the workspace (a GET of the datastore, no
secrets asked for); the blobs are read with the caller's Entra ID token, as the SDK does for an
identity-based datastore. The pipeline identity needs "Storage Blob Data Reader" on that container
(infra/identity.tf). Hour folders outside the window are not listed; a window opening at 0 lists
the whole collection.
"""

from __future__ import annotations

import calendar
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import orjson

from mnistops.backends.azure import data_collector_rows as F
from mnistops.errors import MnistopsError

DATASTORE = "workspaceblobstore"  # where the collector writes by default (data_assets.COLLECTOR_ROOT)
ROOT = "modelDataCollector"
HOUR_FOLDER = re.compile(r"/(\d{4})/(\d{2})/(\d{2})/(\d{2})/[^/]+$")
CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
UNSEEN_WHY = ("not collected on Azure: the collector sees answered images only; latency and errors are the "
                   "endpoint's Azure Monitor metrics (its alert rules, infra/endpoint.tf)")
DOWNLOADS = 8  # blobs fetched at once
SLACK_S = 3600.0  # a record may land in the next hour's folder (the collector flushes late)
POLL_CACHE_BYTES = 256 * 2 ** 20  # what repeated reads of one traffic run may keep (stage=monitor polls)
_POLL_CACHE: Dict[Tuple[str, str, str], bytes] = {}  # (account/container, blob, etag) -> content


@dataclass
class Record:
    """One collector record: when, which deployment's folder, its rows."""

    time: float
    deployment: str
    rows: List[dict]


class CollectorFiles:
    """The workspace's default blob datastore, read with the caller's token (no datastore secrets)."""

    def __init__(self, container, account: str):
        self.container, self.account = container, account

    @classmethod
    def of_workspace(cls, connection) -> "CollectorFiles":
        from azure.core.exceptions import HttpResponseError
        from azure.storage.blob import ContainerClient

        from mnistops.backends.azure.workspace import credential, error_line, storage_options

        try:
            store = connection.ml.datastores.get(DATASTORE)
        except HttpResponseError as err:
            raise MnistopsError(f"datastore {DATASTORE} of {connection.workspace}: {error_line(err)}") from None
        url = f"{store.protocol}://{store.account_name}.blob.{store.endpoint}"
        container = ContainerClient(url, store.container_name, credential=credential(connection.inside_job),
                                    **storage_options())
        return cls(container, f"{store.account_name}/{store.container_name}")

    def folders(self, prefix: str) -> List[str]:
        """The names of the folders right under `prefix` (which ends with '/')."""
        return [p.name[len(prefix):].rstrip("/") for p in self._call(self.container.walk_blobs, name_starts_with=prefix,
                                                                      delimiter="/") if p.name.endswith("/")]

    def files(self, prefix: str) -> List[Tuple[str, str]]:
        """(name, etag) of every blob under `prefix`."""
        return [(b.name, b.etag) for b in self._call(self.container.list_blobs, name_starts_with=prefix)]

    def read(self, name: str, etag: str, keep: bool = False) -> bytes:
        """A blob's content; `keep`: remember it by its etag (a poll reads the same files again)."""
        key = (self.account, name, etag)
        if key in _POLL_CACHE:
            return _POLL_CACHE[key]
        content = self._call(lambda: self.container.download_blob(name).readall())
        if keep and sum(map(len, _POLL_CACHE.values())) + len(content) <= POLL_CACHE_BYTES:
            _POLL_CACHE[key] = content
        return content

    def read_url(self, url: str) -> bytes:
        """A payload the collector stored as a blob of its own (its record holds the URL)."""
        from azure.storage.blob import BlobClient

        from mnistops.backends.azure.workspace import storage_options

        blob = BlobClient.from_blob_url(url.split("?", 1)[0], credential=self.container.credential, **storage_options())
        return self._call(lambda: blob.download_blob().readall())

    def _call(self, fn, *args, **kwargs):
        from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

        try:
            result = fn(*args, **kwargs)
            return list(result) if not isinstance(result, (bytes, str)) else result
        except ClientAuthenticationError as err:
            raise MnistopsError(f"no token for the workspace storage {self.account}: {err}") from None
        except HttpResponseError as err:
            hint = (" (the identity needs 'Storage Blob Data Reader' on it: infra/identity.tf)"
                    if err.status_code == 403 else "")
            raise MnistopsError(f"reading the collected data in {self.account}: "
                                f"{str(err).strip().splitlines()[0][:300]}{hint}") from None


# ---------------------------------------------------------------------------------- layout

def hours(start: float, end: float) -> Iterator[float]:
    """The UTC hour starts that [start, end] touches."""
    t = start - start % 3600
    while t <= end:
        yield t
        t += 3600


def day_prefixes(start: float, end: float) -> List[str]:
    """'YYYY/MM/DD/' of every UTC day [start, end] touches."""
    return sorted({time.strftime("%Y/%m/%d/", time.gmtime(h)) for h in hours(start, end)})


def hour_of(name: str) -> Optional[float]:
    """The start of the hour folder a blob sits in (None: not in an hour folder)."""
    m = HOUR_FOLDER.search(name)
    if not m:
        return None
    return float(calendar.timegm(tuple(int(x) for x in m.groups()) + (0, 0, 0)))


def blobs(files: CollectorFiles, folder: str, start: float, end: float) -> List[Tuple[str, str]]:
    """(name, etag) of the collector files under `folder` (…/<collection>/) that may hold records
    of [start, end]: the hour folders from start's to end's (and the one after: late flushes)."""
    if start <= 0:
        found = files.files(folder)
    else:
        found = [b for day in day_prefixes(start, end + SLACK_S) for b in files.files(folder + day)]
    return [(name, etag) for name, etag in found if name.endswith(".jsonl")
            and (hour_of(name) is None or start - 3600 < hour_of(name) <= end + SLACK_S)]


# ---------------------------------------------------------------------------------- records

def parse_time(text: str) -> float:
    return datetime.fromisoformat(str(text).replace("Z", "+00:00")).astimezone(timezone.utc).timestamp()


def whole(content_range: Optional[str]) -> bool:
    """True unless the record says it holds part of its payload only."""
    m = CONTENT_RANGE.match(str(content_range or ""))
    if not m or m.group(3) == "*":
        return True
    first, last, total = (int(x) for x in m.groups())
    return first == 0 and last + 1 == total


def records(files: CollectorFiles, names: List[Tuple[str, str]], deployment: str, stats,
            keep: bool = False) -> List[Record]:
    """The records of these files (read DOWNLOADS at a time); a torn or partial line is counted, skipped."""
    out: List[Record] = []
    with ThreadPoolExecutor(DOWNLOADS) as pool:
        contents = list(pool.map(lambda b: files.read(*b, keep=keep), names))
    for content in contents:
        stats.files += 1
        for line in content.splitlines():
            if not line.strip():
                continue
            try:
                rec = orjson.loads(line)
                data = rec.get("data")
                if str(rec.get("datainblob", "")).lower() == "true":
                    data = orjson.loads(files.read_url(str(data)))
                if not whole(rec.get("contentrange")) or not isinstance(data, list):
                    raise ValueError("partial or not tabular")
                out.append(Record(parse_time(rec["time"]), deployment, [r for r in data if isinstance(r, dict)]))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                stats.torn += 1
                continue
            stats.lines += 1
    return out


# ---------------------------------------------------------------------------------- the window

def answered(row: dict) -> bool:
    """A model_outputs row with what a Window needs: its ids, the digit and ten probabilities."""
    try:
        return bool(row.get(F.CORRELATION)) and bool(row.get(F.REQUEST)) and 0 <= int(row[F.DIGIT]) <= 9 \
            and all(np.isfinite(float(row[p])) for p in F.PROBABILITIES)
    except (KeyError, TypeError, ValueError):
        return False


@dataclass
class _Rows:
    outputs: Dict[str, Tuple[float, str, dict]] = field(default_factory=dict)  # correlation id -> (t, dep, row)
    pixels: Dict[str, np.ndarray] = field(default_factory=dict)  # correlation id -> image
    labels: Dict[str, Tuple[float, int]] = field(default_factory=dict)  # correlation id -> (t, label)


def read_window(files: CollectorFiles, endpoint: str, start: float, end: float, stats,
                id_prefix: Optional[str] = None):
    """The requests the endpoint's deployments answered in [start, end] (request ids starting with
    `id_prefix`, when given) as a Window: images joined with their answers by `correlation_id`,
    ground truth joined the same way (feedback from `start` on, however late it came)."""
    from mnistops.monitoring.window import NO_LABEL, OUTCOMES_UNSEEN, Window, requests_frame

    base = f"{ROOT}/{endpoint}/"
    keep = id_prefix is not None
    rows = _Rows()
    for deployment in files.folders(base):
        if deployment == F.GROUND_TRUTH:
            continue
        for rec in records(files, blobs(files, f"{base}{deployment}/{F.OUTPUTS}/", start, end), deployment, stats, keep):
            if start <= rec.time <= end:
                for row in rec.rows:
                    rid = str(row.get(F.REQUEST, ""))
                    if id_prefix is not None and not rid.startswith(id_prefix):
                        continue
                    if not answered(row):
                        stats.torn += 1
                        continue
                    rows.outputs.setdefault(str(row.get(F.CORRELATION)), (rec.time, deployment, row))
        for rec in records(files, blobs(files, f"{base}{deployment}/{F.INPUTS}/", start, end), deployment, stats, keep):
            for row in rec.rows:
                cid = str(row.get(F.CORRELATION))
                if cid in rows.outputs and cid not in rows.pixels:
                    try:
                        rows.pixels[cid] = F.decode_pixels(str(row.get(F.PIXELS, "")))
                    except ValueError:
                        stats.torn += 1
    truth = blobs(files, f"{base}{F.GROUND_TRUTH}/", start, time.time()) if rows.outputs else []
    for rec in records(files, truth, "", stats, keep):
        for row in rec.rows:
            cid, label = str(row.get(F.CORRELATION)), row.get(F.LABEL)
            if cid in rows.outputs and isinstance(label, int) and 0 <= label <= 9 \
                    and rec.time >= rows.labels.get(cid, (-1.0, 0))[0]:
                rows.labels[cid] = (rec.time, label)  # a later answer for the same request wins

    # one request per request id (its time: when it was answered), one image per answered row with pixels
    requests: Dict[str, list] = {}
    for cid, (t, dep, row) in rows.outputs.items():
        rid = str(row.get(F.REQUEST, cid))
        req = requests.setdefault(rid, [t, dep, str(row.get(F.VERSION, "")), 0])
        req[0], req[3] = min(req[0], t), req[3] + 1
    images = sorted((t, str(row.get(F.REQUEST, cid)), cid) for cid, (t, _, row) in rows.outputs.items()
                    if cid in rows.pixels)
    order = sorted(requests.items(), key=lambda kv: (kv[1][0], kv[0]))
    frame = requests_frame([r[0] for _, r in order], [200] * len(order), [np.nan] * len(order),
                           deployment=np.array([r[1] for _, r in order], dtype=object),
                           version=np.array([r[2] for _, r in order], dtype=object),
                           n_images=np.array([r[3] for _, r in order], dtype=np.int64))
    if start <= 0 and len(frame):  # window "all": it starts with the first record
        start = float(frame["time"].min())
    out = [rows.outputs[cid] for _, _, cid in images]
    return Window(
        start=start, end=end,
        images=np.stack([rows.pixels[cid] for _, _, cid in images]) if images else np.zeros((0, 28, 28), np.uint8),
        digits=np.array([int(r[F.DIGIT]) for _, _, r in out], dtype=np.int64),
        probabilities=np.array([[float(r[p]) for p in F.PROBABILITIES] for _, _, r in out],
                               dtype=np.float32).reshape(len(out), 10),
        request_ids=np.array([rid for _, rid, _ in images], dtype=object),
        deployments=np.array([dep for _, dep, _ in out], dtype=object),
        versions=np.array([str(r.get(F.VERSION, "")) for _, _, r in out], dtype=object),
        labels=np.array([rows.labels.get(cid, (0, NO_LABEL))[1] for _, _, cid in images], dtype=np.int64),
        requests=frame,
        meta={OUTCOMES_UNSEEN: UNSEEN_WHY, "source": f"{files.account}/{base}"},
        ood=ood_flags([r for _, _, r in out]),
    )


def ood_flags(rows: list) -> Optional[np.ndarray]:
    """score.py's "not a digit" flag per answered row; None where any row lacks it (a model or
    score.py from before the flag), so ood/rate says "not computed" rather than a made-up 0."""
    if not rows or not all(isinstance(r.get(F.OOD), bool) for r in rows):
        return None
    return np.array([r[F.OOD] for r in rows], dtype=bool)


# ---------------------------------------------------------------------------------- canary evidence

def read_answers(files: CollectorFiles, endpoint: str, start: float, end: float, deployments, stats):
    """What each of `deployments` answered in [start, end], one row per request (its images in
    order), as quality.canary's evidence frame: the mirrored deployment's answers too, which Azure
    discards but its score.py collected. The two join by request id (the client's x-request-id,
    which the mirrored copy carries). Latency and failed requests are not collected here
    (UNSEEN_WHY): the frame says so and those checks are skipped."""
    from mnistops.quality import canary

    base = f"{ROOT}/{endpoint}/"
    by_request: Dict[Tuple[str, str], Dict[int, dict]] = {}
    for deployment in deployments:
        for rec in records(files, blobs(files, f"{base}{deployment}/{F.OUTPUTS}/", start, end), deployment, stats):
            if not start <= rec.time <= end:
                continue
            for row in rec.rows:
                if not answered(row):
                    stats.torn += 1
                    continue
                rid, cid = str(row[F.REQUEST]), str(row[F.CORRELATION])
                index = int(cid.rsplit("_", 1)[1]) if cid != rid and cid.rsplit("_", 1)[-1].isdigit() else 0
                by_request.setdefault((deployment, rid), {}).setdefault(index, (rec.time, row))
    labels: Dict[str, int] = {}
    truth = blobs(files, f"{base}{F.GROUND_TRUTH}/", start, time.time()) if by_request else []
    for rec in records(files, truth, "", stats):
        for row in rec.rows:
            if isinstance(row.get(F.LABEL), int) and 0 <= row[F.LABEL] <= 9:
                labels[str(row.get(F.CORRELATION))] = int(row[F.LABEL])
    rows = []
    for (deployment, rid), images in by_request.items():
        ordered = [images[i][1] for i in sorted(images)]
        rows.append({"id": rid, "deployment": deployment, "status": 200, "latency_ms": None,
                     "t": min(t for t, _ in images.values()),
                     "digits": [int(r[F.DIGIT]) for r in ordered],
                     "top": [max(float(r[p]) for p in F.PROBABILITIES) for r in ordered],
                     "ood": None if (flags := ood_flags(ordered)) is None else flags.tolist(),
                     "label": labels.get(rid, -1) if len(ordered) == 1 else -1})
    frame = canary.answers_frame(rows)
    frame.attrs[canary.OUTCOMES_UNSEEN] = UNSEEN_WHY
    return frame
