"""The azure flavour's model registry: a workspace's Azure ML model assets, through azure-ai-ml.

Aliases. Azure ML's registry has none, so this flavour keeps them as tags: alias `a` of model `m` is
the tag `mnistops.alias.a` on one version of `m`, its value the UTC time it moved there. Moving an
alias tags the new holder first, then takes the tag off every other version; if a crash leaves two
holders, the newest timestamp wins (then the higher version number), which is the move that was
under way. The one rule in references.py then resolves `@candidate`, `@champion` or any alias
exactly as on the local flavour: `@champion` is the version the gate pointed champion at, never
"the newest approved". Alias tags are not part of a version's `tags` (promotion never copies them).

Registration. MLflow 3's `log_model` needs the logged-models REST API, which Azure ML's MLflow
server does not serve (404 on /api/2.0/mlflow/logged-models, Azure/azure-sdk-for-python#44896). The
register stage writes the model directory with `save_model`; this registry logs it as the run's
`model` artifacts through MLflow's artifact API (which Azure serves, the workaround of
Azure/azureml-examples#3885) and creates the version with the SDK from the run's files
(`Model(type="mlflow_model", path="runs:/<run>/model")`, Azure ML's documented MLflow-run source):
nothing is uploaded twice, the version's lineage points at its run, and the same SDK client that
reads versions, tags and aliases writes them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional

from mnistops import tags as T
from mnistops.backends import references
from mnistops.backends.base import ModelRegistry, ModelVersion
from mnistops.errors import MnistopsError


def alias_holders(models) -> Dict[str, str]:
    """alias -> version, from the alias tags on SDK Model entities of one name (tie-break: newest
    timestamp, then highest version)."""
    best: Dict[str, tuple] = {}
    for m in models:
        for key, stamp in (m.tags or {}).items():
            if key.startswith(T.ALIAS_PREFIX):
                alias, rank = key[len(T.ALIAS_PREFIX):], (str(stamp), int(m.version))
                if alias not in best or rank > best[alias]:
                    best[alias] = rank
    return {alias: str(rank[1]) for alias, rank in best.items()}


def stamp() -> str:
    """Now, UTC, to the microsecond: sorts as text."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"


def without_aliases(tags: Optional[Mapping[str, str]]) -> Dict[str, str]:
    return {k: str(v) for k, v in (tags or {}).items() if not k.startswith(T.ALIAS_PREFIX)}


def fetch_once(final: Path, fetch: Callable[[Path], Path], version: ModelVersion, where: str) -> Path:
    """`final`, made once: `fetch(scratch)` returns the model directory it wrote under scratch, which
    must match the registered weights digest, and is renamed into place (a half download is never
    trusted)."""
    from mnistops.models.export import sha256_of

    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
    try:
        local = fetch(scratch)
        onnx = local / "artifacts" / "model.onnx"
        expected = version.tags.get(T.WEIGHTS_SHA256)
        if expected and onnx.is_file() and sha256_of(onnx) != expected:
            raise MnistopsError(f"{version.uri} in {where}: model.onnx does not match the registered weights digest")
        os.replace(local, final)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return final


def root_cause(err: BaseException) -> str:
    """What an HTTP failure under MLflow's own message said: the innermost error's line, with the
    service's error code and message where its response carried them (Azure: AuthorizationFailed,
    naming the action)."""
    import json

    while (err.__cause__ or err.__context__) is not None:
        err = err.__cause__ or err.__context__
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    response = getattr(err, "response", None)
    body = getattr(response, "text", "")  # requests: a property; azure-core (azureml-mlflow's REST client): a method
    try:
        body = body() if callable(body) else body
    except Exception:  # noqa: BLE001 (a body that cannot be read: the exception's own line stays)
        body = ""
    body = body or (text.split("Response text: ", 1)[1] if "Response text: " in text else "")
    try:
        data = json.loads(body) if body else None
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data["error"] if isinstance(data.get("error"), dict) else data
        status = getattr(response, "status_code", "")
        text = f"HTTP {status} {error.get('code', '')}: {error.get('message', body)}".replace("  ", " ")
    return text[:600]


def mlmodel_dir(root: Path) -> Path:
    found = sorted(Path(root).rglob("MLmodel"))
    if not found:
        raise MnistopsError(f"the downloaded model has no MLmodel file (under {root})")
    return found[0].parent


class AzureModelRegistry(ModelRegistry):
    def __init__(self, env: str, connection, mlflow_uri: Callable[[], str]):
        self.env, self.connection, self._mlflow_uri = env, connection, mlflow_uri
        self.where = f"the {env} registry ({connection.workspace})"
        self._models: Dict[str, Dict[str, object]] = {}  # name -> version -> SDK Model, as last listed

    @property
    def ml(self):
        return self.connection.ml

    # ------------------------------------------------------------------ reads
    def _list(self, name: str) -> Dict[str, object]:
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

        try:
            models = list(self.ml.models.list(name=name))
        except ResourceNotFoundError:
            models = []
        except HttpResponseError as err:
            raise MnistopsError(f"cannot read {self.where}: {str(err).strip().splitlines()[0][:300]}") from None
        self._models[name] = {str(m.version): m for m in models}
        return self._models[name]

    @staticmethod
    def _version(m) -> ModelVersion:
        return ModelVersion(m.name, str(m.version), without_aliases(m.tags), m.description or "",
                            (m.properties or {}).get(T.FILES_RUN_ID) or None)

    def versions(self, name: str) -> List[ModelVersion]:
        return [self._version(m) for m in self._list(name).values()]

    def aliases(self, name: str) -> Dict[str, str]:
        return alias_holders(self._list(name).values())

    def resolve(self, reference: str, key: str = "model") -> ModelVersion:
        """One listing of the name's versions serves both the versions and the aliases."""
        ref = references.parse(reference, key)
        models = self._list(ref.name).values()
        return references.resolve(ref, [self._version(m) for m in models], alias_holders(models), self.where)

    # ------------------------------------------------------------------ writes
    def _entity(self, name: str, version: str):
        models = self._models.get(name) or self._list(name)
        if str(version) not in models:
            models = self._list(name)
        if str(version) not in models:
            raise MnistopsError(f"model models:/{name}/{version} not found in {self.where}")
        return models[str(version)]

    def _put_tags(self, model, tags: Mapping[str, str]) -> None:
        model.tags = dict(tags)
        self.ml.models.create_or_update(model)

    def register(self, name: str, model_dir: Path, *, run_id: Optional[str], tags: Mapping[str, str],
                 description: str) -> ModelVersion:
        """The directory as the `model` artifacts of `run_id` (the active run when None), then a
        version from them."""
        import mlflow
        from azure.ai.ml.entities import Model
        from mlflow.tracking import MlflowClient

        if run_id is None:
            active = mlflow.active_run()
            if active is None:
                raise MnistopsError(f"registering {name} in {self.where} needs a run to hold its files")
            run_id = active.info.run_id
        MlflowClient(tracking_uri=self._mlflow_uri()).log_artifacts(run_id, str(model_dir), "model")
        created = self.ml.models.create_or_update(Model(
            name=name, type="mlflow_model", path=f"runs:/{run_id}/model", tags=without_aliases(tags),
            description=description[:4900], properties={T.FILES_RUN_ID: run_id}))
        self._models.pop(name, None)
        return self._version(created)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        key = T.alias(alias)
        target = self._entity(name, version)
        self._put_tags(target, {**(target.tags or {}), key: stamp()})
        for other_version, other in self._list(name).items():
            if other_version != str(version) and key in (other.tags or {}):
                self._put_tags(other, {k: v for k, v in other.tags.items() if k != key})

    def set_tags(self, version: ModelVersion, tags: Mapping[str, str]) -> None:
        model = self._entity(version.name, version.version)
        self._put_tags(model, {**(model.tags or {}), **without_aliases({k: str(v)[:4900] for k, v in tags.items()})})

    def download(self, version: ModelVersion, into: Path) -> Path:
        """<into>/<name>-v<version>: the version's run files through the workspace's MLflow, or (a
        version registered some other way) the asset's files through the SDK."""
        def fetch(scratch: Path) -> Path:
            if version.run_id:
                from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
                from mlflow.tracking import MlflowClient

                from mnistops import tracking

                try:  # the run's own artifact repository: a runs:/ URI would turn a 403 into "check the path"
                    uri = self._mlflow_uri()
                    with tracking.global_tracking_uri(uri):  # azureml-mlflow's repository reads the global one
                        run = MlflowClient(tracking_uri=uri).get_run(version.run_id)
                        repo = get_artifact_repository(run.info.artifact_uri, tracking_uri=uri)
                        return Path(repo.download_artifacts("model", str(scratch)))
                except Exception as err:  # noqa: BLE001 - any failure, said in one line with its cause
                    raise MnistopsError(f"cannot download runs:/{version.run_id}/model ({version.uri}) from "
                                        f"{self.where}: {root_cause(err)}") from None
            self.ml.models.download(name=version.name, version=version.version, download_path=str(scratch))
            return mlmodel_dir(scratch)

        return fetch_once(Path(into) / f"{version.name}-v{version.version}", fetch, version, self.where)


class PreviewRegistry(ModelRegistry):
    """azure.dry_run=true: nothing is read from a workspace. A reference with a version number is
    taken at its word; an alias or /latest cannot be answered; registering writes the model's YAML."""

    def __init__(self, cfg, env: str):
        self.cfg, self.env = cfg, env
        self.where = f"the {env} workspace (dry run)"

    def versions(self, name: str) -> List[ModelVersion]:
        raise MnistopsError(f"azure.dry_run=true: the versions of {name} in {self.where} are not read")

    def aliases(self, name: str) -> Dict[str, str]:
        raise MnistopsError(f"azure.dry_run=true: the aliases of {name} in {self.where} are not read")

    def resolve(self, reference: str, key: str = "model") -> ModelVersion:
        ref = references.parse(reference, key)
        if self.env != self.cfg.env.name:  # another env's registry: what it holds decides (promotion)
            raise MnistopsError(f"azure.dry_run=true reads nothing from {self.where}: {key}={reference} and its "
                                "decisions cannot be previewed")
        if ref.version and ref.version != "latest":
            return ModelVersion(ref.name, ref.version)
        raise MnistopsError(f"{key}={reference}: a dry run cannot ask the workspace which version that is; "
                            f"preview with {key}=models:/{ref.name}/<version>")

    def register(self, name: str, model_dir: Path, *, run_id: Optional[str], tags: Mapping[str, str],
                 description: str) -> ModelVersion:
        from azure.ai.ml.entities import Model

        from mnistops.backends.azure import render

        render.emit(self.cfg, [Model(name=name, type="mlflow_model", path=str(model_dir), tags=without_aliases(tags),
                                     description=description[:4900],
                                     properties={T.FILES_RUN_ID: run_id} if run_id else None)])
        return ModelVersion(name, "0", dict(tags), description, run_id)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        print(f"  (dry run) @{alias} of {name} would move to version {version}")

    def set_tags(self, version: ModelVersion, tags: Mapping[str, str]) -> None:
        print(f"  (dry run) {version.uri} would be tagged {dict(tags)}")

    def download(self, version: ModelVersion, into: Path) -> Path:
        raise MnistopsError(f"azure.dry_run=true: {version.uri} is not downloaded from {self.where}")
