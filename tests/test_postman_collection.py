"""The shipped Postman collection (``postman/mnistops.postman_collection.json``) is valid v2.1 and works.

Checked three ways: its structure against the parts of the Postman v2.1 collection schema it uses (plus
consistency: variables defined, URLs built from ``{{baseUrl}}``, every request with a test script);
every request replayed in order against a real server with httpx (variables substituted, auth
inherited from the collection as Postman does, the status each script expects, the 7 of MNIST test
image 0 predicted); and, where ``newman`` (the Postman CLI, ``npm install -g newman``) is installed,
the collection run by newman itself, test scripts included.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import REPO, needs_tool
from serving_fixtures import ADMIN_KEY, KEY, KEY2, ServerProcess, make_endpoint, registered_model

pytestmark = pytest.mark.integration

POSTMAN = REPO / "postman"
COLLECTION = POSTMAN / "mnistops.postman_collection.json"
V21 = "https://schema.getpostman.com/json/collection/v2.1.0/collection.json"
VAR = re.compile(r"\{\{([A-Za-z0-9_.-]+)\}\}")

# the parts of the Postman Collection v2.1 JSON schema that this collection uses
KV = {"type": "object", "required": ["key"],
      "properties": {"key": {"type": "string"}, "value": {"type": "string"}, "type": {"type": "string"},
                     "disabled": {"type": "boolean"}, "description": {"type": "string"}}}
AUTH = {"type": "object", "required": ["type"],
        "properties": {"type": {"enum": ["noauth", "bearer", "basic", "apikey", "oauth2", "digest", "hawk", "awsv4",
                                         "ntlm", "edgegrid", "oauth1", "jwt", "akamai", "asap"]},
                       "bearer": {"type": "array", "items": KV}}}
SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "required": ["info", "item"],
    "properties": {
        "info": {"type": "object", "required": ["name", "schema"],
                 "properties": {"name": {"type": "string", "minLength": 1}, "schema": {"const": V21},
                                "_postman_id": {"type": "string", "pattern": "^[0-9a-f-]{36}$"},
                                "description": {"type": "string"}}},
        "auth": AUTH,
        "variable": {"type": "array", "items": KV},
        "item": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["name", "request"],
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "event": {"type": "array", "items": {
                    "type": "object", "required": ["listen", "script"],
                    "properties": {"listen": {"enum": ["test", "prerequest"]},
                                   "script": {"type": "object", "required": ["exec"],
                                              "properties": {"type": {"const": "text/javascript"},
                                                             "exec": {"type": "array",
                                                                      "items": {"type": "string"}}}}}}},
                "request": {
                    "type": "object", "required": ["method", "url"],
                    "properties": {
                        "method": {"enum": ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]},
                        "url": {"type": "object", "required": ["raw", "host", "path"],
                                "properties": {"raw": {"type": "string"},
                                               "host": {"type": "array", "items": {"type": "string"}},
                                               "path": {"type": "array", "items": {"type": "string"}}}},
                        "header": {"type": "array", "items": KV},
                        "auth": AUTH,
                        "description": {"type": "string"},
                        "body": {"type": "object", "required": ["mode"], "properties": {
                            "mode": {"enum": ["raw", "urlencoded", "formdata", "file", "graphql"]},
                            "raw": {"type": "string"},
                            "options": {"type": "object"},
                            "formdata": {"type": "array", "items": {
                                "type": "object", "required": ["key", "type"],
                                "properties": {"key": {"type": "string"}, "type": {"enum": ["text", "file"]},
                                               "src": {"type": "string"}, "value": {"type": "string"}}}}}},
                    }},
            }}},
    },
}


@pytest.fixture(scope="module")
def collection() -> dict:
    return json.loads(COLLECTION.read_text())


@pytest.fixture(scope="module")
def server(tmp_path_factory, data_cache):
    model = registered_model(tmp_path_factory, data_cache)
    srv = ServerProcess(make_endpoint(tmp_path_factory.mktemp("postman-ep"), model)).start()
    yield srv
    srv.stop()


def expected_status(item: dict) -> int:
    script = "\n".join(line for e in item.get("event", []) if e["listen"] == "test" for line in e["script"]["exec"])
    codes = re.findall(r"pm\.response\.to\.have\.status\((\d{3})\)", script)
    assert len(codes) == 1 and "pm.test(" in script, (item["name"], "each request's test script checks its status")
    return int(codes[0])


def substitute(text: str, variables: dict) -> str:
    def value(m):
        assert m.group(1) in variables, f"undefined variable {{{{{m.group(1)}}}}}"
        return str(variables[m.group(1)])

    return VAR.sub(value, text)


# --------------------------------------------------------------------------- structure

def test_collection_is_valid_postman_v21(collection, data_cache):
    import jsonschema

    jsonschema.validate(collection, SCHEMA)
    items = collection["item"]
    names = [i["name"] for i in items]
    assert len(set(names)) == len(names)
    defined = {v["key"]: v["value"] for v in collection["variable"]}
    assert defined["baseUrl"] == "http://127.0.0.1:5080" and "apiKey" in defined
    assert collection["auth"] == {"type": "bearer", "bearer": [{"key": "token", "value": "{{apiKey}}",
                                                                "type": "string"}]}
    assert defined["apiKey"] == defined["adminKey"] == ""  # no key ships in the collection

    routes = set()
    for item in items:
        req = item["request"]
        url = req["url"]
        assert url["host"] == ["{{baseUrl}}"] and url["raw"] == "{{baseUrl}}/" + "/".join(url["path"]), item["name"]
        used = set(VAR.findall(json.dumps(item)))
        assert used <= set(defined), (item["name"], used - set(defined))
        assert expected_status(item) in (200, 202)
        body = req.get("body")
        if body and body["mode"] == "raw":
            json.loads(substitute(body["raw"], {k: "x" for k in defined}))  # well-formed JSON
        if body and body["mode"] == "formdata":
            for part in body["formdata"]:
                if part["type"] == "file":
                    assert (POSTMAN / part["src"]).is_file(), part  # resolved from --working-dir postman
        routes.add((req["method"], "/" + "/".join(url["path"])))
    assert routes >= {("GET", "/health"), ("GET", "/ready"), ("GET", "/metrics"), ("POST", "/score"),
                      ("POST", "/invocations"), ("POST", "/v2/models/{{modelName}}/infer"),
                      ("GET", "/v2/models/{{modelName}}"), ("POST", "/predict"), ("POST", "/feedback"),
                      ("GET", "/v2/health/live"), ("GET", "/v2/health/ready"), ("GET", "/admin/state")}
    admin = next(i for i in items if i["request"]["url"]["path"][0] == "admin")
    assert admin["request"]["auth"]["bearer"][0]["value"] == "{{adminKey}}"  # its own key, not the scoring one
    forms = {next(iter(json.loads(i["request"]["body"]["raw"]))) for i in items
             if i["request"]["url"]["path"] == ["invocations"]}
    assert forms == {"inputs", "dataframe_split", "input_data"}

    # the image in the bodies is MNIST test image 0 (a 7)
    from PIL import Image

    from mnistops.data.idx import read_idx

    image0 = np.array(read_idx(data_cache / "mnist" / "t10k-images-idx3-ubyte")[0]).reshape(784)
    assert int(read_idx(data_cache / "mnist" / "t10k-labels-idx1-ubyte")[0]) == 7
    score = next(i for i in items if i["request"]["url"]["path"] == ["score"])
    assert json.loads(score["request"]["body"]["raw"])["data"] == [image0.tolist()]
    upload = np.asarray(Image.open(POSTMAN / "digit-7.png"))
    assert upload.shape == (28, 28) and np.array_equal(upload.reshape(784), image0)


# --------------------------------------------------------------------------- replay with httpx

def replay(collection: dict, base_url: str, api_key: str, admin_key: str = ADMIN_KEY):
    """Every request in order, as Postman sends it; yields (item, response)."""
    variables = {v["key"]: v["value"] for v in collection["variable"]}
    variables.update(baseUrl=base_url, apiKey=api_key, adminKey=admin_key)
    with httpx.Client(timeout=30) as client:
        for item in collection["item"]:
            req = item["request"]
            headers = {h["key"]: substitute(h["value"], variables) for h in req.get("header", [])
                       if not h.get("disabled")}
            auth = req.get("auth") or collection.get("auth") or {"type": "noauth"}  # inherited from the collection
            if auth["type"] == "bearer":
                token = next(e["value"] for e in auth["bearer"] if e["key"] == "token")
                headers["Authorization"] = "Bearer " + substitute(token, variables)
            else:
                assert auth["type"] == "noauth", auth
            kwargs = {}
            body = req.get("body")
            if body and body["mode"] == "raw":
                kwargs["content"] = substitute(body["raw"], variables).encode()
            elif body and body["mode"] == "formdata":
                files, data = {}, {}
                for part in body["formdata"]:
                    if part["type"] == "file":
                        path = POSTMAN / part["src"]
                        files[part["key"]] = (path.name, path.read_bytes(), "image/png")
                    else:
                        data[part["key"]] = substitute(part["value"], variables)
                kwargs.update(files=files, data=data)
            response = client.request(req["method"], substitute(req["url"]["raw"], variables), headers=headers,
                                      **kwargs)
            if item["name"] == "score" and response.status_code == 200:  # what its test script does
                variables["requestId"] = response.json()["request_id"]
            yield item, response


def feedback_lines(srv: ServerProcess) -> list:
    path = srv.dir.parent.parent / "monitoring" / srv.dir.name / "feedback.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize("scoring_key", [KEY, KEY2], ids=["primary", "secondary"])
def test_every_request_replays_against_a_real_server(collection, server, scoring_key):
    before = len(feedback_lines(server))
    seen = []
    for item, r in replay(collection, server.url, scoring_key):
        assert r.status_code == expected_status(item), (item["name"], r.status_code, r.text[:500])
        seen.append(item["name"])
        if r.headers.get("content-type", "").startswith("application/json"):
            body = r.json()
            if "predictions" in body:
                assert [p["digit"] for p in body["predictions"]] == [7], (item["name"], body)
                assert body["request_id"] == r.headers["x-request-id"]
            if item["request"]["url"]["path"][-1] == "infer":
                assert body["outputs"][1] == {"name": "digit", "shape": [1], "datatype": "INT64", "data": [7]}, body
    assert len(seen) == len(collection["item"])
    # the feedback request carried the id that score answered
    feedback = feedback_lines(server)[before:]
    assert len(feedback) == 1 and feedback[0]["label"] == 7, feedback
    assert re.fullmatch(r"[0-9a-f]{32}", feedback[0]["request_id"]), feedback


def test_without_the_key_the_secured_requests_are_refused(collection, server):
    statuses = {item["name"]: r.status_code for item, r in replay(collection, server.url, "not-the-key", "nope")}
    for item in collection["item"]:
        open_route = item["request"].get("auth", {}).get("type") == "noauth"
        assert statuses[item["name"]] == (200 if open_route else 401), (item["name"], statuses)
    # a scoring key opens no admin route, the admin key no scoring route
    swapped = {item["name"]: r.status_code for item, r in replay(collection, server.url, ADMIN_KEY, KEY)}
    assert swapped["admin state"] == 401 and swapped["score"] == 401 and swapped["health"] == 200


# --------------------------------------------------------------------------- newman

def newman(collection_path: Path, base_url: str, api_key: str, report: Path,
           admin_key: str = ADMIN_KEY) -> subprocess.CompletedProcess:
    # (a run with failures makes the newman CLI wait for the server to close idle keep-alive sockets: 30 s)
    return subprocess.run(
        ["newman", "run", str(collection_path), "--working-dir", str(POSTMAN), "--env-var", f"baseUrl={base_url}",
         "--env-var", f"apiKey={api_key}", "--env-var", f"adminKey={admin_key}", "--reporters", "cli,json", "--reporter-json-export", str(report),
         "--color", "off", "--disable-unicode", "--timeout-request", "30000"],
        capture_output=True, text=True, timeout=120)


def test_newman_runs_the_collection(collection, server, tmp_path):
    if shutil.which("newman") is None:
        needs_tool("newman is not installed (npm install -g newman)")
    proc = newman(COLLECTION, server.url, KEY, tmp_path / "run.json")
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
    run = json.loads((tmp_path / "run.json").read_text())["run"]
    n = len(collection["item"])
    stats = run["stats"]
    assert stats["requests"] == {"total": n, "pending": 0, "failed": 0}
    assert stats["testScripts"]["total"] == n and stats["testScripts"]["failed"] == 0
    assert stats["assertions"]["failed"] == 0 and run["failures"] == []
    # every request's script ran its checks: the status one and at least one on the answer
    for execution, item in zip(run["executions"], collection["item"]):
        assert execution["item"]["name"] == item["name"]
        assertions = [a["assertion"] for a in execution["assertions"]]
        assert len(assertions) >= 2 and assertions[0] == f"status is {expected_status(item)}", (item["name"], assertions)
        assert not any(a.get("error") for a in execution["assertions"])
