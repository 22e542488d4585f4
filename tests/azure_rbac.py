"""Who may do what in the stand-in Azure: the role assignments of infra/*.tf (read with python-hcl2, as
Terraform would create them for one env), Azure's published built-in role definitions
(tests/data/azure-roles/, with their source) and the custom role defined in infra/. The fake's
transport asks `Rbac.denied(principal, action, scope)` for every call and answers 403
AuthorizationFailed where no assignment covers it, so a missing role fails a test as it fails Azure.

Principals are named, not numbered: "<env>/<identity>", where identity is what infra/ creates —
"pipeline" (azurerm_user_assigned_identity.pipeline), "cluster:cpu" / "cluster:gpu" (a compute
cluster's system-assigned identity), "instance:notebook" (the compute instance's), "endpoint" (the
online endpoint's). `token_for(principal)` is the bearer token a StaticToken hands out;
`principal_of(token)` reads it back. PROD's pipeline identity acting in QA is "prod/pipeline",
which QA's infra lets in through var.cross_env_principal_ids (the README's step: PROD's
`terraform output pipeline_principal_id` into qa.tfvars) — `Rbac(..., variables=...)` sets it.

Actions are Azure's operation names: `arm_action(method, path)` for Resource Manager calls
(GET -> read, PUT/PATCH -> write, DELETE -> delete, POST .../<verb> -> <type>/<verb>/action),
`blob_data_action` for Blob Storage, `mlflow_action` for the workspace's MLflow and artifact routes.
"""

from __future__ import annotations

import base64
import functools
import json
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

from test_jobs import unquote  # python-hcl2's values without HCL's quotes: one copy, beside terraform fmt's test

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
ROLES_FILE = REPO / "tests" / "data" / "azure-roles" / "builtin-roles.json"
ML = "Microsoft.MachineLearningServices"
TOKEN_PREFIX = "mnistops-fake-entra-token;principal="

# the identity each resource type gives its principal (the name after "<env>/")
IDENTITY_OF = {
    "azurerm_user_assigned_identity": "{name}",
    "azurerm_machine_learning_compute_cluster": "cluster:{name}",
    "azurerm_machine_learning_compute_instance": "instance:{name}",
    "azapi_resource": "{name}",
}


def token_for(principal: str) -> str:
    return TOKEN_PREFIX + principal


def principal_of(authorization: Optional[str]) -> Optional[str]:
    """The principal a bearer token names (None: no token, or not one of ours): the stand-in's plain
    tokens, or the claim `xms_mnistops_principal` of its JWTs (a job's MLFLOW_TRACKING_TOKEN, storage)."""
    token = (authorization or "").split(" ", 1)[-1].strip()
    if token.startswith(TOKEN_PREFIX):
        return token[len(TOKEN_PREFIX):]
    parts = token.split(".")
    if len(parts) == 3:
        try:
            claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        except ValueError:
            return None
        return claims.get("xms_mnistops_principal") if isinstance(claims, dict) else None
    return None


def object_id(principal: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"mnistops-principal:{principal}"))


# --------------------------------------------------------------------------- actions


def arm_action(method: str, path: str) -> str:
    """The Azure operation a Resource Manager request is (path: /subscriptions/.../providers/<ns>/...)."""
    parts = [p for p in path.split("?", 1)[0].split("/") if p]
    lowered = [p.lower() for p in parts]
    if "providers" not in lowered:
        return "Microsoft.Resources/subscriptions/resourceGroups/" + ("read" if method == "GET" else "write")
    i = len(lowered) - 1 - lowered[::-1].index("providers")
    namespace, rest = parts[i + 1], parts[i + 2:]
    types = rest[0::2]
    verb = {"GET": "read", "HEAD": "read", "PUT": "write", "PATCH": "write", "DELETE": "delete"}.get(method)
    if len(rest) % 2 == 1:  # a collection (GET) or an action on a resource (POST .../listKeys)
        if method == "POST":
            return f"{namespace}/{'/'.join(types[:-1])}/{types[-1]}/action"
        return f"{namespace}/{'/'.join(types)}/{verb or 'read'}"
    if method == "POST":
        return f"{namespace}/{'/'.join(types)}/action"
    return f"{namespace}/{'/'.join(types)}/{verb}"


def blob_data_action(method: str) -> str:
    verb = {"GET": "read", "HEAD": "read", "PUT": "write", "POST": "write", "DELETE": "delete"}[method]
    return f"Microsoft.Storage/storageAccounts/blobServices/containers/blobs/{verb}"


# The workspace's MLflow server (Azure ML's own, behind the azureml:// tracking URI): which workspace
# operation each REST route is. Runs and experiments are the workspace's experiments; a run's files
# are its artifacts (metadata/artifacts); MLflow's model registry is the workspace's models.
MLFLOW_ROUTES: List[Tuple[str, str]] = [
    (r"mlflow-artifacts/.*", "metadata/artifacts/{rw}"),
    (r"mlflow/artifacts/.*", "metadata/artifacts/read"),
    (r"mlflow/(registered-models|model-versions)/.*", "models/{rw}"),
    (r"mlflow/experiments/(create|update|delete|restore|set-experiment-tag)", "experiments/write"),
    (r"mlflow/experiments/.*", "experiments/read"),
    (r"mlflow/(runs/(get|search)|metrics/get-history.*)", "experiments/runs/read"),
    (r"mlflow/(runs|metrics|logged-models|traces)/.*", "experiments/runs/{rw}"),
]


def mlflow_action(method: str, path: str) -> str:
    route = re.sub(r"^.*?/(ajax-)?api/2\.0/", "", path.split("?", 1)[0])
    rw = "read" if method in ("GET", "HEAD") else "delete" if method == "DELETE" else "write"
    for pattern, action in MLFLOW_ROUTES:
        if re.fullmatch(pattern, route):
            return f"{ML}/workspaces/" + action.format(rw=rw)
    return f"{ML}/workspaces/experiments/runs/{rw}"


# --------------------------------------------------------------------------- roles


def matches(pattern: str, action: str) -> bool:
    """Azure RBAC's wildcard: `*` matches any characters, case-insensitively, and `a/*/b` covers
    `a/b` too (AzureML Data Scientist's notActions list workspaces/write and workspaces/delete
    against its workspaces/*/write and workspaces/*/delete: those would cover them otherwise)."""
    regex = re.escape(pattern).replace(r"/\*/", "/(?:.*/)?").replace(r"\*", ".*")
    return re.fullmatch(regex, action, re.I) is not None


@dataclass(frozen=True)
class Role:
    name: str
    actions: Tuple[str, ...] = ()
    not_actions: Tuple[str, ...] = ()
    data_actions: Tuple[str, ...] = ()
    not_data_actions: Tuple[str, ...] = ()

    def allows(self, action: str, data: bool = False) -> bool:
        grant, deny = (self.data_actions, self.not_data_actions) if data else (self.actions, self.not_actions)
        return any(matches(p, action) for p in grant) and not any(matches(p, action) for p in deny)


@functools.lru_cache(maxsize=1)
def builtin_roles() -> Dict[str, Role]:
    roles = json.loads(ROLES_FILE.read_text())["roles"]
    return {name: Role(name, tuple(r.get("actions", ())), tuple(r.get("notActions", ())),
                       tuple(r.get("dataActions", ())), tuple(r.get("notDataActions", ())))
            for name, r in roles.items()}


# --------------------------------------------------------------------------- infra/*.tf


def _load(path: Path) -> dict:
    import hcl2

    with path.open() as f:
        return unquote(hcl2.load(f))


@functools.lru_cache(maxsize=8)
def _terraform(infra: str, stamp: tuple) -> dict:
    blocks: Dict[str, dict] = {"resource": {}, "variable": {}, "locals": {}}
    for tf in sorted(Path(infra).glob("*.tf")):
        doc = _load(tf)
        for item in doc.get("resource", []):
            for kind, named in item.items():
                blocks["resource"].setdefault(kind, {}).update(named)
        for item in doc.get("variable", []):
            blocks["variable"].update(item)
        for item in doc.get("locals", []):
            blocks["locals"].update(item)
    return blocks


def terraform(infra: Path = INFRA) -> dict:
    """{"resource": {type: {name: body}}, "variable": {...}, "locals": {...}} of infra/*.tf (cached by mtime)."""
    files = sorted(Path(infra).glob("*.tf"))
    return _terraform(str(infra), tuple((f.name, f.stat().st_mtime_ns) for f in files))


@dataclass(frozen=True)
class Names:
    """Where one env's resources are, as ARM ids (the fake's workspace, its storage and registry)."""
    subscription: str
    resource_group: str
    workspace: str
    workspace_id: str
    storage_account: str
    registry: str = "crmnistops"

    def references(self) -> Dict[str, str]:
        rg = f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}"
        return {
            "azurerm_resource_group.this.id": rg,
            "azurerm_machine_learning_workspace.this.id": f"{rg}/providers/{ML}/workspaces/{self.workspace}",
            "azurerm_machine_learning_workspace.this.workspace_id": self.workspace_id,
            "azurerm_storage_account.this.id": f"{rg}/providers/Microsoft.Storage/storageAccounts/{self.storage_account}",
            "azurerm_container_registry.this.id": f"{rg}/providers/Microsoft.ContainerRegistry/registries/{self.registry}",
            "data.azurerm_client_config.current.subscription_id": self.subscription,
        }


@dataclass(frozen=True)
class Assignment:
    resource: str  # azurerm_role_assignment.<name>
    principal: str
    scope: str
    role: Role


class InfraError(AssertionError):
    """infra/ says something this reader cannot place: the test must fail, never guess."""


class Rbac:
    """The role assignments one env's infra/ creates, evaluated for that env's names."""

    def __init__(self, env: str, names: Names, infra: Path = INFRA, variables: Optional[dict] = None):
        self.env, self.names, self.infra = env, names, Path(infra)
        tf = terraform(self.infra)
        self.tf = tf
        self.variables = {k: v.get("default") for k, v in tf["variable"].items()}
        tfvars = self.infra / f"{env}.tfvars"
        if tfvars.is_file():
            self.variables.update(_load(tfvars))
        self.variables.update(variables or {})
        self.assignments = self._assignments()

    # ------------------------------------------------------------------ evaluation
    def _var(self, name: str):
        if name not in self.variables:
            raise InfraError(f"infra/ uses var.{name}, which it does not declare")
        return self.variables[name]

    def _count(self, body: dict) -> int:
        expr = body.get("count")
        if expr is None:
            return 1
        if isinstance(expr, int):
            return expr
        m = re.fullmatch(r"\$\{var\.(\w+) \? (\d+) : (\d+)\}", expr)
        if m:
            return int(m[2]) if self._var(m[1]) else int(m[3])
        m = re.fullmatch(r"\$\{length\(var\.(\w+)\) > 0 \? (\d+) : (\d+)\}", expr)
        if m:
            return int(m[2]) if len(self._var(m[1]) or []) > 0 else int(m[3])
        raise InfraError(f"cannot evaluate count = {expr}")

    def _exists(self, kind: str, name: str) -> bool:
        body = self.tf["resource"].get(kind, {}).get(name)
        return body is not None and self._count(body) > 0

    def _identities(self, expr: str) -> List[str]:
        """The principals an expression names: resource identities it references (that exist) and
        the values of list variables (other envs' principals)."""
        found: List[str] = []
        for kind, name in re.findall(r"\b(azurerm_\w+|azapi_resource)\.(\w+)", expr):
            if kind in IDENTITY_OF and self._exists(kind, name):
                found.append(f"{self.env}/" + IDENTITY_OF[kind].format(name=name))
        for var in re.findall(r"\bvar\.(\w+)", expr):
            found.extend(str(v) for v in (self._var(var) or []))
        return list(dict.fromkeys(found))

    def _principals(self, body: dict) -> List[str]:
        principal = str(body["principal_id"])
        if "each." in principal:
            source = str(body.get("for_each", ""))
            local = re.fullmatch(r"\$\{local\.(\w+)\}", source)
            if local:
                source = str(self.tf["locals"][local[1]])
            return self._identities(source)
        return self._identities(principal)

    def _scope(self, expr: str) -> str:
        refs = self.names.references()

        def value(m: "re.Match[str]") -> str:
            if m[1] not in refs:
                raise InfraError(f"the stand-in cannot place scope reference {m[1]}")
            return refs[m[1]]
        return re.sub(r"\$\{([^}]+)\}", value, expr)

    def _role(self, body: dict) -> Role:
        if "role_definition_name" in body:
            name = body["role_definition_name"]
            if name not in builtin_roles():
                raise InfraError(f"role '{name}' is not vendored in {ROLES_FILE.parent} (add Azure's definition)")
            return builtin_roles()[name]
        ref = re.search(r"azurerm_role_definition\.(\w+)", str(body.get("role_definition_id", "")))
        if not ref:
            raise InfraError(f"cannot read role_definition_id = {body.get('role_definition_id')}")
        definition = self.tf["resource"]["azurerm_role_definition"][ref[1]]
        p = definition["permissions"][0]
        return Role(definition["name"], tuple(p.get("actions", ())), tuple(p.get("not_actions", ())),
                    tuple(p.get("data_actions", ())), tuple(p.get("not_data_actions", ())))

    def _assignments(self) -> List[Assignment]:
        out = []
        for name, body in self.tf["resource"].get("azurerm_role_assignment", {}).items():
            if self._count(body) == 0:
                continue
            principals = self._principals(body)
            if not principals:
                continue
            scope, role = self._scope(str(body["scope"])), self._role(body)
            out += [Assignment(f"azurerm_role_assignment.{name}", p, scope, role) for p in principals]
        return out

    # ------------------------------------------------------------------ decisions
    def roles_of(self, principal: str, scope: str) -> List[Assignment]:
        s = scope.lower().rstrip("/")
        return [a for a in self.assignments
                if a.principal == principal and (s == a.scope.lower() or s.startswith(a.scope.lower() + "/"))]

    def denied(self, principal: Optional[str], action: str, scope: str, data: bool = False) -> Optional[str]:
        """None when an assignment allows `action` on `scope` to `principal`; else ARM's message."""
        if principal is not None and any(a.role.allows(action, data) for a in self.roles_of(principal, scope)):
            return None
        who = principal or "(no principal: an unknown token)"
        kind = "action" if not data else "data action"
        return (f"The client '{who}' with object id '{object_id(who)}' does not have authorization to perform "
                f"{kind} '{action}' over scope '{scope}' or the scope is invalid. If access was recently "
                "granted, please refresh your credentials.")


def authorization_failed(message: str) -> dict:
    """ARM's 403 body."""
    return {"error": {"code": "AuthorizationFailed", "message": message}}


def principals(rbac: Rbac) -> Iterable[str]:
    return sorted({a.principal for a in rbac.assignments})
