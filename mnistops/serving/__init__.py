"""The endpoint server: a FastAPI app per worker process, several workers behind one port under
gunicorn, kept running by a supervisor; one protocol module shared with Azure's score.py and the
registered pyfunc. Nothing here imports torch, lightning or mlflow: a worker starts in well under a second.

Modules, one job each:

    wire         answer(): body + headers -> (status, body); request id, feedback, the format table
                 (the scoring routes and Azure's score.py are shells around it)
    protocol     the pixel rule, decoders, answer shapes, client errors (also the pyfunc's copy)
    images       upload normalisation (any picture -> an MNIST-style 28x28 digit)
    settings     server.json (one pydantic model, written by the deploy side) and the key files
    deployments  an ONNX session per slot, state.json I/O
    batching     adaptive micro-batching, one per deployment per worker
    live_state   one worker's slots/traffic/mirror; prepare + commit of a new state
    cluster      the workers kept on one state: control ports, lock, two-phase commit
    runtime      what the routes share and the steps of a scoring request
    scoring      /score, /invocations, /v2/.../infer, /predict, /feedback
    admin        /admin/* (admin key): the plans of every change
    ops          /health, /ready, /v2/health/*, /metrics, / (open)
    middleware   request id, body limit, log line, metrics, collection
    errors       every non-200 answer; openapi: the description; schemas: its pydantic models
    prometheus   metrics, summed over workers; request_log: what was served, for monitoring
    routing      traffic split + mirror; page: the draw-a-digit page
    traffic_split  the one rule of a split (also the deploy stage's)
    master       the gunicorn master (N uvicorn workers); supervisor: restarts the master
    __main__     ``python -m mnistops.serving --endpoint-dir DIR``
"""

from __future__ import annotations


def create_app(endpoint_dir, freeze_gc: bool = False):  # lazy: `import mnistops.serving.protocol` needs no fastapi
    from mnistops.serving.app import create_app as _create_app

    return _create_app(endpoint_dir, freeze_gc=freeze_gc)


__all__ = ["create_app"]
