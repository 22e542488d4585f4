"""stage=train: Lightning training of `model` on `data` with `trainer`/`compute`, in one MLflow run
holding the flattened config, per-epoch loss/accuracy, the dataset digest and the best checkpoint,
then (`train.calibrate`) the temperature and "not a digit" threshold fitted on the validation split.
`train.resume=true` continues the latest unfinished train run from its last checkpoint."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from omegaconf import DictConfig, OmegaConf

from mnistops import tags
from mnistops.errors import MnistopsError
from mnistops.stages import StageResult

log = logging.getLogger(__name__)


def in_notebook() -> bool:
    return "ipykernel" in sys.modules


def trainer_kwargs(cfg: DictConfig) -> Dict[str, Any]:
    kwargs = {k: v for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items() if v is not None}
    kwargs.setdefault("enable_progress_bar", sys.stderr.isatty() or in_notebook())
    kwargs.update(accelerator=cfg.compute.accelerator, devices=cfg.compute.devices,
                  num_nodes=cfg.compute.num_nodes, strategy=cfg.compute.strategy,
                  use_distributed_sampler=False)  # the in-memory batches shard themselves
    return kwargs


def build_model(cfg: DictConfig):
    from mnistops.models.module import Classifier

    params = OmegaConf.to_container(cfg.model, resolve=True)
    params.pop("name")
    return Classifier(num_classes=len(cfg.data.classes), **params)


def _resume_point(cfg: DictConfig) -> Tuple[Optional[str], Optional[Path]]:
    """(run id, last.ckpt) of the run to continue, or (None, None) for a fresh run."""
    from mnistops import tracking

    if not cfg.train.resume and not cfg.train.resume_run_id:
        return None, None
    run = tracking.get_run(cfg.train.resume_run_id) if cfg.train.resume_run_id else \
        tracking.latest_run(cfg, "train", finished=False)
    if run is None:
        raise MnistopsError("train.resume=true but no unfinished train run is in this env's store")
    ckpt_dir = run.data.tags.get(tags.CHECKPOINT_DIR)
    last = Path(ckpt_dir) / "last.ckpt" if ckpt_dir else None
    if last is None or not last.is_file():
        raise MnistopsError(f"run {run.info.run_id} has no last checkpoint to resume from ({last})")
    return run.info.run_id, last


def check_calibration_keys(cfg: DictConfig) -> None:
    from mnistops.serving.protocol import OOD_METHODS

    if cfg.train.ood_method not in OOD_METHODS:
        raise MnistopsError(f"train.ood_method must be one of {', '.join(OOD_METHODS)}, got {cfg.train.ood_method!r}")
    if not 0.0 < float(cfg.train.ood_rate) < 1.0:
        raise MnistopsError(f"train.ood_rate must be a share in (0, 1), got {cfg.train.ood_rate}")


def fit_calibration(cfg: DictConfig, checkpoint: str):
    """Temperature, OOD head and threshold of the best checkpoint, recorded in the active run
    (metrics; tag ``mnistops.calibration`` and artifact ``calibration/ood_head.npz``, which the
    register stage bakes into the exported graph). The temperature and threshold are fitted on the
    validation split (all of it, whatever trainer.limit_val_batches says); the Mahalanobis class
    means and covariance on up to ``train.ood_fit_images`` training images."""
    import json

    import mlflow
    import numpy as np

    from mnistops.data import catalog
    from mnistops.models.calibration import calibrate
    from mnistops.models.checkpoint import predict_with_embeddings
    from mnistops.models.module import Classifier

    net = Classifier.load_from_checkpoint(checkpoint, map_location="cpu").net.eval()
    val = catalog.load(cfg, "val")
    logits, embeddings = predict_with_embeddings(net, val.images, cfg.data.eval_batch_size)
    fit_embeddings = fit_labels = None
    if cfg.train.ood_method == "mahalanobis":
        fit = catalog.load(cfg, "fit")
        n = min(len(fit.images), int(cfg.train.ood_fit_images))
        _, fit_embeddings = predict_with_embeddings(net, fit.images[:n], cfg.data.eval_batch_size)
        fit_labels = fit.labels[:n]
    calibration, report, head = calibrate(logits, val.labels, cfg.train.ood_method, float(cfg.train.ood_rate),
                                          embeddings, fit_embeddings, fit_labels)
    mlflow.log_metrics(report)
    mlflow.set_tag(tags.CALIBRATION, json.dumps(calibration.metadata()))
    if head is not None:
        path = Path(checkpoint).with_name("ood_head.npz")
        np.savez(path, **head)
        mlflow.log_artifact(str(path), "calibration")
    return calibration


def run(cfg: DictConfig) -> StageResult:
    import torch

    check_calibration_keys(cfg)

    if cfg.compute.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():  # before the slow imports
        raise MnistopsError(f"compute={cfg.compute.name} asks for a GPU, but torch sees no CUDA device here")
    import lightning as L
    import mlflow
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import MLFlowLogger

    from mnistops import tracking
    from mnistops.data.datamodule import MNISTDataModule
    from mnistops.quiet import lightning_logs_once

    lightning_logs_once()
    if cfg.compute.num_threads:
        torch.set_num_threads(cfg.compute.num_threads)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    resume_id, last_ckpt = _resume_point(cfg)
    datamodule = MNISTDataModule(cfg)
    model = build_model(cfg)

    with tracking.start_run(cfg, "train", run_id=resume_id) as active:
        run_id = active.info.run_id
        if resume_id:
            ckpt_dir = last_ckpt.parent
            print(f"resuming run {run_id} from {last_ckpt}")
        else:
            ckpt_dir = tracking.output_dir(cfg, "train") / "checkpoints"
            mlflow.set_tag(tags.CHECKPOINT_DIR, str(ckpt_dir))
            tracking.log_config(cfg)
            mlflow.set_tag(tags.MODEL, cfg.model.name)
        datamodule.prepare_data()
        if not resume_id:
            tracking.log_training_dataset(cfg)
        best_cb = ModelCheckpoint(dirpath=ckpt_dir, filename="best-{epoch:02d}", monitor=cfg.train.monitor,
                                  mode=cfg.train.monitor_mode, save_top_k=1, save_last=True,
                                  auto_insert_metric_name=False)
        callbacks = [best_cb]
        kwargs = trainer_kwargs(cfg)
        if not kwargs["enable_progress_bar"]:  # no terminal (CI, a log file): a line per epoch instead
            from mnistops.models.epoch_log import EpochLog

            callbacks.append(EpochLog())
        elif in_notebook():  # Lightning's default (Rich) bar needs ipywidgets in Jupyter; tqdm's text bar does not
            from lightning.pytorch.callbacks import TQDMProgressBar

            callbacks.append(TQDMProgressBar())
        if cfg.train.checkpoint_every_n_steps:
            callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, filename="step", save_last=True,
                                             every_n_train_steps=cfg.train.checkpoint_every_n_steps))
        logger = MLFlowLogger(experiment_name=cfg.experiment_name, tracking_uri=tracking.tracking_uri(cfg),
                              run_id=run_id, log_model=False)
        trainer = L.Trainer(logger=logger, callbacks=callbacks, default_root_dir=str(ckpt_dir.parent), **kwargs)
        mlflow.set_tag(tags.WORLD_SIZE, trainer.world_size)
        trainer.fit(model, datamodule=datamodule, ckpt_path=str(last_ckpt) if last_ckpt else None)
        if not trainer.is_global_zero:  # DDP ranks launched by Azure ML: rank 0 alone records the run
            return StageResult("train", run_id=run_id)

        best = best_cb.best_model_path
        if not best:  # fast_dev_run and friends switch checkpointing off: keep the weights anyway
            best = str(ckpt_dir / "last.ckpt")
            trainer.save_checkpoint(best)
        mlflow.log_artifact(best, "checkpoints")
        mlflow.set_tag(tags.BEST_CHECKPOINT, best)
        if cfg.train.calibrate:
            calibration = fit_calibration(cfg, best)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        if best_cb.best_model_score is not None:
            metrics[f"best/{cfg.train.monitor}"] = float(best_cb.best_model_score)
        mlflow.log_metrics({k.replace("best/", "best_"): v for k, v in metrics.items() if k.startswith("best/")})
    mlflow.MlflowClient().set_terminated(run_id, "FINISHED")

    score_key = f"best/{cfg.optimized_metric}" if f"best/{cfg.optimized_metric}" in metrics else cfg.optimized_metric
    shown = ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))
    print(f"trained {cfg.model.name} in run {run_id}: {shown}\n  best checkpoint: {best}")
    if cfg.train.calibrate:
        print(f"  calibrated on the validation split: temperature {calibration.temperature:.3f}, "
              f"ood_score ({calibration.ood_method}) threshold {calibration.ood_threshold:.4f}")
    return StageResult("train", run_id=run_id, metrics=metrics, artifacts={"checkpoint": best},
                       outputs={"evaluate.run_id": run_id, "register.run_id": run_id},
                       score=metrics.get(score_key))
