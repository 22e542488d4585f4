"""The command job that runs *this same entrypoint* on an Azure ML cluster: the code snapshot, the
training environment, the raw-data asset mounted as the data cache, MLflow tracking into the
workspace, and (for stage=train) multi-node Lightning DDP through Azure's PyTorch distribution.

On the cluster the command line is the user's overrides plus: `env.backend=local` (the stages run
there), `env.tracking_uri=$MLFLOW_TRACKING_URI` (the workspace's MLflow, which Azure ML sets in
every job), and the trainer layout that matches the job's nodes and processes."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Dict, List

from omegaconf import DictConfig

from mnistops.backends.azure import compute as azure_compute

# overrides that are about submitting, not about what runs on the cluster
LOCAL_ONLY = ("azure.dry_run", "azure.stream_logs", "env.backend", "env.tracking_uri", "paths.home")
DATA_INPUT = "dataset"
HOME = ".mnistops"  # MNISTOPS_HOME on the node: under the job's working dir


def code_root() -> Path:
    """The source checkout's root (Azure ML uploads it, minus .gitignore'd paths) or, installed, the
    directory holding the mnistops package."""
    import mnistops

    return Path(mnistops.__file__).resolve().parent.parent


def user_overrides(drop: tuple = ()) -> List[str]:
    from mnistops import tracking

    return [o for o in tracking.task_overrides() if o.lstrip("+~").split("=")[0] not in LOCAL_ONLY + tuple(drop)]


def layout(cfg: DictConfig, distributed: bool) -> List[str]:
    """Trainer overrides for the job: N nodes x P processes (Azure launches them) or one node."""
    c = cfg.compute
    if distributed:
        return [f"compute.num_nodes={c.instance_count}", f"compute.devices={c.process_count_per_instance}",
                "compute.strategy=ddp"]
    if c.process_count_per_instance > 1:  # composite jobs: one node, Lightning spawns its processes
        return ["compute.num_nodes=1", f"compute.devices={c.process_count_per_instance}", "compute.strategy=ddp_spawn"]
    return ["compute.num_nodes=1", "compute.devices=1", "compute.strategy=auto"]


def command_line(cfg: DictConfig, distributed: bool, extra: List[str] = (), drop: tuple = ()) -> str:
    args = user_overrides(drop)
    if not any(a.startswith("stage=") for a in args):  # e.g. chosen by hparams_search: say it
        args.append(f"stage={cfg.stage.name}")
    steps = list(cfg.stage.steps)
    if "tests" in steps and len(steps) > 1:  # the test suite runs on the CI agent, before it submits
        args.append(f"stage.steps=[{','.join(s for s in steps if s != 'tests')}]")
    args += ["env.backend=local", *layout(cfg, distributed), *extra]
    cache = f"{HOME}/data/{cfg.data.name}"
    return (f"mkdir -p {cache} && cp -rT ${{{{inputs.{DATA_INPUT}}}}} {cache} && "
            f"python -m mnistops {' '.join(shlex.quote(a) for a in args)} \"env.tracking_uri=$MLFLOW_TRACKING_URI\"")


def common(cfg: DictConfig, env_ref: str) -> Dict:
    """What every mnistops job shares: code, environment, cluster, data input, experiment, tags."""
    from azure.ai.ml import Input

    from mnistops import tracking
    from mnistops.data import mirrors

    return dict(
        code=str(code_root()), environment=env_ref, compute=azure_compute.require_cluster(cfg),
        experiment_name=cfg.azure.experiment_name,
        inputs={DATA_INPUT: Input(type="uri_folder", path=f"azureml:{cfg.azure.data_asset}:{mirrors.digest(cfg)}",
                                  mode="ro_mount")},
        environment_variables={"MNISTOPS_HOME": HOME, "PYTHONUNBUFFERED": "1"},
        tags={"mnistops.stage": cfg.stage.name, "mnistops.env": cfg.env.name,
              "mnistops.git_commit": tracking.git_commit(), "mnistops.dataset_digest": mirrors.digest(cfg)},
    )


def is_distributed(cfg: DictConfig) -> bool:
    """Only a lone stage=train spreads over nodes: composite jobs run every step on one node."""
    return cfg.stage.name == "train" and list(cfg.stage.steps or ["train"]) == ["train"] and \
        cfg.compute.instance_count * cfg.compute.process_count_per_instance > 1


def command_job(cfg: DictConfig, env_ref: str):
    from azure.ai.ml import PyTorchDistribution
    from azure.ai.ml.entities import CommandJob, JobResourceConfiguration

    distributed = is_distributed(cfg)
    return CommandJob(
        command=command_line(cfg, distributed), display_name=f"mnistops {cfg.stage.name} ({cfg.env.name})",
        description=f"python -m mnistops {' '.join(user_overrides())}",
        resources=JobResourceConfiguration(instance_count=cfg.compute.instance_count if distributed else 1),
        distribution=PyTorchDistribution(process_count_per_instance=cfg.compute.process_count_per_instance)
        if distributed else None,
        **common(cfg, env_ref),
    )
