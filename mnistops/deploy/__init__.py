"""Deployment backends: `local` (a uvicorn process per endpoint, state on disk). The registry
lookups shared by every backend live in registry.py."""
