"""Fuzz the real endpoint server from its own OpenAPI description (schemathesis).

The schema is the live server's ``/openapi.json``. Every documented operation gets a bounded number of
generated requests, valid (positive) and invalid (negative) bodies, parameters and headers, sent with
a valid key, and every answer is checked by schemathesis' built-in checks: never a 5xx
(``not_a_server_error``), a documented status code, a documented content type, a body matching the
documented response schema, documented headers, invalid input rejected with a 4xx, and the key
actually enforced (``ignored_auth`` re-sends without it and expects a 401): a scoring key for the
scoring operations, the admin key for the admin ones.

Bounded and reproducible: ``MAX_EXAMPLES`` generated cases per operation and mode, derandomized, plus
the examples the schema documents, plus the same generation with the path parameters that exist on
the endpoint (model ``mnist-classifier``, deployments ``blue``/``green``) so the 200 branches are hit too.

The ``/admin/*`` operations are fuzzed against a throwaway server of their own: an admin call the
fuzzer gets right (a traffic split, a rollback, a deleted deployment) legitimately changes what the
scoring operations answer (e.g. 503 "no deployment has traffic"); on their own server they may
mutate freely and must still never answer a 5xx.

``positive_data_acceptance`` (a schema-valid request must be accepted) runs only where JSON Schema can
say everything the server checks. It is off for the operations whose validity hangs on what a schema
cannot express: the MLflow/dataframe forms of ``/invocations`` (column count must match row length),
the Open Inference tensor (``shape`` must match the number of ``data`` values), ``/predict`` (the
uploaded bytes must decode to a picture with ink), and the admin loads/splits (a model dir that
exists on disk, percentages that sum to 100). Everything else, including negative data rejection,
runs everywhere.

Driven through ``APIOperation.as_strategy`` + Hypothesis rather than ``schemathesis.pytest.from_fixture``:
the lazy-fixture plugin of schemathesis 4.32 touches a private pytest attribute that pytest 9 removed.
"""

from __future__ import annotations

import pytest

from conftest import needs_module

schemathesis = needs_module("schemathesis")  # in CI a missing test extra is an error, not a skip
import hypothesis  # noqa: E402  (a dependency of schemathesis)
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import positive_data_acceptance  # noqa: E402

from serving_fixtures import ADMIN, AUTH, ServerProcess, make_endpoint, registered_model, server_errors_logged  # noqa: E402

pytestmark = pytest.mark.integration

MAX_EXAMPLES = 25  # per operation and generation mode
# validity beyond JSON Schema: see the module docstring
SEMANTIC_INPUT = {"POST /invocations", "POST /v2/models/{name}/infer", "POST /predict",
                  "POST /admin/deployments/{deployment}", "PUT /admin/traffic"}
# names that exist on the endpoint: random path parameters would only ever reach the 404 branch
KNOWN_PATH = {"name": ["mnist-classifier", "mnist"], "deployment": ["blue", "green"]}
SETTINGS = hypothesis.settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                               suppress_health_check=list(hypothesis.HealthCheck),
                               phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, data_cache):
    return registered_model(tmp_path_factory, data_cache)


@pytest.fixture(scope="module")
def api_server(tmp_path_factory, model_dir):
    srv = ServerProcess(make_endpoint(tmp_path_factory.mktemp("fuzz-api"), model_dir)).start()
    yield srv
    srv.stop()


@pytest.fixture
def admin_server(tmp_path, model_dir):
    srv = ServerProcess(make_endpoint(tmp_path, model_dir)).start()
    yield srv
    srv.stop()


def live_operations(srv: ServerProcess, admin: bool):
    schema = schemathesis.openapi.from_url(srv.url + "/openapi.json")
    ops = []
    for result in schema.get_all_operations():
        op = result.ok()  # raises on an operation schemathesis cannot read: that is a documentation bug
        if op.path.startswith("/admin/") == admin:
            ops.append(op)
    return ops


def strategies(op, mode) -> list:
    """Generated cases, plus the same with real path parameters, plus (positive) the documented examples."""
    out = [op.as_strategy(generation_mode=mode)]
    for param, values in KNOWN_PATH.items():
        if "{%s}" % param in op.path:
            out += [op.as_strategy(generation_mode=mode, path_parameters={param: v}) for v in values]
    if mode is GenerationMode.POSITIVE:
        out = op.get_strategies_from_examples() + out
    return out


def fuzz(srv: ServerProcess, ops, headers: dict) -> dict:
    """Run every operation through both generation modes with ``headers`` (the key its routes take);
    return {operation: [failure reports]}."""
    failures: dict = {}
    for op in ops:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = st.one_of(*strategies(op, mode))
            excluded = [positive_data_acceptance] if op.label in SEMANTIC_INPUT else []

            @SETTINGS
            @hypothesis.given(case=strategy)
            def run(case):
                case.call_and_validate(base_url=srv.url, headers=headers, timeout=30, excluded_checks=excluded)

            try:
                run()
            except hypothesis.errors.Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE, op.label  # nothing to get wrong: no parameters, no body
            except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001  (report every operation's failures)
                failures.setdefault(f"{op.label} [{mode.value}]", []).append(str(exc)[:4000])
    return failures


def _check(srv: ServerProcess, ops, headers: dict) -> None:
    failures = fuzz(srv, ops, headers)
    assert not failures, "\n\n".join(f"== {label}\n" + "\n".join(msgs) for label, msgs in failures.items())
    assert srv.proc.poll() is None, "the server died under fuzzing:\n" + srv.log()[-3000:]
    errors = server_errors_logged(srv)
    assert not errors, "internal errors in the server log:\n" + "\n".join(errors[:20])


def test_fuzz_scoring_and_ops_operations(api_server):
    ops = live_operations(api_server, admin=False)
    labels = {op.label for op in ops}
    for expected in ("POST /score", "POST /invocations", "POST /v2/models/{name}/infer", "POST /predict",
                     "POST /feedback", "GET /health", "GET /ready", "GET /metrics", "GET /v2/models/{name}"):
        assert expected in labels, (expected, sorted(labels))
    _check(api_server, ops, AUTH)
    # still serving correctly afterwards
    with api_server.client() as c:
        r = c.post("/score", json={"data": [[0] * 784]})
        assert r.status_code == 200 and len(r.json()["predictions"]) == 1


def test_fuzz_admin_operations_on_a_throwaway_server(admin_server):
    ops = live_operations(admin_server, admin=True)
    assert {op.label for op in ops} >= {"GET /admin/state", "POST /admin/deployments/{deployment}",
                                        "DELETE /admin/deployments/{deployment}", "PUT /admin/traffic",
                                        "POST /admin/rollback"}
    _check(admin_server, ops, ADMIN)  # the admin key: admin routes refuse a scoring key
