"""Azure for a separate process, reached at Azure's own host names: pipeline steps run as an agent
runs them (`python -m mnistops ...` in a subprocess) talk to https://management.azure.com, the
workspace's regional host and https://<account>.blob.core.windows.net, and arrive here.

How: every Azure client of the process honours `HTTPS_PROXY` (azure-core's RequestsTransport, which
azure-ai-ml and azure-storage-blob use, keeps requests' `trust_env`; azureml-mlflow and MLflow use
requests too). A subprocess started with `environment()` sends each https request as a CONNECT to
`ConnectProxy` (test plumbing: it reads the CONNECT line and pipes bytes, nothing else), which
tunnels by host name to a local TLS server whose certificate a local authority (trustme) issued for
that name; `REQUESTS_CA_BUNDLE`/`SSL_CERT_FILE` make the clients trust it. The client verifies the
certificate against the host it asked for, as it would Azure's.

What answers (real = a program the project did not write):
- management.azure.com and <region>.api.azureml.ms (discovery, run history): `ArmFront`, an HTTPS
  server in the test process that hands each request to the FakeAzure/FakeWorkspace transport
  (tests/azure_workspace.py: the project's picture of the resource provider, with azure-ai-ml's own
  REST-model validation and infra/*.tf's role assignments); the test reads `ws.requests` afterwards;
- <account>.blob.core.windows.net: **Azurite** (Microsoft's storage emulator, npm `azurite`, in
  .tools/ as .ci/run installs it), real; it reads the account from the production-style host name,
  checks shared keys and, with `--oauth basic`, bearer tokens' issuer, audience and lifetime (not
  their signature, not roles: blob RBAC is not checked on this path);
- the workspace's MLflow: the real `mlflow server` of tests/azure_mlflow_server.py, at 127.0.0.1
  (NO_PROXY), where the workspace's mlflowTrackingUri points;
- sign-in: `signed_in_az`, a stand-in `az` on PATH (what AzureCLI@2 leaves on an agent), reached by
  DefaultAzureCredential's AzureCliCredential: per resource, a token naming its principal; for
  storage an unsigned JWT of Entra ID's shape, which Azurite's basic OAuth accepts.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from socketserver import StreamRequestHandler, ThreadingTCPServer
from typing import Dict, Iterator, List, Optional

from azure_rbac import authorization_failed, mlflow_action
from azure_run_artifacts import CONTAINER
from conftest import REPO, free_port, needs_tool

AZURITE = REPO / ".tools" / "node_modules" / "azurite" / "dist" / "src" / "blob" / "main.js"
INSTALL_AZURITE = "npm install --prefix .tools --no-audit --no-fund -q azurite"
ARM_HOST = "management.azure.com"
TENANT = "00000000-0000-0000-0000-0000000000aa"
NAMES = (ARM_HOST, "*.api.azureml.ms", "*.blob.core.windows.net", "127.0.0.1", "localhost")


# ----------------------------------------------------------------------------- certificates

class HostAuthority:
    """A local certificate authority and one server certificate for Azure's host names (and 127.0.0.1)."""

    def __init__(self, root: Path, ca=None):
        import trustme

        root.mkdir(parents=True, exist_ok=True)
        self.ca = ca or trustme.CA()
        self.ca_file = root / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        cert = self.ca.issue_cert(*NAMES)
        self.key_file, self.cert_file = root / "azure-key.pem", root / "azure-cert.pem"
        cert.private_key_pem.write_to_path(str(self.key_file))
        with open(self.cert_file, "wb") as out:
            for pem in cert.cert_chain_pems:
                out.write(pem.bytes())

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(self.cert_file), str(self.key_file))
        return context


# ----------------------------------------------------------------------------- the proxy

class ConnectProxy:
    """An HTTP proxy that only tunnels: `CONNECT host:443` goes to the local port `routes` names for
    that host (exact, or a `*.suffix` entry); any other host is refused (502), so nothing leaks out.
    `tunnels` lists the hosts asked for, in order."""

    def __init__(self, routes: Dict[str, int]):
        self.routes, self.tunnels, self.refused = dict(routes), [], []
        self.port = free_port()
        proxy = self

        class Handler(StreamRequestHandler):
            def handle(self):
                head = self.rfile.readline(8192).decode("latin-1")
                while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                    pass
                method, _, rest = head.partition(" ")
                target = rest.split(" ", 1)[0]
                host = target.rsplit(":", 1)[0].lower()
                port = proxy.route(host) if method == "CONNECT" else None
                if port is None:
                    proxy.refused.append(head.strip())
                    self.wfile.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                    return
                proxy.tunnels.append(host)
                upstream = socket.create_connection(("127.0.0.1", port), timeout=30)
                self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                self.wfile.flush()
                pipe(self.connection, upstream)

        class Server(ThreadingTCPServer):
            daemon_threads, allow_reuse_address = True, True

        self.server = Server(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def route(self, host: str) -> Optional[int]:
        if host in self.routes:
            return self.routes[host]
        for name, port in self.routes.items():
            if name.startswith("*.") and host.endswith(name[1:]):
                return port
        return None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def pipe(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until either side closes."""
    sockets = [a, b]
    try:
        while True:
            readable, _, broken = select.select(sockets, [], sockets, 300)
            if broken or not readable:
                return
            for s in readable:
                data = s.recv(65536)
                if not data:
                    return
                (b if s is a else a).sendall(data)
    except OSError:
        return
    finally:
        b.close()


# ----------------------------------------------------------------------------- ARM over HTTPS

# headers that belong to one connection, or that the answer's own framing replaces
PER_CONNECTION = ("connection", "proxy-connection", "keep-alive", "transfer-encoding", "content-length")


def reply(handler: BaseHTTPRequestHandler, status: int, headers, content: bytes) -> None:
    """An answer framed by its Content-Length (the upstream's framing, date and server dropped)."""
    handler.send_response(status)
    for key, value in headers:
        if key.lower() not in (*PER_CONNECTION, "date", "server"):
            handler.send_header(key, value)
    handler.send_header("Content-Length", str(len(content)))
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(content)


def relay(handler: BaseHTTPRequestHandler, port: int, body: Optional[bytes], authority: "HostAuthority",
          keep_host: bool) -> None:
    """The request as it came to a TLS server on 127.0.0.1:`port` (certificate from `authority`'s CA),
    and its answer back; `keep_host`: the upstream reads Azure's host name from the Host header."""
    import http.client

    context = ssl.create_default_context(cafile=str(authority.ca_file))
    upstream = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=120)
    dropped = PER_CONNECTION if keep_host else (*PER_CONNECTION, "host")
    upstream.request(handler.command, handler.path, body=body,
                     headers={k: v for k, v in handler.headers.items() if k.lower() not in dropped})
    answer = upstream.getresponse()
    content = answer.read()
    upstream.close()
    reply(handler, answer.status, answer.getheaders(), content)


class ArmFront:
    """HTTPS in front of an azure-core transport (FakeAzure / FakeWorkspace): each request becomes the
    azure.core HttpRequest that transport's `send` takes, its answer goes back as HTTP. One request at
    a time (the fakes keep plain dicts)."""

    def __init__(self, transport, authority: HostAuthority):
        self.transport, self.port, self.lock = transport, free_port(), threading.Lock()
        self.mlflow: Dict[str, tuple] = {}  # "/mlflow/v2.0<workspace scope>/" -> (its server's port, the FakeWorkspace)
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def answer(self):
                from azure.core.rest import HttpRequest

                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                host = self.headers.get("Host", ARM_HOST).split(":")[0]
                server = front.mlflow_server(self.path)
                if server is not None:
                    port, ws = server
                    with front.lock:  # Azure ML's RBAC on its MLflow routes, as on ARM's
                        refusal = ws.authorize(ws.principal(self.headers.get("Authorization")),
                                               mlflow_action(self.command, self.path), ws._cased(ws.prefix))
                    if refusal:
                        return reply(self, 403, [("Content-Type", "application/json")], json.dumps(
                            {**authorization_failed(refusal), "error_code": "PERMISSION_DENIED",
                             "message": refusal}).encode())
                    # the workspace's MLflow REST calls, to its `mlflow server` (TLS, the same CA)
                    return relay(self, port, body, authority, keep_host=False)
                request = HttpRequest(self.command, f"https://{host}{self.path}",
                                      headers={k: v for k, v in self.headers.items()}, content=body)
                with front.lock:
                    response = front.transport.send(request)
                reply(self, response.status_code, response.headers.items(), response.content or b"")

            do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = do_HEAD = answer

        class Server(ThreadingHTTPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", self.port), Handler)
        self.server.socket = authority.server_context().wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def mlflow_server(self, path: str) -> Optional[tuple]:
        lowered = path.lower()
        return next((found for prefix, found in self.mlflow.items() if lowered.startswith(prefix)), None)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ----------------------------------------------------------------------------- blob storage: Azurite

class BlobFront:
    """HTTPS in front of Azurite for `<account>.blob.core.windows.net`: Azure Storage's RBAC, which Azurite
    does not have (it checks keys, SAS signatures and a token's shape, not roles), decided per request
    by the workspace owning the account (FakeWorkspace.blob_refusal: a bearer token's principal needs a
    data role from infra/*.tf); an allowed request goes on to Azurite as it came."""

    def __init__(self, workspaces: Dict[str, object], azurite_port: int, authority: HostAuthority, lock):
        self.port = free_port()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def answer(self):
                from urllib.parse import parse_qs, urlparse

                from azure_workspace import blob_refused

                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                ws = workspaces.get(self.headers.get("Host", "").split(".")[0])
                if ws is not None:
                    url = urlparse(self.path)
                    authorization = self.headers.get("Authorization")
                    with lock:
                        refusal = ws.blob_refusal(ws.principal(authorization), self.command, url.path,
                                                  {k: v[0] for k, v in parse_qs(url.query).items()}, authorization)
                    if refusal:
                        return reply(self, 403, [("Content-Type", "application/xml"),
                                                 ("x-ms-error-code", "AuthorizationPermissionMismatch")],
                                     blob_refused(refusal))
                relay(self, azurite_port, body, authority, keep_host=True)  # Azurite reads the account from Host

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = answer

        class Server(ThreadingHTTPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", self.port), Handler)
        self.server.socket = authority.server_context().wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def account_key(account: str) -> str:
    """A storage account key of Azure's shape (64 bytes, base64), fixed per account name."""
    return base64.b64encode((account * 64).encode()[:64]).decode()


class Azurite:
    """Azurite's blob service over TLS (certificate for *.blob.core.windows.net), OAuth basic, with
    these accounts (AZURITE_ACCOUNTS); its data in `root`."""

    def __init__(self, root: Path, authority: HostAuthority, accounts: List[str]):
        if shutil.which("node") is None or not AZURITE.is_file():  # fails in CI, skips elsewhere
            needs_tool(f"Azurite is not installed ({INSTALL_AZURITE}; bash .ci/run installs it)")
        self.root, self.accounts, self.port = root, accounts, free_port()
        root.mkdir(parents=True, exist_ok=True)
        log = open(root / "azurite.log", "ab")
        self.proc = subprocess.Popen(
            [shutil.which("node") or "node", str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(self.port),
             "--location", str(root / "data"), "--cert", str(authority.cert_file), "--key", str(authority.key_file),
             "--oauth", "basic", "--skipApiVersionCheck", "--disableTelemetry", "--silent"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "AZURITE_ACCOUNTS": ";".join(f"{a}:{account_key(a)}" for a in accounts)})
        log.close()

    def wait(self, timeout: float = 60) -> "Azurite":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"Azurite exited {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"Azurite not listening in {timeout}s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return (self.root / "azurite.log").read_text(errors="replace")

    def container(self, account: str, name: str, create: bool = True):
        """A ContainerClient of the test process (account key); call it, and use it, inside
        `AzureStandIn.reached()`: it goes through the proxy like everyone else."""
        from azure.storage.blob import BlobServiceClient

        service = BlobServiceClient(f"https://{account}.blob.core.windows.net",
                                    credential={"account_name": account, "account_key": account_key(account)})
        client = service.get_container_client(name)
        if create and not client.exists():
            client.create_container()
        return client

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


# ----------------------------------------------------------------------------- signing in

AZ = '''#!{python}
"""A stand-in Azure CLI, signed in as {principal!r} (tests/azure_proxy.py): answers only
`az account get-access-token --resource R`, as AzureCliCredential asks; the principal can be changed
per step with STANDIN_AZ_PRINCIPAL."""
import base64, json, os, sys, time

args = sys.argv[1:]
if args[:2] != ["account", "get-access-token"]:
    sys.exit("stand-in az: only `az account get-access-token`")
resource = args[args.index("--resource") + 1] if "--resource" in args else "https://management.azure.com/"
principal = os.environ.get("STANDIN_AZ_PRINCIPAL", {principal!r})
now = int(time.time())
if "storage.azure.com" in resource:  # Entra ID's shape: Azurite (--oauth basic) reads iss, aud, nbf, exp
    b64 = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()
    token = b64({{"alg": "none", "typ": "JWT"}}) + "." + b64({{
        "aud": "https://storage.azure.com", "iss": "https://sts.windows.net/{tenant}/", "iat": now, "nbf": now - 60,
        "exp": now + 3600, "tid": "{tenant}", "xms_mnistops_principal": principal}}) + "."
else:
    token = {prefix!r} + principal
print(json.dumps({{"accessToken": token, "expiresOn": time.strftime("%Y-%m-%d %H:%M:%S.000000", time.localtime(now + 3600)),
                  "expires_on": now + 3600, "subscription": "", "tenant": "{tenant}", "tokenType": "Bearer"}}))
'''


def signed_in_az(bin_dir: Path, principal: str = "qa/pipeline") -> Path:
    """An `az` on PATH signed in as `principal` (azure_rbac's "<env>/<identity>")."""
    from azure_rbac import TOKEN_PREFIX

    bin_dir.mkdir(parents=True, exist_ok=True)
    az = bin_dir / "az"
    az.write_text(AZ.format(python=sys.executable, principal=principal, tenant=TENANT, prefix=TOKEN_PREFIX))
    az.chmod(0o755)
    return az


# ----------------------------------------------------------------------------- all together

class AzureStandIn:
    """Proxy + ARM front + Azurite for a FakeAzure of `workspaces`; `environment()` is what a
    subprocess needs to reach them at Azure's names."""

    def __init__(self, root: Path, transport, accounts: List[str], authority: Optional[HostAuthority] = None,
                 principal: str = "qa/pipeline"):
        self.root = root
        self.authority = authority or HostAuthority(root / "tls")
        self.bin = root / "bin"
        signed_in_az(self.bin, principal)
        self.azurite = Azurite(root / "azurite", self.authority, accounts)
        self.front = ArmFront(transport, self.authority)
        owners = {ws.blobstore.account: ws for ws in getattr(transport, "workspaces", (transport,))}
        self.blob = BlobFront(owners, self.azurite.port, self.authority, self.front.lock)
        self.proxy = ConnectProxy({f"{ARM_HOST}": self.front.port, "*.api.azureml.ms": self.front.port,
                                   "*.blob.core.windows.net": self.blob.port})
        for ws in owners.values():
            self.answer_list_secrets(ws)
        try:
            self.azurite.wait()
        except BaseException:
            self.stop()
            raise

    def answer_list_secrets(self, ws) -> None:
        """Azure ML's answer to `POST datastores/<name>/listSecrets` with `expirableSecret` (what azure-ai-ml
        asks before it uploads a data asset or a code folder): SasDatastoreSecrets, a SAS for the datastore's
        container signed with the account's key (Azurite checks it). The caller needs the workspace role's
        `datastores/listsecrets/action` (checked before this runs); without a secret, azure-ai-ml falls
        back to its own token, which needs a blob data role."""
        import datetime

        from azure.storage.blob import ContainerSasPermissions, generate_container_sas

        def answer(recorded):
            store = ws.resource(f"datastores/{recorded.path.split('/')[-2]}")["properties"]
            account = store["accountName"]
            sas = generate_container_sas(
                account, store["containerName"], account_key=account_key(account),
                permission=ContainerSasPermissions(read=True, add=True, create=True, write=True, list=True),
                expiry=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1))
            return 200, {"secretsType": "Sas", "sasToken": sas}

        ws.on("POST", r"datastores/[^/]+/listsecrets", answer)

    def attach_mlflow(self, azure_mlflow, *workspaces):
        """Each FakeWorkspace's MLflow: a real `mlflow server` (tests/azure_mlflow_server.py, whose CA
        this stand-in shares), and the tracking URI Azure reports, at the workspace's regional host
        (azureml://<region>.api.azureml.ms/mlflow/v1.0/<scope>): azureml-mlflow turns it into
        https://<region>.api.azureml.ms/mlflow/v2.0/<scope>/api/2.0/mlflow/..., which the front relays."""
        azure_mlflow.attach(*workspaces)
        return self.relay_mlflow(*workspaces)

    def relay_mlflow(self, *workspaces):
        """attach_mlflow for workspaces whose MLflow server is attached already (and keeps its runs)."""
        for ws in workspaces:
            server = ws.mlflow_server
            ws.mlflow_uri = f"azureml://{ws.location}.api.azureml.ms/mlflow/v1.0{server.scope}"
            self.front.mlflow[f"/mlflow/v2.0{server.scope}/".lower()] = (server.port, ws)
            # a run's files: Azure's artifact URIs, run history's routes, the workspace's storage
            server.artifacts_as_azure(f"{ws.location}.api.azureml.ms")
            with self.reached():
                self.azurite.container(ws.blobstore.account, CONTAINER)
        return workspaces[0] if len(workspaces) == 1 else workspaces

    def serve_pending_uploads(self, *workspaces) -> None:
        """Azure ML's answer to azure-ai-ml's `POST codes/<name>/versions/<v>/startPendingUpload`
        (PendingUploadResponseDto, TemporaryBlobReference): a new container in the workspace's
        storage account (made here in Azurite) and a SAS for it signed with the account's key, so
        Azurite checks the signature and the permissions. azure-ai-ml uploads the folder into that
        container and records the code's URI as urljoin(blobUri, "<container>/<folder>"): blobUri is
        the container's URL (one container per upload; Azure names it, here a uuid)."""
        import datetime
        import uuid

        from azure.storage.blob import ContainerClient, ContainerSasPermissions, generate_container_sas

        for ws in workspaces:
            def answer(recorded, ws=ws):
                account, container = ws.blobstore.account, str(uuid.uuid4())
                ContainerClient(f"https://127.0.0.1:{self.azurite.port}/{account}", container,
                                credential={"account_name": account, "account_key": account_key(account)},
                                connection_verify=str(self.authority.ca_file)).create_container()
                sas = generate_container_sas(
                    account, container, account_key=account_key(account),
                    permission=ContainerSasPermissions(read=True, write=True, create=True, add=True, list=True),
                    expiry=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1))
                url = f"https://{ws.blobstore.host}/{container}"
                return 200, {"pendingUploadId": str(uuid.uuid4()), "pendingUploadType": "TemporaryBlobReference",
                             "blobReferenceForConsumption": {
                                 "blobUri": url, "credential": {"credentialType": "SAS", "sasUri": f"{url}?{sas}"},
                                 "storageAccountArmId": ws.names.references()["azurerm_storage_account.this.id"]}}

            ws.on("POST", r"codes/[^/]+/versions/[^/]+/startpendingupload", answer)

    def environment(self) -> Dict[str, str]:
        ca = str(self.authority.ca_file)
        return {"HTTPS_PROXY": self.proxy.url, "https_proxy": self.proxy.url,
                "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
                "REQUESTS_CA_BUNDLE": ca, "SSL_CERT_FILE": ca,
                "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",
                "AZUREML_CURRENT_CLOUD": "AzureCloud"}

    @contextlib.contextmanager
    def reached(self) -> Iterator[None]:
        """This process reaches the stand-in as a step does (e.g. to put or list blobs in Azurite)."""
        saved = {key: os.environ.get(key) for key in self.environment()}
        os.environ.update(self.environment())
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def stop(self) -> None:
        self.proxy.stop()
        self.front.stop()
        self.blob.stop()
        self.azurite.stop()


class AzuriteStore:
    """The workspace's blob container in Azurite, with BlobContainer's `put`/`blobs` (what
    tests/azure_workspace.py's write_collector_files writes through), so the collector's files
    live in Microsoft's emulator instead of the handwritten container."""

    def __init__(self, stand_in: AzureStandIn, ws):  # ws: a tests/azure_workspace.py FakeWorkspace
        self.stand_in, self.blobs = stand_in, {}
        with stand_in.reached():
            self.client = stand_in.azurite.container(ws.blobstore.account, ws.blobstore.container)

    def put(self, name: str, content: bytes) -> None:
        self.blobs[name] = content
        with self.stand_in.reached():
            self.client.upload_blob(name, content, overwrite=True)
