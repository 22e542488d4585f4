"""What to try next, printed when the main job (stage=pipeline) has registered a model."""

from __future__ import annotations

from typing import Optional

from omegaconf import DictConfig

from mnistops import tags as T


def after_main_job(cfg: DictConfig, model_uri: Optional[str]) -> str:
    env = "" if cfg.env.name == "dev" else f"env={cfg.env.name} "
    url = f"http://{cfg.endpoint.host}:{cfg.endpoint.port}"
    model = model_uri or T.model_uri(cfg.env.model_name, T.CANDIDATE)
    if cfg.env.tracking_uri:
        ui = (f"python -m mnistops {env}stage=ui", f"where the runs and the registry are: {cfg.env.tracking_uri}")
    else:
        make_ui = "make ui" + (f" ENV={cfg.env.name}" if env else "")
        ui = (f"python -m mnistops {env}stage=ui",
              f"runs, metrics, plots and the registry in the MLflow UI at http://{cfg.ui.host}:{cfg.ui.port} "
              f"(or: {make_ui})")
    steps = [(f"python -m mnistops {env}stage=deploy", f"serve {model} at {url}/score"),
             (f"open {url}/", "draw a digit, see what the deployed model says"),
             ui]
    width = max(len(command) for command, _ in steps)
    return "\n".join(["next:"] + [f"  {command:<{width}}   {what}" for command, what in steps])
