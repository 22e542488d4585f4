"""Fast checks of the serving parts that need no server: the settings model (one clear message for a
bad value, no defaults of its own), the key ring (rotation on disk is seen at once, constant-time
compare), the admin plans (validated before anything moves) and the protocol's pixel rule."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from mnistops.config import EndpointConfig
from mnistops.serving import admin, protocol
from mnistops.serving.errors import Conflict, Invalid, NotFound
from mnistops.serving.settings import ConfigError, KeyRing, ServerSettings, load_settings


def endpoint_defaults() -> dict:
    return OmegaConf.to_container(OmegaConf.structured(EndpointConfig), resolve=True)


def test_settings_come_from_the_config_defaults_and_refuse_bad_values(tmp_path):
    ep = endpoint_defaults()
    assert ep["workers"] == (os.cpu_count() or 1)  # one worker per core by default
    s = ServerSettings.from_endpoint(ep, "mnist", "qa")
    assert (s.port, s.workers, s.collect.flush_ms) == (ep["port"], ep["workers"], ep["collect"]["flush_ms"])
    assert load_settings(s.write(tmp_path).parent) == s
    for key, value, words in (("workers", 0, "endpoint.workers"), ("max_batch", -1, "endpoint.max_batch"),
                              ("port", 70000, "endpoint.port"), ("auth", "maybe", "endpoint.auth")):
        with pytest.raises(ConfigError, match=words):
            ServerSettings.from_endpoint({**ep, key: value}, "mnist", "qa")
    bad = {**ep, "collect": {**ep["collect"], "sampling_rate": 1.5}}
    with pytest.raises(ConfigError, match="endpoint.collect.sampling_rate"):
        ServerSettings.from_endpoint(bad, "mnist", "qa")
    (tmp_path / "server.json").write_text(s.model_dump_json()[:-1] + ', "surprise": 1}')
    with pytest.raises(ConfigError, match="surprise"):
        load_settings(tmp_path)
    # no defaults of its own: a field missing from server.json is an error, not a silent value
    (tmp_path / "server.json").write_text('{"name": "mnist"}')
    with pytest.raises(ConfigError, match="server.env"):
        load_settings(tmp_path)


def test_key_ring_sees_a_rotated_key_at_once_and_keeps_the_other(tmp_path):
    (tmp_path / "primary.key").write_text("one\n")
    (tmp_path / "secondary.key").write_text("two\n")
    ring = KeyRing(tmp_path, ("primary", "secondary"))
    assert ring.allows(b"Bearer one") and ring.allows(b"bearer two")
    assert not ring.allows(b"Bearer three") and not ring.allows(b"one") and not ring.allows(None)
    tmp = tmp_path / ".new"
    tmp.write_text("three\n")
    os.replace(tmp, tmp_path / "primary.key")  # rotated as EndpointServer does it: a new file renamed over
    assert ring.allows(b"Bearer three") and ring.allows(b"Bearer two") and not ring.allows(b"Bearer one")
    assert "three" not in repr(ring)
    with pytest.raises(ConfigError, match="admin.key"):
        KeyRing(tmp_path, ("admin",))


STATE = {"deployments": {"blue": {"path": "/m/1", "model_name": "m", "version": "1", "model_uri": "", "loaded_at": ""},
                         "green": {"path": "/m/2", "model_name": "m", "version": "2", "model_uri": "", "loaded_at": ""}},
         "traffic": {"blue": 100}, "mirror_traffic": {}, "previous": None, "generation": 3}


def test_admin_plans_validate_before_anything_moves():
    state = copy.deepcopy(STATE)
    new = admin.plan_traffic({"traffic": {"blue": 90, "green": 10}, "mirror_traffic": {}})(state)
    assert new["traffic"] == {"blue": 90, "green": 10} and new["previous"]["traffic"] == {"blue": 100}
    assert state == STATE  # the committed state is never changed in place
    for body, words in (({"traffic": {"blue": 50, "green": 40}}, "sum to 100"),
                        ({"traffic": {"blue": 50.5, "green": 49.5}}, "integer"),
                        ({"traffic": {"red": 100}}, "no deployment named 'red'"),
                        ({"traffic": {"blue": 100}, "mirror_traffic": {"blue": 10}}, "also has live traffic"),
                        ({"mirror_traffic": {"green": 10}}, "traffic")):
        with pytest.raises(Invalid, match=words):
            admin.plan_traffic(body)(state)
    with pytest.raises(Conflict, match="still has traffic"):
        admin.plan_delete("blue")(state)
    with pytest.raises(NotFound):
        admin.plan_delete("red")(state)
    with pytest.raises(Conflict, match="nothing to roll back"):
        admin.plan_rollback(state)
    back = admin.plan_rollback(new)
    assert back["traffic"] == {"blue": 100} and back["previous"]["traffic"] == {"blue": 90, "green": 10}
    for name, body, words in (("bad name!", {"path": "/x"}, "deployment name"), ("green", {"path": "rel"}, "absolute"),
                              ("green", {"version": "3"}, "'path'"), ("green", [1], "JSON object")):
        with pytest.raises(Invalid, match=words):
            admin.deploy_info(name, body)


def test_one_pixel_rule():
    img = np.zeros((28, 28), np.int64)
    img[5:20, 10:12] = 1
    ints = protocol.to_batch(img.tolist())
    floats = protocol.to_batch(img.astype(float).tolist())
    assert ints.dtype == np.float32 and ints.shape == (1, 1, 28, 28)
    assert np.isclose(ints.max(), 1 / 255) and floats.max() == 1.0  # integers 0..255, floats 0..1
    assert protocol.to_batch((img * 255.0).tolist()).max() == 1.0  # floats above 1: the 0..255 scale
    for bad, words in (([[0] * 783], "784"), ([[np.nan] * 784], "finite"), ([[256] * 784], "0..255"),
                       ([[True] * 784], "booleans"), ([["7"] * 784], "strings")):
        with pytest.raises(protocol.InputError, match=words) as err:
            protocol.to_batch(bad)
        assert err.value.status == 422 and err.value.field == "data"
    with pytest.raises(protocol.InputError) as err:
        protocol.parse_json(b'{"data": [1,')
    assert err.value.status == 400 and err.value.field == "body"
    assert protocol.error_body("bad", "data", "r1") == {"error": "bad", "field": "data", "request_id": "r1"}


def test_the_vendored_copy_is_this_module(tmp_path):
    copy_path = protocol.vendor(tmp_path)
    assert copy_path.name == "mnistops_protocol.py"
    assert copy_path.read_bytes() == Path(protocol.__file__).read_bytes()
    source = copy_path.read_text()
    assert "import mnistops" not in source.replace("from mnistops.serving.images", "")  # loads without mnistops


def test_the_hot_path_sends_what_the_framework_route_would():
    """``scoring.hot_routes`` answers without Starlette's Response: same status, headers and bytes as
    ``json_response``; the body is read whole from chunks, and a client that left gets no answer."""
    import asyncio

    from mnistops.serving.errors import json_response, send_json
    from mnistops.serving.scoring import read_body

    body = {"predictions": [{"digit": 7, "probabilities": np.full(10, 0.1, np.float32)}], "request_id": "r1"}
    for status, headers in ((200, None), (503, {"Retry-After": "1"}), (401, {"WWW-Authenticate": "Bearer"})):
        sent: list = []

        async def send(message):
            sent.append(message)

        asyncio.run(send_json(send, body, status, headers))
        ref = json_response(body, status, headers)
        assert sent == [{"type": "http.response.start", "status": status, "headers": ref.raw_headers},
                        {"type": "http.response.body", "body": ref.body}]

    def receiver(messages):
        it = iter(messages)

        async def receive():
            return next(it)
        return receive

    chunks = [{"type": "http.request", "body": b'{"data"', "more_body": True},
              {"type": "http.request", "body": b": [1]}", "more_body": False}]
    assert asyncio.run(read_body(receiver(chunks))) == b'{"data": [1]}'
    assert asyncio.run(read_body(receiver([{"type": "http.request", "body": b"{}"}]))) == b"{}"
    assert asyncio.run(read_body(receiver([chunks[0], {"type": "http.disconnect"}]))) is None


def test_a_mirrored_copy_that_fails_is_logged_with_the_version_of_the_deployment_that_failed_it(tmp_path):
    """A deployment replaced while mirrored copies were queued fails them under its slot's name: the
    record names its version, so canary analysis of the next version in that slot does not count them
    (quality.canary.of_versions). A copy answered names its version through its payload, as before."""
    import asyncio
    import json
    from types import SimpleNamespace

    from mnistops.serving.batching import BatcherClosed
    from mnistops.serving.prometheus import Metrics
    from mnistops.serving.request_log import RequestLogWriter
    from mnistops.serving.runtime import Runtime

    runtime = object.__new__(Runtime)  # the two parts the mirror's bookkeeping uses
    runtime.metrics, runtime.request_log = Metrics(), RequestLogWriter(tmp_path, flush_ms=600_000)
    old = SimpleNamespace(name="green", info={"model_name": "m", "version": "4"},
                          batcher=SimpleNamespace(model_seconds={}))
    batch = np.zeros((1, 1, 28, 28), np.float32)
    runtime.request_log.start()

    async def fail_one() -> None:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        fut.set_exception(BatcherClosed("deployment green was replaced"))
        runtime._mirror_done("r1", old, batch, loop.time())(fut)

    asyncio.run(fail_one())
    runtime.request_log.close()
    (record,) = [json.loads(line) for f in (tmp_path / "requests").glob("*.jsonl") for line in f.read_text().splitlines()]
    assert (record["id"], record["route"], record["status"], record["deployment"], record["version"]) == \
        ("r1", "mirror", 500, "green", "4")
    assert "digits" not in record and "model" not in record
