"""Compute steps on Azure ML: the runner submits the steps it is given (the stage runner has already
run the agent's `tests` step here and left it out) as ONE command job, or a sweep job when
`hparams_search` chose a sweeper, then follows it to its end and fails with its status.

Inside that job (`azure.inside_job=true`) the runner is not remote: the steps run in the job's
process, against the workspace's MLflow and registry through this same flavour."""

from __future__ import annotations

from typing import Optional, Sequence

from omegaconf import DictConfig

from mnistops.backends.base import JobRunner
from mnistops.errors import MnistopsError
from mnistops.result import StageResult

TERMINAL_OK = "Completed"


def hydra_sweeper() -> Optional[DictConfig]:
    """hydra.sweeper when `hparams_search` picked one (its params are the search space)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:
        raise MnistopsError("env.backend=azure runs a sweep as one Azure ML sweep job: drop -m "
                            "(python -m mnistops env.backend=azure hparams_search=optuna ...)")
    return hc.sweeper if hc.runtime.choices.get("hparams_search") else None


class AzureJobRunner(JobRunner):
    def __init__(self, cfg: DictConfig, connection):
        self.cfg, self.connection = cfg, connection
        self.remote = not cfg.azure.inside_job

    def job(self, cfg: DictConfig, steps: Sequence[str], code: str):
        from mnistops.backends.azure import command_job, environments, sweep_job

        env_ref = environments.reference(environments.train_environment(cfg))
        sweeper = hydra_sweeper()
        if sweeper is not None:
            if list(steps) != ["train"]:
                raise MnistopsError(f"hparams_search sweeps stage=train, not {','.join(steps)}")
            return sweep_job.sweep_job(cfg, sweeper, env_ref, code)
        return command_job.command_job(cfg, steps, env_ref, code)

    def submit(self, cfg: DictConfig, steps: Sequence[str]) -> StageResult:
        from mnistops.backends.azure import code_snapshot, command_job, render

        steps = list(steps)
        if "tests" in steps:  # the source checkout's tests run on the agent (the stage runner does it)
            raise MnistopsError("the tests step runs on the agent, not in an Azure ML job")
        if cfg.azure.dry_run:
            job = self.job(cfg, steps, str(code_snapshot.root()))
            (path,) = render.emit(cfg, [job])
            return StageResult(cfg.stage.name, artifacts={"job": str(path)})
        ml = self.connection.ml
        self._check_ready(ml, cfg, command_job.nodes(cfg, steps))
        job = self.job(cfg, steps, code_snapshot.ensure(ml, cfg))
        created = ml.jobs.create_or_update(job)
        print(f"submitted Azure ML {created.type} job {created.name} ({', '.join(steps)}) on {cfg.compute.cluster}: "
              f"{created.studio_url}")
        result = StageResult(cfg.stage.name, run_id=created.name, artifacts={"studio_url": created.studio_url or ""})
        if not cfg.azure.stream_logs:
            return result
        self._follow(ml, created.name)
        status = ml.jobs.get(created.name).status
        status = str(getattr(status, "value", status))
        if status != TERMINAL_OK:
            raise MnistopsError(f"Azure ML job {created.name} ended {status}: {created.studio_url}")
        print(f"job {created.name} completed: {created.studio_url}")
        return result

    @staticmethod
    def _follow(ml, name: str) -> None:
        try:
            ml.jobs.stream(name)
        except Exception as err:  # noqa: BLE001 (the SDK raises a bare Exception when the job fails)
            text = str(err).strip()
            print(f"job {name}: {text.splitlines()[0][:500] if text else repr(err)}")

    @staticmethod
    def _check_ready(ml, cfg: DictConfig, nodes: int) -> None:
        """The job's cluster (Terraform's), environment and data asset (stage=provision's) exist."""
        from azure.core.exceptions import ResourceNotFoundError

        from mnistops.backends.azure import compute, environments
        from mnistops.data import mirrors

        compute.check(ml, cfg, nodes)
        env = environments.train_environment(cfg)
        for what, get in (("environment", lambda: ml.environments.get(env.name, version=env.version)),
                          ("data asset", lambda: ml.data.get(cfg.azure.data_asset, version=mirrors.digest(cfg)))):
            try:
                get()
            except ResourceNotFoundError:
                raise MnistopsError(f"the {what} of this job is not in workspace {ml.workspace_name}: run "
                                    f"stage=provision env={cfg.env.name} env.backend=azure") from None
