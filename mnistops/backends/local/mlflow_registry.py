"""The local flavour's model registry: an env's MLflow registry (its sqlite store, or the MLflow
tracking server in `env.tracking_uri`), through an MlflowClient bound to that store alone, so two
envs' registries can be open at once (promotion reads one and writes the other).

Versions are created from a model directory logged as run artifacts (`create_model_version` with
the artifacts' location), the registry API every MLflow server serves, not MLflow 3's logged-model
API. Aliases are MLflow's own."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, List, Mapping, Optional

from mnistops import tags as T
from mnistops.backends.base import ModelRegistry, ModelVersion
from mnistops.errors import MnistopsError


class MlflowRegistry(ModelRegistry):
    def __init__(self, env: str, uri: str):
        from mlflow.tracking import MlflowClient

        self.env, self.uri = env, uri
        self.where = f"the {env} registry ({uri})"
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    # ------------------------------------------------------------------ reads
    def versions(self, name: str) -> List[ModelVersion]:
        from mlflow.exceptions import MlflowException

        try:
            found = self.client.search_model_versions(f"name = '{name}'")
        except MlflowException as err:
            raise MnistopsError(f"cannot read {self.where}: {str(err).splitlines()[0][:300]}") from None
        return [self._version(mv) for mv in found]

    def aliases(self, name: str) -> Dict[str, str]:
        from mlflow.exceptions import MlflowException

        try:
            return {str(a): str(v) for a, v in self.client.get_registered_model(name).aliases.items()}
        except MlflowException:
            return {}

    @staticmethod
    def _version(mv) -> ModelVersion:
        return ModelVersion(mv.name, str(mv.version), dict(mv.tags or {}), mv.description or "", mv.run_id or None)

    # ------------------------------------------------------------------ writes
    def register(self, name: str, model_dir: Path, *, run_id: Optional[str], tags: Mapping[str, str],
                 description: str) -> ModelVersion:
        """Log `model_dir` as the run's `model` artifacts (the active run when `run_id` is None), then
        create the version from their location."""
        import mlflow
        from mlflow.exceptions import MlflowException

        if run_id is None:
            active = mlflow.active_run()
            if active is None:
                raise MnistopsError(f"registering {name} in {self.where} needs a run to hold its files")
            run_id = active.info.run_id
        self.client.log_artifacts(run_id, str(model_dir), "model")
        source = f"{self.client.get_run(run_id).info.artifact_uri}/model"
        try:
            self.client.get_registered_model(name)
        except MlflowException:
            self.client.create_registered_model(name)
        created = self.client.create_model_version(name, source, run_id=run_id, tags=dict(tags),
                                                   description=description[:4900])
        return self._version(created)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(name, alias, str(version))

    def set_tags(self, version: ModelVersion, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(version.name, version.version, key, str(value)[:4900])

    def download(self, version: ModelVersion, into: Path) -> Path:
        """<into>/<name>-v<version>, once: fetched from THIS registry's store, digest-checked, renamed
        into place atomically (a half download is never trusted)."""
        import mlflow

        from mnistops.models.export import sha256_of

        final = Path(into) / f"{version.name}-v{version.version}"
        if final.is_dir():
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
        try:
            location = self.client.get_model_version_download_uri(version.name, version.version)
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(scratch),
                                                             tracking_uri=self.uri))
            onnx = local / "artifacts" / "model.onnx"
            expected = version.tags.get(T.WEIGHTS_SHA256)
            if expected and onnx.is_file() and sha256_of(onnx) != expected:
                raise MnistopsError(f"{version.uri} in {self.where}: model.onnx does not match the registered "
                                    "weights digest")
            os.replace(local, final)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return final
