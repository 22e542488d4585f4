"""What to try next, printed when the main job (stage=pipeline) has registered a model."""

from __future__ import annotations

from typing import Optional

from omegaconf import DictConfig


def after_main_job(cfg: DictConfig, model_uri: Optional[str]) -> str:
    env = "" if cfg.env.name == "dev" else f"env={cfg.env.name} "
    url = f"http://{cfg.endpoint.host}:{cfg.endpoint.port}"
    ui = cfg.env.tracking_uri or f"http://{cfg.ui.host}:{cfg.ui.port}"
    model = model_uri or f"models:/{cfg.env.model_name}@candidate"
    return "\n".join([
        "next:",
        f"  python -m mnistops {env}stage=deploy     serve {model} at {url}/score",
        f"  open {url}/                 draw a digit and see what the model says (once deployed)",
        f"  python -m mnistops {env}stage=ui         runs, metrics, plots and the registry in the MLflow UI at {ui}"
        + ("  (or: make ui" + (f" ENV={cfg.env.name}" if env else "") + ")" if not cfg.env.tracking_uri else ""),
    ])
