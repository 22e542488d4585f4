"""A workspace's MLflow as Azure ML guards it: MLflow's own tracking server (its Flask app, serving
artifacts) behind the workspace's RBAC. Each request's bearer token (MLFLOW_TRACKING_TOKEN, as Azure
ML sets it in a job) names a principal; azure_rbac maps the route to the workspace operation it is
(runs: experiments/runs/read|write, a run's files: metadata/artifacts/read|write, the registry:
models/...) and answers 403 AuthorizationFailed unless infra/ gives that principal a role covering
it on the workspace.

Run as a process (tests start it and stop it):
    python tests/azure_mlflow_guard.py '<json settings>'
settings: store (backend URI), artifacts (folder), env, names (azure_rbac.Names fields), infra
(folder, optional), variables (optional). It prints `listening http://127.0.0.1:<port>` when ready.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from azure_rbac import INFRA, Names, Rbac, authorization_failed, mlflow_action, principal_of  # noqa: E402


class Guard:
    """WSGI middleware: the RBAC decision before MLflow's app sees the request."""

    def __init__(self, app, rbac):
        self.app, self.rbac = app, rbac  # rbac(): the current decision table (infra/ re-read when it changed)

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if "/api/2.0/" in path:
            rbac = self.rbac()
            principal = principal_of(environ.get("HTTP_AUTHORIZATION"))
            action = mlflow_action(environ["REQUEST_METHOD"], path)
            refusal = rbac.denied(principal, action, rbac.names.references()["azurerm_machine_learning_workspace.this.id"])
            if refusal:
                body = json.dumps({**authorization_failed(refusal), "error_code": "PERMISSION_DENIED",
                                   "message": refusal}).encode()
                start_response("403 Forbidden", [("Content-Type", "application/json"),
                                                  ("Content-Length", str(len(body)))])
                return [body]
        return self.app(environ, start_response)


def main(settings: dict) -> None:
    os.environ["_MLFLOW_SERVER_FILE_STORE"] = settings["store"]
    os.environ["_MLFLOW_SERVER_SERVE_ARTIFACTS"] = "true"
    os.environ["_MLFLOW_SERVER_ARTIFACT_DESTINATION"] = settings["artifacts"]
    os.environ["_MLFLOW_SERVER_ARTIFACT_ROOT"] = "mlflow-artifacts:/"
    from mlflow.server import app
    from werkzeug.serving import make_server

    def rbac() -> Rbac:
        return Rbac(settings["env"], Names(**settings["names"]), infra=Path(settings.get("infra") or INFRA),
                    variables=settings.get("variables"))

    app.wsgi_app = Guard(app.wsgi_app, rbac)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    print(f"listening http://127.0.0.1:{server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
