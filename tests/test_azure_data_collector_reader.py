"""What stage=monitor reads on Azure: the files the deployments' data collector wrote in the
workspace's default blob datastore, in the layout and record format Azure ML documents, read through
the flavour (`backend.monitoring.read_window`) into a Window. The blob service and the workspace
answer from tests/azure_workspace.py at the SDK's HTTP transport; the SDK, azure-storage-blob and
the reader run for real. The rows are the columns score.py collects, spelt out here."""

from __future__ import annotations

import base64
import calendar
import json

import numpy as np
import pytest

from conftest import needs_module  # a missing extra fails in CI, skips elsewhere
needs_module("azure.ai.ml", "pip install -e '.[azure]'")
needs_module("azure.storage.blob", "pip install -e '.[azure]'")

from azure_workspace import FakeWorkspace, StaticToken, collector_record, write_collector_files  # noqa: E402
from conftest import compose  # noqa: E402

ENDPOINT = "mnist-prod-abc123"
T0 = float(calendar.timegm((2026, 3, 1, 10, 0, 0)))  # 10:00 UTC
FEATURES = {"mean_intensity": 0.1, "ink_coverage": 0.2, "bbox_top": 4.0, "bbox_left": 5.0, "bbox_height": 20.0,
            "bbox_width": 14.0, "centroid_row": 14.0, "centroid_col": 13.0, "stroke_width": 2.0,
            "max_intensity": 1.0, "min_intensity": 0.0}


def request_rows(rid: str, images: np.ndarray, digits, version: str):
    """(model_inputs rows, model_outputs rows) of one request, as score.py writes them."""
    n = len(images)
    ids = [rid] if n == 1 else [f"{rid}_{i}" for i in range(n)]
    probs = np.full((n, 10), 0.02)
    probs[np.arange(n), digits] = 0.82
    inputs = [{"correlation_id": cid, **FEATURES, "pixels": base64.b64encode(img.tobytes()).decode()}
              for cid, img in zip(ids, images)]
    outputs = [{"correlation_id": cid, "request_id": rid, "model_version": version, "digit": int(d),
                "confidence": 0.82, **{f"p{k}": float(p[k]) for k in range(10)}}
               for cid, d, p in zip(ids, digits, probs)]
    return inputs, outputs


def served(ws, deployment, rid, t, images, digits, version):
    inputs, outputs = request_rows(rid, images, digits, version)
    write_collector_files(ws.blobstore, ENDPOINT, deployment, [
        collector_record("model_inputs", inputs, t, rid, ENDPOINT, deployment),
        collector_record("model_outputs", outputs, t, rid, ENDPOINT, deployment)])


def feedback(ws, rid, label, t):
    write_collector_files(ws.blobstore, ENDPOINT, "blue", [
        collector_record("ground_truth", [{"correlation_id": rid, "label": label}], t, rid, ENDPOINT, "blue")])


def read(ws, start, end, id_prefix=None, dry_run=False):
    from mnistops import backends
    from mnistops.backends.azure.workspace import use_transport
    from mnistops.monitoring.request_log_reader import ReadStats

    cfg = compose(["env=prod", "env.backend=azure", f"env.azure.subscription_id={ws.subscription}",
                   f"env.azure.resource_group={ws.resource_group}", f"env.azure.workspace={ws.workspace}",
                   f"azure.endpoint_name={ENDPOINT}", f"azure.dry_run={str(dry_run).lower()}"])
    stats = ReadStats()
    with use_transport(ws, StaticToken()):
        return backends.get(cfg).monitoring.read_window(cfg, start, end, stats, id_prefix), stats, cfg


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, size=(8, 28, 28), dtype=np.uint8)


def test_a_window_of_two_deployments_with_late_feedback_joined_by_correlation_id(images):
    ws = FakeWorkspace(workspace="mlw-prod")
    served(ws, "blue", "r-0", T0 - 1800, images[7:8], [0], "4")  # 09:30, before the window
    served(ws, "blue", "r-1", T0 + 300, images[0:1], [3], "4")
    served(ws, "blue", "r-2", T0 + 1200, images[1:4], [1, 2, 4], "4")  # three images in one request
    served(ws, "green", "r-3", T0 + 4200, images[4:5], [6], "5")  # 11:10, after the blue/green swap
    served(ws, "green", "r-9", T0 + 4 * 3600, images[5:6], [9], "5")  # 14:00, after the window
    feedback(ws, "r-0", 1, T0 - 1700)
    feedback(ws, "r-2", 4, T0 + 1300)  # names a request of three images: labels none of them
    feedback(ws, "r-3", 5, T0 + 4300)
    feedback(ws, "r-3", 6, T0 + 4400)  # a later answer for the same request wins
    feedback(ws, "r-1", 3, T0 + 5 * 3600)  # hours after the window closed: still r-1's truth

    window, stats, cfg = read(ws, T0, T0 + 2 * 3600)

    assert list(window.request_ids) == ["r-1", "r-2", "r-2", "r-2", "r-3"]
    assert np.array_equal(window.images, images[[0, 1, 2, 3, 4]])
    assert window.digits.tolist() == [3, 1, 2, 4, 6] and window.probabilities.shape == (5, 10)
    assert np.allclose(window.probabilities[np.arange(5), window.digits], 0.82)
    assert list(window.deployments) == ["blue"] * 4 + ["green"] and list(window.versions) == ["4"] * 4 + ["5"]
    assert window.labels.tolist() == [3, -1, -1, -1, 6]
    req = window.requests
    assert req["n_images"].tolist() == [1, 3, 1] and req["deployment"].tolist() == ["blue", "blue", "green"]
    assert req["time"].tolist() == [T0 + 300, T0 + 1200, T0 + 4200] and (req["status"] == 200).all()
    assert req["latency_ms"].isna().all() and window.served_version() == "4"
    assert (window.start, window.end) == (T0, T0 + 2 * 3600) and stats.torn == 0

    # only the hour folders that can hold the window's records were read (and all of the ground truth since)
    read_hours = {name.split("/")[3] + "/" + name.rsplit("/", 2)[-2] for name in ws.blobstore.reads}
    assert "model_outputs/09" not in read_hours and "model_outputs/14" not in read_hours
    assert "model_outputs/10" in read_hours and "model_outputs/11" in read_hours
    assert not [r for r in ws.requests if r.path.endswith("/listsecrets")]  # the caller's token, no datastore keys

    # the request outcomes are not what Azure's collector sees: those signals say so, they do not guess
    from mnistops.monitoring import signals

    system = signals.system_signals(window, cfg.monitor)
    assert system and all(not s.computed and "Azure Monitor" in s.note for s in system)
    malformed = [s for s in signals.quality_signals(window, cfg.monitor) if s.metric == "malformed_rate"]
    assert not malformed[0].computed and "not collected on Azure" in malformed[0].note


def test_a_traffic_run_is_read_by_its_request_ids_whatever_the_collector_batched(images):
    ws = FakeWorkspace(workspace="mlw-prod")
    a_in, a_out = request_rows("traffic-run7-0", images[0:1], [5], "2")
    b_in, b_out = request_rows("traffic-run7-1", images[1:2], [7], "2")
    o_in, o_out = request_rows("other-client-1", images[2:3], [1], "2")
    # two requests a second apart batched into one record under the first one's id, another client's between
    write_collector_files(ws.blobstore, ENDPOINT, "blue", [
        collector_record("model_inputs", a_in + o_in + b_in, T0 + 10, "traffic-run7-0", ENDPOINT, "blue"),
        collector_record("model_outputs", a_out + o_out + b_out, T0 + 10, "traffic-run7-0", ENDPOINT, "blue")])
    partial = collector_record("model_outputs", b_out, T0 + 20, "traffic-run7-1", ENDPOINT, "blue")
    partial["contentrange"] = "bytes 0-99/500"  # the first part of a payload only
    write_collector_files(ws.blobstore, ENDPOINT, "blue", [partial])

    # a payload too large to inline: the record holds the URL of a blob of its own
    c_in, c_out = request_rows("traffic-run7-2", images[3:4], [2], "2")
    for collection, rows in (("model_inputs", c_in), ("model_outputs", c_out)):
        blob = f"modelDataCollector/{ENDPOINT}/blue/{collection}/2026/03/01/10/payload-{collection}"
        ws.blobstore.put(blob, json.dumps(rows).encode())
        big = collector_record(collection, [], T0 + 30, "traffic-run7-2", ENDPOINT, "blue")
        big.update(data=f"https://{ws.blobstore.host}/{ws.blobstore.container}/{blob}", datainblob="true",
                   datacontenttype="text/plain")
        write_collector_files(ws.blobstore, ENDPOINT, "blue", [big])
    name = next(n for n in ws.blobstore.blobs if "/model_outputs/" in n and n.endswith(".jsonl"))
    ws.blobstore.put(name, ws.blobstore.blobs[name] + b'{"specversion":"1.0","data":[{"corr')  # a torn last line

    window, stats, _ = read(ws, T0, T0 + 600, id_prefix="traffic-run7-")
    assert sorted(window.request_ids) == ["traffic-run7-0", "traffic-run7-1", "traffic-run7-2"]
    assert sorted(window.digits.tolist()) == [2, 5, 7] and len(window.requests) == 3
    assert np.array_equal(window.images[list(window.request_ids).index("traffic-run7-2")], images[3])
    assert stats.torn == 2 and stats.files == 2

    everything, _, _ = read(ws, 0.0, T0 + 600)  # window "all": it starts with the first request
    assert len(everything.requests) == 4 and everything.start == T0 + 10


def test_a_dry_run_reads_nothing():
    ws = FakeWorkspace(workspace="mlw-prod")
    window, _, _ = read(ws, T0, T0 + 600, dry_run=True)
    assert window is None and not ws.requests


def test_the_not_a_digit_flags_score_py_collects_reach_the_window(images):
    """ood/rate on Azure: score.py's `ood` column becomes the window's flags; a window with rows
    collected before the flag existed has none (ood/rate: not computed), never a made-up 0 %."""
    ws = FakeWorkspace(workspace="mlw-prod")
    served(ws, "blue", "r-1", T0 + 60, images[0:3], [1, 2, 3], "4")
    flagged = ws.blobstore  # score.py's ood columns: the 2nd image is "not a digit"
    inputs, outputs = request_rows("r-2", images[3:5], [5, 6], "4")
    for row, ood in zip(outputs, (False, True)):
        row.update(ood_score=9.0 if ood else 1.0, ood=ood)
    write_collector_files(flagged, ENDPOINT, "blue", [
        collector_record("model_inputs", inputs, T0 + 120, "r-2", ENDPOINT, "blue"),
        collector_record("model_outputs", outputs, T0 + 120, "r-2", ENDPOINT, "blue")])
    (window, _, _) = read(ws, T0 + 100, T0 + 3600)
    assert window.n_images == 2 and window.ood.tolist() == [False, True]
    (window, _, _) = read(ws, T0, T0 + 3600)  # r-1's rows carry no flag
    assert window.n_images == 5 and window.ood is None
