"""The command job that runs *this same entrypoint* on an Azure ML cluster: the source snapshot, the
training environment, the raw-data asset mounted as the data cache, and (for a lone stage=train)
multi-node Lightning DDP through Azure's PyTorch distribution.

Its command line is the user's overrides, the steps to run, and:
  env.backend=azure azure.inside_job=true   the steps run in the job, through this flavour: its
                                            registry (aliases as tags), the workspace's MLflow
                                            (MLFLOW_TRACKING_URI, set by Azure ML) and the
                                            workspace named by AZUREML_ARM_* (set by Azure ML)
  compute.num_nodes/devices/strategy         the trainer layout matching the job's nodes and processes
Overrides about where the command was typed (paths.home, env.tracking_uri, azure.dry_run, ...) stay here.
"""

from __future__ import annotations

import shlex
from typing import Dict, List, Sequence

from omegaconf import DictConfig

from mnistops import tags as T
from mnistops.backends.azure import compute as azure_compute

# overrides about submitting, not about what runs in the job (the job gets its own values)
LOCAL_ONLY = ("azure.dry_run", "azure.stream_logs", "azure.inside_job", "env.backend", "env.tracking_uri",
              "paths.home", "stage", "stage.steps")
DATA_INPUT = "dataset"
HOME = ".mnistops"  # MNISTOPS_HOME on the node: under the job's working dir


def user_overrides(drop: Sequence[str] = ()) -> List[str]:
    """The overrides the command was run with (CLI or mnistops.run), minus the local-only ones."""
    from mnistops import tracking

    return [o for o in tracking.task_overrides() if o.lstrip("+~").split("=")[0] not in LOCAL_ONLY + tuple(drop)]


def stage_args(cfg: DictConfig, steps: Sequence[str]) -> List[str]:
    """`stage=` (and `stage.steps=` when they are not the stage's own) for exactly `steps`."""
    from mnistops.stage_table import steps_of

    steps = list(steps)
    if not cfg.stage.steps and steps == [cfg.stage.name]:
        return [f"stage={cfg.stage.name}"]
    if len(steps) == 1 and not cfg.stage.steps:
        return [f"stage={steps[0]}"]
    args = [f"stage={cfg.stage.name}"]
    if steps != list(steps_of(cfg.stage.name)):
        args.append(f"stage.steps=[{','.join(steps)}]")
    return args


def layout(cfg: DictConfig, distributed: bool) -> List[str]:
    """Trainer overrides for the job: N nodes x P processes (Azure launches them) or one node."""
    c = cfg.compute
    if distributed:
        return [f"compute.num_nodes={c.instance_count}", f"compute.devices={c.process_count_per_instance}",
                "compute.strategy=ddp"]
    if c.process_count_per_instance > 1:  # composite jobs: one node, Lightning spawns its processes
        return ["compute.num_nodes=1", f"compute.devices={c.process_count_per_instance}", "compute.strategy=ddp_spawn"]
    return ["compute.num_nodes=1", "compute.devices=1", "compute.strategy=auto"]


def command_line(cfg: DictConfig, steps: Sequence[str], distributed: bool, extra: Sequence[str] = (),
                 drop: Sequence[str] = ()) -> str:
    args = [*user_overrides(drop), *stage_args(cfg, steps), "env.backend=azure", "azure.inside_job=true",
            *layout(cfg, distributed), *extra]
    cache = f"{HOME}/data/{cfg.data.name}"
    return (f"mkdir -p {cache} && cp -rT ${{{{inputs.{DATA_INPUT}}}}} {cache} && "
            f"python -m mnistops {' '.join(shlex.quote(a) for a in args)}")


def common(cfg: DictConfig, env_ref: str, code: str, stage: str) -> Dict:
    """What every mnistops job shares: code, environment, cluster, data input, experiment, tags."""
    from azure.ai.ml import Input

    from mnistops import tracking
    from mnistops.data import mirrors

    return dict(
        code=code, environment=env_ref, compute=azure_compute.require_cluster(cfg),
        experiment_name=cfg.azure.experiment_name,
        inputs={DATA_INPUT: Input(type="uri_folder", path=f"azureml:{cfg.azure.data_asset}:{mirrors.digest(cfg)}",
                                  mode="ro_mount")},
        environment_variables={"MNISTOPS_HOME": HOME, "PYTHONUNBUFFERED": "1"},
        tags={T.STAGE: stage, T.ENV: cfg.env.name, T.GIT_COMMIT: tracking.git_commit(),
              T.DATASET_DIGEST: mirrors.digest(cfg)},
    )


def is_distributed(cfg: DictConfig, steps: Sequence[str]) -> bool:
    """Only a lone train step spreads over nodes: composite jobs run every step on one node."""
    return list(steps) == ["train"] and cfg.compute.instance_count * cfg.compute.process_count_per_instance > 1


def nodes(cfg: DictConfig, steps: Sequence[str]) -> int:
    return cfg.compute.instance_count if is_distributed(cfg, steps) else 1


def command_job(cfg: DictConfig, steps: Sequence[str], env_ref: str, code: str):
    """The job as the SDK submits it: a `command()` node (ml.jobs.create_or_update refuses a bare
    CommandJob entity); render.py writes it as the CommandJob YAML `az ml job create -f` takes."""
    from azure.ai.ml import PyTorchDistribution, command

    distributed = is_distributed(cfg, steps)
    name = cfg.stage.name if len(steps) > 1 or steps == [cfg.stage.name] else steps[0]
    return command(
        command=command_line(cfg, steps, distributed), display_name=f"mnistops {name} ({cfg.env.name})",
        description=f"python -m mnistops {' '.join([*user_overrides(), *stage_args(cfg, steps)])}",
        instance_count=nodes(cfg, steps),
        distribution=PyTorchDistribution(process_count_per_instance=cfg.compute.process_count_per_instance)
        if distributed else None,
        **common(cfg, env_ref, code, name),
    )
