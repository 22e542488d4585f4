"""The endpoint server: one FastAPI app (``create_app``) run by uvicorn, one process per endpoint.

Modules, one job each: ``settings`` (server.json, key), ``inputs`` (payload -> image batch, per
protocol), ``images`` (upload normalisation), ``deployments`` (ONNX session, slot, state.json I/O),
``endpoint`` (live slots + admin changes), ``batching`` (adaptive micro-batching), ``auth``,
``metrics``, ``routing`` (traffic split, mirror), ``schemas`` (pydantic models for the OpenAPI doc),
``page`` (the draw-a-digit page), ``app`` (routes), ``__main__`` (``python -m mnistops.serving``).
Nothing here imports torch, lightning or mlflow: the server starts in well under a second.
"""

from __future__ import annotations


def create_app(endpoint_dir, freeze_gc: bool = False):  # lazy: `import mnistops.serving.inputs` needs no fastapi
    from mnistops.serving.app import create_app as _create_app

    return _create_app(endpoint_dir, freeze_gc=freeze_gc)


__all__ = ["create_app"]
