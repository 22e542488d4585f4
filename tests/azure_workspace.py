"""Azure ML, as the SDK's HTTP transport sees it: a recording `HttpTransport` that answers
azure-ai-ml's requests the way the Azure ML resource provider (ARM) does, from what earlier
requests created.

Tests hand it to the flavour with `mnistops.backends.azure.workspace.use_transport(...)`, run a
stage body, then read `requests` (method, path, JSON body) to check that what the SDK would have
sent carries what the config asked for. The answers are handwritten JSON of the API's shape: an
ARM resource (`id`, `name`, `type`, `properties`, `systemData`), PUT returns what it stored with
`provisioningState: Succeeded` (so long-running operations end at once), GET of a collection
returns `{"value": [...]}`, an unknown resource 404 with ARM's error body. The workspace's MLflow
tracking URI (`mlflow_uri`) is what tests point at a real `mlflow server` reached through azureml-mlflow
(tests/azure_mlflow_server.py).

Nothing here is a stand-in for a part that runs on this machine: the SDK, its serialisation and
the stages run for real; only the remote service answers from this table.

What Azure would refuse, it refuses, from sources the project did not write:
- every PUT/POST/PATCH body is checked against azure-ai-ml's own generated REST models for its route
  (tests/azure_rest_models.py: required fields, types, enums, discriminators) and answered 400
  (UserError, each problem naming its field); read-only fields are dropped from what is stored;
- every call carries a token naming its principal (`StaticToken("cluster:cpu")`; the default is the
  env's pipeline identity) and is answered 403 AuthorizationFailed unless a role assignment in
  infra/*.tf covers its action at its scope (tests/azure_rbac.py; `FakeWorkspace(infra=...)` reads a
  changed copy). `denied` and `refused` list what was answered 403 / 400.

Run history's routes for a run's files (what MLflow logs on Azure) answer from
tests/azure_run_artifacts.py: write and read SAS URLs into the workspace's storage, decided as the
workspace's `metadata/artifacts/read|write` operations.

`BlobContainer` is the workspace's default blob datastore as Azure Storage answers azure-storage-blob
(List Blobs XML, Get Blob with its range headers): tests put the files the deployments' data
collector writes there (`put`), and the flavour reads them the way it reads the real one.
"""

from __future__ import annotations

import calendar
import copy
import json
import re
import time
import uuid
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any, Callable, Dict, List, Optional
from urllib.parse import parse_qs, unquote, urlparse
from xml.sax.saxutils import escape

from azure.core.credentials import AccessToken
from azure.core.pipeline.transport import HttpTransport

from azure_rbac import Names, Rbac, arm_action, authorization_failed, blob_data_action, principal_of
from azure_rest_models import model_class, strip_read_only, validate_request
from azure_run_artifacts import RunArtifacts

ARM = "https://management.azure.com"
PROVIDER = "Microsoft.MachineLearningServices"
# run history's routes for a run's files (paths as recorded: lower case)
RUN_FILES = re.compile(r"/history/v1\.0/.*/experiments/[^/]+/runs/([^/]+)/artifacts(/contentinfo|/batch/metadata)?")


PIPELINE = "pipeline"  # the env's CI/CD identity (infra/identity.tf), who acts unless a test says otherwise


class StaticToken:
    """A credential that never calls Entra ID; its token names the principal it signs in as
    (azure_rbac: "<env>/<identity>", or just "<identity>" for the identity of the env whose workspace
    is called: "pipeline", "cluster:cpu", "endpoint", ...). The fake allows a call only where
    infra/ gives that principal a role covering it."""

    def __init__(self, principal: str = PIPELINE):
        self.principal = principal

    @property
    def token(self) -> str:
        from azure_rbac import token_for

        return token_for(self.principal)

    def get_token(self, *scopes, **kwargs) -> AccessToken:
        return AccessToken(self.token, int(time.time()) + 3600)

    def get_token_info(self, *scopes, **kwargs):
        from azure.core.credentials import AccessTokenInfo

        return AccessTokenInfo(self.token, int(time.time()) + 3600)


@dataclass
class Recorded:
    method: str
    path: str  # lower-cased ARM path, no query
    query: Dict[str, str]
    body: Any  # parsed JSON, or None
    stored: Any = None  # the body without the fields the service sets (what a PUT keeps), once validated

    def __repr__(self) -> str:
        return f"{self.method} {self.path}"


class _Closed:
    """What HttpResponseImpl closes once the body is read (there is no connection)."""

    def close(self) -> None:
        pass


class _Stream:
    """What azure.core's stream_download yields: the body, once (azure-storage-blob sets attributes on it)."""

    def __init__(self, pipeline, response, content: bytes, **kwargs):
        self.pipeline, self.response, self._chunks = pipeline, response, iter([content] if content else [])
        self.request = getattr(response, "request", None)
        self.content_length = len(content)

    def __len__(self) -> int:
        return self.content_length

    def __iter__(self):
        return self

    def __next__(self) -> bytes:
        return next(self._chunks)

    def close(self) -> None:
        pass


def raw_response(request, status: int, content: bytes, headers: Dict[str, str]):
    """An azure.core response (the rest flavour, with the pipeline-transport back-compat methods)."""
    from azure.core.rest._http_response_impl import HttpResponseImpl
    from azure.core.utils import case_insensitive_dict

    reason = {200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 206: "Partial Content",
              400: "Bad Request", 403: "Forbidden", 404: "Not Found", 416: "Range Not Satisfiable"}.get(status, "Error")
    response = HttpResponseImpl(
        request=request, internal_response=_Closed(), status_code=status, reason=reason,
        content_type=headers.get("Content-Type", "application/octet-stream"), block_size=None,
        headers=case_insensitive_dict({"x-ms-request-id": "test", **headers}),
        stream_download_generator=lambda pipeline=None, response=None, **kwargs: _Stream(pipeline, response, content))
    response._content = content
    return response


def json_response(request, status: int, body: Any = None):
    content = b"" if body is None else json.dumps(body).encode()
    return raw_response(request, status, content, {"Content-Type": "application/json"})


class BlobContainer:
    """One blob container as Azure Storage's blob service answers azure-storage-blob: List Blobs
    (with `prefix` and the `/` delimiter) and Get Blob (honouring x-ms-range), 404 for the rest.
    `reads` is what was downloaded (blob names, in order)."""

    def __init__(self, account: str, container: str):
        self.account, self.container = account, container
        self.host = f"{account}.blob.core.windows.net"
        self.blobs: Dict[str, bytes] = {}
        self.etags: Dict[str, str] = {}
        self.reads: List[str] = []
        self.clock = 0

    def put(self, name: str, content: bytes) -> None:
        self.clock += 1
        self.blobs[name], self.etags[name] = content, f'"0x8DE{self.clock:013X}"'

    def send(self, request):
        url = urlparse(request.url)
        path = unquote(url.path).lstrip("/")
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        container, _, name = path.partition("/")
        if container != self.container:
            return raw_response(request, 404, self._error("ContainerNotFound"), {"Content-Type": "application/xml"})
        if request.method == "GET" and not name and query.get("comp") == "list":
            return raw_response(request, 200, self._list(query), {"Content-Type": "application/xml"})
        if request.method == "GET" and name in self.blobs:
            return self._get(request, name)
        return raw_response(request, 404, self._error("BlobNotFound"), {"Content-Type": "application/xml"})

    def _get(self, request, name: str):
        self.reads.append(name)
        data = self.blobs[name]
        headers = {"Content-Type": "application/octet-stream", "ETag": self.etags[name],
                   "Last-Modified": formatdate(usegmt=True), "x-ms-blob-type": "BlockBlob",
                   "x-ms-creation-time": formatdate(usegmt=True), "Accept-Ranges": "bytes"}
        wanted = request.headers.get("x-ms-range") or request.headers.get("Range")
        if not wanted:
            return raw_response(request, 200, data, {**headers, "Content-Length": str(len(data))})
        first, _, last = wanted.split("=", 1)[1].partition("-")
        first, last = int(first), min(int(last) if last else len(data) - 1, len(data) - 1)
        if first >= len(data):
            return raw_response(request, 416, self._error("InvalidRange"), {"Content-Type": "application/xml",
                                                                            "Content-Range": f"bytes */{len(data)}"})
        part = data[first:last + 1]
        return raw_response(request, 206, part, {**headers, "Content-Length": str(len(part)),
                                                 "Content-Range": f"bytes {first}-{last}/{len(data)}"})

    def _list(self, query: Dict[str, str]) -> bytes:
        prefix, delimiter = query.get("prefix", ""), query.get("delimiter")
        items, folders = [], set()
        for name in sorted(self.blobs):
            if not name.startswith(prefix):
                continue
            rest = name[len(prefix):]
            if delimiter and delimiter in rest:
                folders.add(prefix + rest.split(delimiter, 1)[0] + delimiter)
                continue
            items.append(
                f"<Blob><Name>{escape(name)}</Name><Properties>"
                f"<Creation-Time>{formatdate(usegmt=True)}</Creation-Time>"
                f"<Last-Modified>{formatdate(usegmt=True)}</Last-Modified><Etag>{self.etags[name]}</Etag>"
                f"<Content-Length>{len(self.blobs[name])}</Content-Length>"
                "<Content-Type>application/octet-stream</Content-Type><BlobType>BlockBlob</BlobType>"
                "<AccessTier>Hot</AccessTier><AccessTierInferred>true</AccessTierInferred>"
                "<LeaseStatus>unlocked</LeaseStatus><LeaseState>available</LeaseState>"
                "<ServerEncrypted>true</ServerEncrypted></Properties><OrMetadata /></Blob>")
        items += [f"<BlobPrefix><Name>{escape(f)}</Name></BlobPrefix>" for f in sorted(folders)]
        return ('<?xml version="1.0" encoding="utf-8"?>'
                f'<EnumerationResults ServiceEndpoint="https://{self.host}/" ContainerName="{self.container}">'
                f"<Prefix>{escape(prefix)}</Prefix>" + (f"<Delimiter>{escape(delimiter)}</Delimiter>" if delimiter else "")
                + f"<Blobs>{''.join(items)}</Blobs><NextMarker /></EnumerationResults>").encode()

    @staticmethod
    def _error(code: str, message: str = "") -> bytes:
        return (f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code>'
                f"<Message>{escape(message or code)}</Message></Error>").encode()


def blob_refused(refusal: str) -> bytes:
    """Azure Storage's 403 for a token whose principal lacks the data role."""
    return BlobContainer._error("AuthorizationPermissionMismatch", "This request is not authorized to perform this "
                                "operation using this permission. " + refusal)


def bad_request(problems: List[str]) -> dict:
    """Azure ML's 400 for a body its models refuse: UserError, each problem naming its field."""
    return {"error": {"code": "UserError", "message": f"The request is invalid: {'; '.join(problems)}",
                      "details": [{"code": "BadRequest", "target": p.split(":", 1)[0], "message": p} for p in problems],
                      "innerError": {"code": "BadArgument"}}}


def not_found(what: str) -> dict:
    return {"error": {"code": "UserError", "message": f"{what} could not be found.",
                      "details": [], "innerError": {"code": "NotFound"}}}


class _InMemoryTransport(HttpTransport):
    """azure-core's transport protocol with nothing to open or close: the subclasses answer `send`."""

    def __enter__(self):
        return self

    def __exit__(self, *args):
        pass

    def open(self):
        pass

    def close(self):
        pass


class FakeWorkspace(_InMemoryTransport):
    """One workspace's resource provider. `seed(path, properties)` puts a resource there first
    (a cluster Terraform made, an environment provision made); `requests` is what was sent."""

    def __init__(self, subscription: str = "00000000-0000-0000-0000-000000000000",
                 resource_group: str = "rg-mnistops-qa", workspace: str = "mlw-mnistops-qa",
                 mlflow_uri: str = "", location: str = "westeurope",
                 job_status: str = "Completed", scoring_base: Optional[str] = None, env: Optional[str] = None,
                 infra=None, variables: Optional[dict] = None, validate: bool = True):
        self.subscription, self.resource_group, self.workspace = subscription, resource_group, workspace
        self.location, self.mlflow_uri, self.job_status = location, mlflow_uri, job_status
        # where the endpoints' scoring URIs point (a real server), if set; `{name}`: the endpoint's name
        self.scoring_base = scoring_base
        self.env = env or ("prod" if "prod" in workspace else "qa")
        self.prefix = (f"/subscriptions/{subscription}/resourcegroups/{resource_group}/providers/"
                       f"{PROVIDER}/workspaces/{workspace}").lower()
        self.resources: Dict[str, dict] = {}
        self.requests: List[Recorded] = []
        self.handlers: List[tuple] = []  # (method, path regex, fn(recorded) -> (status, body)) tried first
        self.clock = 0
        self.workspace_id = "11111111-1111-1111-1111-111111111111"
        # the workspace's default datastore, as Azure ML creates it: a blob container of its storage account
        self.blobstore = BlobContainer(f"st{workspace.replace('-', '')[:20]}", f"azureml-blobstore-{self.workspace_id}")
        # who may do what: infra/*.tf as applied to this env (azure_rbac); QA's cross-env role is given to
        # PROD's pipeline identity, as the README's first run does (qa.tfvars cross_env_principal_ids)
        self.infra, self.validate = infra, validate
        self.variables = variables if variables is not None else (
            {"cross_env_principal_ids": ["prod/pipeline"]} if self.env == "qa" else {})
        self._rbac = None
        self.denied: List[tuple] = []  # (principal, action, scope) answered 403
        self.refused: List[tuple] = []  # (recorded, problems) answered 400
        self.run_logs: Dict[str, Dict[str, str]] = {}  # job name -> {log name: URL}, as run history lists them
        self.run_artifacts = RunArtifacts(self.blobstore.account, self.blobstore.host)  # runs' files (MLflow's)
        self.seed("datastores/workspaceblobstore", {
            "datastoreType": "AzureBlob", "accountName": self.blobstore.account,
            "containerName": self.blobstore.container, "endpoint": "core.windows.net", "protocol": "https",
            "serviceDataAccessAuthIdentity": "WorkspaceSystemAssignedIdentity", "isDefault": True,
            "credentials": {"credentialsType": "AccountKey"}})

    # ------------------------------------------------------------------ the transport protocol
    def send(self, request, **kwargs):
        url = urlparse(request.url)
        body = None
        raw = request.body if hasattr(request, "body") else None
        if raw is None and hasattr(request, "content"):
            raw = request.content
        if raw:
            try:
                body = json.loads(raw if isinstance(raw, (str, bytes)) else bytes(raw))
            except (TypeError, ValueError):
                body = raw
        recorded = Recorded(request.method, url.path.rstrip("/").lower(),
                            {k: v[0] for k, v in parse_qs(url.query).items()}, body)
        self.requests.append(recorded)
        principal = self.principal(request.headers.get("Authorization"))
        if url.netloc == self.blobstore.host:
            refusal = self.blob_refusal(principal, request.method, url.path, recorded.query,
                                        request.headers.get("Authorization"))
            if refusal:
                return raw_response(request, 403, blob_refused(refusal), {"Content-Type": "application/xml"})
            return self.blobstore.send(request)
        if url.netloc == f"{self.location}.api.azureml.ms":
            if recorded.path != "/discovery":
                refusal = self.authorize(principal, self.data_plane_action(recorded), self._cased(self.prefix))
                if refusal:
                    return json_response(request, 403, authorization_failed(refusal))
            status, answer = self.data_plane(recorded)
            return json_response(request, status, answer)
        if url.netloc != urlparse(ARM).netloc:
            return json_response(request, 404, not_found(request.url))
        refusal = self.authorize(principal, arm_action(request.method, url.path), url.path)
        if refusal:
            return json_response(request, 403, authorization_failed(refusal))
        problems = self.invalid(recorded, url.path)
        if problems:
            return json_response(request, 400, bad_request(problems))
        status, answer = self.answer(recorded)
        return json_response(request, status, answer)

    # ------------------------------------------------------------------ who may, and what is well-formed
    @property
    def names(self) -> Names:
        return Names(self.subscription, self.resource_group, self.workspace, self.workspace_id, self.blobstore.account)

    @property
    def rbac(self) -> Rbac:
        """infra/*.tf's role assignments for this env (built on first use; `infra` may be a changed copy)."""
        if self._rbac is None:
            self._rbac = Rbac(self.env, self.names, **({"infra": self.infra} if self.infra else {}),
                              variables=self.variables)
        return self._rbac

    def principal(self, authorization: Optional[str]) -> Optional[str]:
        """The principal a request's bearer token names, "<env>/" added where the token left it out."""
        named = principal_of(authorization)
        return named if named is None or "/" in named else f"{self.env}/{named}"

    def authorize(self, principal: Optional[str], action: str, scope: str, data: bool = False) -> Optional[str]:
        refusal = self.rbac.denied(principal, action, scope, data=data)
        if refusal:
            self.denied.append((principal, action, scope))
        return refusal

    def blob_refusal(self, principal: Optional[str], method: str, path: str, query: dict,
                     authorization: Optional[str]) -> Optional[str]:
        """Azure Storage's decision on a request to this workspace's storage account: a SAS or the
        account key carries its own permission (the service checks it); a bearer token's principal
        needs a data role covering the blob operation on the container."""
        if "sig" in query or (authorization or "").startswith("SharedKey "):
            return None
        blob = unquote(path).lstrip("/")
        scope = f"{self.names.references()['azurerm_storage_account.this.id']}/blobServices/default/containers/{blob}"
        return self.authorize(principal, blob_data_action(method), scope, data=True)

    @staticmethod
    def data_plane_action(r: Recorded) -> str:
        """Run history (what ml.jobs.stream polls) is the workspace's experiments' runs; a run's files
        (what MLflow logs on Azure) are its artifacts' metadata."""
        verb = "read" if r.method == "GET" else "write"
        if RUN_FILES.fullmatch(r.path):
            return f"{PROVIDER}/workspaces/metadata/artifacts/{verb}"
        return f"{PROVIDER}/workspaces/experiments/runs/{verb}"

    def invalid(self, r: Recorded, path: str) -> List[str]:
        """What azure-ai-ml's own REST models refuse in the body of a PUT/POST/PATCH (azure_rest_models)."""
        if not self.validate or r.method not in ("PUT", "POST", "PATCH"):
            return []
        route, problems = validate_request(r.method, path, r.body if r.body is not None else {}, r.query.get("api-version"))
        if route is not None and not problems and r.method == "PUT" and isinstance(r.body, dict):
            r.stored = strip_read_only(model_class(route.model), r.body)
        if problems:
            self.refused.append((r, problems))
        return problems

    # ------------------------------------------------------------------ what tests look at
    def sent(self, method: str, pattern: str) -> List[Recorded]:
        """The requests of `method` whose workspace-relative path matches `pattern` (a regex)."""
        rx = re.compile(pattern)
        return [r for r in self.requests if r.method == method and rx.fullmatch(self.relative(r.path))]

    def relative(self, path: str) -> str:
        return path[len(self.prefix):].lstrip("/") if path.startswith(self.prefix) else path

    def resource(self, relative: str) -> Optional[dict]:
        return self.resources.get(f"{self.prefix}/{relative}".lower())

    def seed(self, relative: str, properties: dict, **top) -> dict:
        """Put a resource in the workspace as if something else had made it."""
        path = f"{self.prefix}/{relative}".lower()
        self.resources[path] = self._stored(path, {"properties": properties, **top})
        return self.resources[path]

    def seed_cpu_cluster(self) -> dict:
        """The CPU training cluster as Terraform makes it (infra/main.tf: `stage=provision` only checks it)."""
        return self.seed("computes/cpu-cluster", {"computeType": "AmlCompute", "properties": {
            "vmSize": "Standard_DS3_v2", "scaleSettings": {"minNodeCount": 0, "maxNodeCount": 4}}}, location=self.location)

    def on(self, method: str, pattern: str, fn: Callable[[Recorded], tuple]) -> None:
        """Answer requests matching (method, workspace-relative path regex) with fn(recorded)."""
        self.handlers.insert(0, (method, re.compile(pattern), fn))

    # ------------------------------------------------------------------ ARM, by convention
    def _stored(self, path: str, body: dict) -> dict:
        self.clock += 1
        parts = path.split("/")
        kind = "/".join(p for p in parts[parts.index("workspaces") + 2::2]) if "workspaces" in parts else ""
        stored = copy.deepcopy(body)
        stored.update(id=self._cased(path), name=parts[-1],
                      type=f"{PROVIDER}/workspaces/{kind}".rstrip("/"),
                      # ARM's systemData carries who made it too (azure-ai-ml copies createdBy into an
                      # endpoint's properties and sends it back on the next PUT)
                      systemData={"createdAt": f"2026-01-01T00:00:{self.clock:02d}.000000+00:00",
                                  "createdBy": "mnistops-pipeline", "createdByType": "Application",
                                  "lastModifiedAt": f"2026-01-01T00:00:{self.clock:02d}.000000+00:00",
                                  "lastModifiedBy": "mnistops-pipeline", "lastModifiedByType": "Application"})
        stored.setdefault("properties", {})
        if isinstance(stored["properties"], dict):
            stored["properties"].setdefault("provisioningState", "Succeeded")
        return stored

    def _cased(self, path: str) -> str:
        """The resource id with the workspace part as Azure spells it."""
        prefix = (f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}/providers/"
                  f"{PROVIDER}/workspaces/{self.workspace}")
        return prefix + path[len(self.prefix):] if path.startswith(self.prefix) else path

    def answer(self, r: Recorded) -> tuple:
        rel = self.relative(r.path)
        for method, rx, fn in self.handlers:
            if method == r.method and rx.fullmatch(rel):
                return fn(r)
        if r.path == self.prefix and r.method == "GET":
            return 200, self._workspace()
        if r.method == "POST" and rel.endswith("/listkeys") and rel.startswith("onlineendpoints/"):
            return 200, {"primaryKey": "primary-key-1", "secondaryKey": "secondary-key-1"}
        if r.method == "POST" and rel.endswith("/regeneratekeys"):
            return 200, None
        if r.method == "PUT":
            return self._put(r)
        if r.method == "PATCH":
            found = self.resources.get(r.path)
            if found is None:
                return 404, not_found(rel)
            found["properties"].update((r.body or {}).get("properties", {}))
            return 200, found
        if r.method == "DELETE":
            return (200, None) if self.resources.pop(r.path, None) is not None else (204, None)
        if r.method == "GET":
            if r.path in self.resources:
                return 200, self._view(r.path)
            children = self._children(r.path)
            if children is not None:
                return 200, {"value": self._ordered(children, r.query)}
            if re.fullmatch(r"models/[^/]+", rel):
                return self._model_container(r.path, rel)
            return 404, not_found(rel)
        return 404, not_found(rel)

    def data_plane(self, r: Recorded) -> tuple:
        """The workspace's regional services the SDK finds through its discovery URL: run history,
        which ml.jobs.stream polls for a job's status and logs."""
        base = f"https://{self.location}.api.azureml.ms"
        if r.path == "/discovery":
            return 200, {name: base for name in ("api", "catalog", "experimentation", "gallery", "history",
                                                 "hyperdrive", "labeling", "modelmanagement", "pipelines", "studio")}
        files = RUN_FILES.fullmatch(r.path)
        if files:  # tests/azure_run_artifacts.py
            return self.run_artifacts.answer(r.method, files.group(1), files.group(2) or "", r.query, r.body)
        run = re.search(r"/runs/([^/]+)", r.path)
        job = self.resources.get(f"{self.prefix}/jobs/{run.group(1)}".lower()) if run else None
        if job is None:
            return 404, not_found(r.path)
        status = job["properties"]["status"]
        return 200, {"runId": run.group(1), "status": status, "logFiles": self.run_logs.get(run.group(1), {}),
                     "warnings": [], "error": {"error": {"message": "the job failed"}} if status == "Failed" else None,
                     "startTimeUtc": "2026-01-01T00:00:00Z", "endTimeUtc": "2026-01-01T00:01:00Z"}

    def _workspace(self) -> dict:
        return {"id": self._cased(self.prefix), "name": self.workspace, "location": self.location,
                "type": f"{PROVIDER}/workspaces",
                "properties": {"friendlyName": self.workspace, "mlFlowTrackingUri": self.mlflow_uri,
                               "discoveryUrl": f"https://{self.location}.api.azureml.ms/discovery",
                               "workspaceId": self.workspace_id,
                               "provisioningState": "Succeeded"}}

    def _put(self, r: Recorded) -> tuple:
        sent = r.stored if r.stored is not None else r.body  # what ARM keeps: read-only fields dropped
        body = copy.deepcopy(sent) if isinstance(sent, dict) else {"properties": {}}
        rel = self.relative(r.path)
        if rel.startswith("jobs/"):
            body.setdefault("properties", {})["status"] = self.job_status
            body["properties"].setdefault("services", {})["Studio"] = {
                "endpoint": f"https://ml.azure.com/runs/{r.path.split('/')[-1]}", "jobServiceType": "Studio"}
        if re.fullmatch(r"models/[^/]+/versions/[^/]+", rel):  # Azure reads the MLmodel's flavours itself
            body.setdefault("properties", {}).setdefault("flavors", {"python_function": {"data": {}}})
        if re.fullmatch(r"onlineendpoints/[^/]+/deployments/[^/]+", rel):  # what Azure fills in
            body.setdefault("properties", {}).setdefault("scaleSettings", {"scaleType": "Default"})
        if rel.startswith("onlineendpoints/") and rel.count("/") == 1:
            name = r.path.split("/")[-1]
            base = (self.scoring_base or f"https://{name}.{self.location}.inference.ml.azure.com").format(name=name)
            body.setdefault("properties", {}).update(scoringUri=f"{base}/score", swaggerUri=f"{base}/swagger.json")
            body.setdefault("location", self.location)
        existed = r.path in self.resources
        self.resources[r.path] = self._stored(r.path, body)
        if existed:
            self.resources[r.path]["systemData"]["createdAt"] = "2026-01-01T00:00:00.000000+00:00"
        return (200 if existed else 201), self._view(r.path)

    def _view(self, path: str) -> dict:
        return copy.deepcopy(self.resources[path])

    def _children(self, path: str) -> Optional[List[dict]]:
        """GET of a collection: every stored resource one level below, if the path names one."""
        last = path.split("/")[-1]
        if last not in {"versions", "deployments", "onlineendpoints", "schedules", "computes", "jobs", "datastores",
                        "models", "data", "environments", "codes"}:
            return None
        depth = path.count("/") + 1
        return [self._view(p) for p in self.resources if p.startswith(path + "/") and p.count("/") == depth]

    @staticmethod
    def _ordered(items: List[dict], query: Dict[str, str]) -> List[dict]:
        order = (query.get("$orderBy") or query.get("$orderby") or "").lower()
        if "createdtime" in order:
            items = sorted(items, key=lambda i: i["systemData"]["createdAt"], reverse="desc" in order)
        top = query.get("$top")
        return items[:int(top)] if top else items

    def _model_container(self, path: str, rel: str) -> tuple:
        versions = self._children(path + "/versions") or []
        if not versions:
            return 404, not_found(rel)
        latest = max(int(v["name"]) for v in versions)
        return 200, {"id": self._cased(path), "name": path.split("/")[-1], "type": f"{PROVIDER}/workspaces/models",
                     "properties": {"latestVersion": str(latest), "nextVersion": str(latest + 1),
                                    "provisioningState": "Succeeded"}}


class FakeAzure(_InMemoryTransport):
    """Several workspaces (e.g. QA's and PROD's, in other subscriptions) behind one transport: each
    request goes to the workspace its path names."""

    def __init__(self, *workspaces: FakeWorkspace):
        self.workspaces = workspaces

    def send(self, request, **kwargs):
        url = urlparse(request.url)
        for ws in self.workspaces:
            if ws.prefix in url.path.lower() or url.netloc == ws.blobstore.host:
                return ws.send(request, **kwargs)
        for ws in self.workspaces:  # the discovery document: by the workspace's region
            if url.netloc == f"{ws.location}.api.azureml.ms":
                return ws.send(request, **kwargs)
        return json_response(request, 404, not_found(request.url))


# --------------------------------------------------------------------------- the data collector's files

COLLECTOR_ROOT = "modelDataCollector"  # in the workspace's default blob datastore


def collector_record(collection: str, rows: List[dict], t: float, correlation_id: str, endpoint: str,
                     deployment: str, subscription: str = "00000000-0000-0000-0000-000000000000") -> dict:
    """One line of a collector file, as Azure ML's docs show it ("Store collected data in Blob Storage")."""
    data = json.dumps(rows, separators=(",", ":"))
    return {"specversion": "1.0", "id": str(uuid.uuid4()),
            "source": f"/subscriptions/{subscription}/resourceGroups/rg/providers/{PROVIDER}/workspaces/ws/"
                      f"onlineEndpoints/{endpoint}/deployments/{deployment}",
            "type": f"azureml.inference.{collection}", "datacontenttype": "application/json",
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)), "data": rows,
            "correlationid": correlation_id, "xrequestid": correlation_id, "modelversion": "default",
            "collectdatatype": "pandas.core.frame.DataFrame", "agent": "azureml-ai-monitoring/1.0.0",
            "contentrange": f"bytes 0-{len(data) - 1}/{len(data)}"}


def collector_folder(endpoint: str, deployment: str, collection: str) -> str:
    """Where a deployment's collection goes: its own folder, except ground_truth, whose data path the
    deployment spec sets to one folder per endpoint (data_assets.ground_truth_path)."""
    if collection == "ground_truth":
        return f"{COLLECTOR_ROOT}/{endpoint}/ground_truth"
    return f"{COLLECTOR_ROOT}/{endpoint}/{deployment}/{collection}"


def write_collector_files(store: BlobContainer, endpoint: str, deployment: str, records: List[dict],
                          instance: str = "mdc-0") -> None:
    """Append records to the hourly files of their collections (.../YYYY/MM/DD/HH/<instance>.jsonl)."""
    for rec in records:
        collection = rec["type"].rsplit(".", 1)[1]
        hour = time.strftime("%Y/%m/%d/%H", time.gmtime(calendar_seconds(rec["time"])))
        name = f"{collector_folder(endpoint, deployment, collection)}/{hour}/{instance}.jsonl"
        store.put(name, store.blobs.get(name, b"") + json.dumps(rec, separators=(",", ":")).encode() + b"\n")


def calendar_seconds(iso: str) -> float:
    return float(calendar.timegm(time.strptime(iso, "%Y-%m-%dT%H:%M:%SZ")))


def sidecar_records(posts: List[dict], endpoint: str, deployment: str) -> List[dict]:
    """What the collector sidecar makes of what azureml-ai-monitoring's Collector posted to it
    (`{"headers": {...}, "body": bytes}`, headers lower-cased): one record per post, except that
    posts of one collection within the same second are batched into one record under the first
    post's correlation id, as Azure's docs say the collector does ("Data collector batching")."""
    out: List[dict] = []
    for post in posts:
        h = post["headers"]
        collection = h["ce-type"].rsplit(".", 1)[1]
        t = float(h["ce-time"])
        rows = json.loads(post["body"])
        last = out[-1] if out else None
        if last is not None and last["type"].endswith(f".{collection}") and calendar_seconds(last["time"]) == int(t):
            last["data"].extend(rows)
            size = len(json.dumps(last["data"], separators=(",", ":")))
            last["contentrange"] = f"bytes 0-{size - 1}/{size}"
            continue
        out.append(collector_record(collection, rows, t, h.get("ce-x-request-id", ""), endpoint, deployment))
    return out
