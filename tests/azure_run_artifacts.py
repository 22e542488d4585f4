"""A run's files as Azure ML's run history serves them to azureml-mlflow's artifact repository
(azureml/mlflow/_client/artifact/run_artifact_client.py): MLflow on Azure reports a run's artifact URI
as `azureml://<region>.api.azureml.ms/mlflow/v2.0/<workspace scope>/experiments/<id>/runs/<run>/artifacts`,
and azureml-mlflow reads and writes it through three run-history routes under
`/history/v1.0/<workspace scope>/experiments/<experiment>/runs/<run>/artifacts`:

- `POST .../batch/metadata` ({"paths": [{"path"}]}): creates the artifacts' records and answers, per
  path, a write SAS for its blob, which the client then uploads itself (azure-storage-blob);
- `GET .../contentinfo?path=`: a read SAS for one file (404 for a path the run does not have);
- `GET .../artifacts`: the run's artifact records (paged: `value`, `continuationToken`, `nextLink`).

The blobs live where Azure keeps them, in the workspace's storage account (here Azurite): container
`azureml`, `ExperimentRun/dcid.<run>/<path>`. The SAS is signed with the account's key, so Azurite checks
it. Requests and answers go through azureml-mlflow's own generated REST models (its `run_artifact`
client), so a field name this stand-in got wrong fails here as it would against Azure. The routes are
the workspace's `metadata/artifacts/read|write` operations (tests/azure_workspace.py decides them)."""

from __future__ import annotations

import datetime
import threading
from typing import Dict, Optional, Tuple

CONTAINER = "azureml"  # the workspace storage account's container for run history's files
ORIGIN = "ExperimentRun"


def blob_name(run_id: str, path: str) -> str:
    return f"{ORIGIN}/dcid.{run_id}/{path}"


class RunArtifacts:
    """The artifact records of one workspace's runs; answers the three routes."""

    def __init__(self, account: str, host: str):
        self.account, self.host = account, host
        self.records: Dict[str, Dict[str, dict]] = {}  # run id -> {path: Artifact record}
        self.lock = threading.Lock()

    def answer(self, method: str, run_id: str, route: str, query: dict, body) -> Tuple[int, Optional[dict]]:
        from azureml.mlflow._restclient.run_artifact import models as M

        if route == "/batch/metadata" and method == "POST":
            try:
                paths = [p.path for p in M.ArtifactPathList.deserialize(body).paths or []]
            except Exception as exc:  # noqa: BLE001 (what the service's model binding refuses: a 400)
                return 400, _error("UserError", f"the body is not an ArtifactPathList: {exc}")
            if not paths or not all(isinstance(p, str) and p for p in paths):
                return 400, _error("UserError", "every artifact path must be a non-empty string")
            with self.lock:
                run = self.records.setdefault(run_id, {})
                made = {p: run.setdefault(p, self._record(run_id, p)) for p in paths}
            result = M.BatchArtifactContentInformationResult(
                artifacts={p: M.Artifact.deserialize(r) for p, r in made.items()},
                artifact_content_information={p: self._content(run_id, p, write=True) for p in paths}, errors={})
            return 200, result.serialize()
        if route == "/contentinfo" and method == "GET":
            path = query.get("path", "")
            with self.lock:
                known = path in self.records.get(run_id, {})
            if not known:
                return 404, _error("NotFound", f"artifact {path!r} of run {run_id} could not be found")
            return 200, self._content(run_id, path, write=False).serialize()
        if route == "" and method == "GET":
            with self.lock:
                records = list(self.records.get(run_id, {}).values())
            return 200, M.PaginatedArtifactList(value=[M.Artifact.deserialize(r) for r in records]).serialize()
        return 404, _error("NotFound", f"no run-history artifact route {method} {route or '/'}")

    def _record(self, run_id: str, path: str) -> dict:
        return {"artifactId": f"{ORIGIN}/dcid.{run_id}/{path}", "origin": ORIGIN, "container": f"dcid.{run_id}",
                "path": path, "createdTime": datetime.datetime.now(datetime.timezone.utc).isoformat()}

    def _content(self, run_id: str, path: str, write: bool):
        from azure.storage.blob import BlobSasPermissions, generate_blob_sas
        from azureml.mlflow._restclient.run_artifact import models as M

        from azure_proxy import account_key

        name = blob_name(run_id, path)
        sas = generate_blob_sas(self.account, CONTAINER, name, account_key=account_key(self.account),
                                permission=BlobSasPermissions(read=not write, create=write, write=write),
                                expiry=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1))
        return M.ArtifactContentInformation(content_uri=f"https://{self.host}/{CONTAINER}/{name}?{sas}", origin=ORIGIN,
                                            container=f"dcid.{run_id}", path=path)


def _error(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message, "details": []}}
