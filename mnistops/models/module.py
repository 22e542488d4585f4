"""The LightningModule: builds the net from its config, trains it with the configured optimiser
and schedule, and logs loss and accuracy per epoch (train/*, val/*, test/*), and at the end of a fit
its wall-clock times: `time/train_s` (the training passes), `time/val_s` (the validation passes) and
`time/fit_s` (both, from the start of training to its end)."""

from __future__ import annotations

import time
from typing import Any, Dict

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from mnistops.errors import MnistopsError

OPTIMIZERS = ("sgd", "adam", "adamw", "adadelta")
SCHEDULERS = ("onecycle", "step", "cosine", "none")


def build_net(net_cfg: Dict[str, Any], num_classes: int) -> torch.nn.Module:
    try:
        return instantiate(dict(net_cfg), num_classes=num_classes, _convert_="all")
    except Exception as err:  # instantiate wraps the constructor's TypeError; say which key
        cause = err.__cause__ or err
        raise MnistopsError(f"model.net cannot be built ({net_cfg.get('_target_')}): {cause}") from err


class Classifier(L.LightningModule):
    def __init__(self, net: Dict[str, Any], num_classes: int = 10, optimizer: str = "adamw", lr: float = 1e-3,
                 weight_decay: float = 0.0, momentum: float = 0.9, scheduler: str = "onecycle",
                 step_gamma: float = 0.7, pct_start: float = 0.25, label_smoothing: float = 0.0, **_: Any):
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise MnistopsError(f"model.optimizer={optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
        if scheduler not in SCHEDULERS:
            raise MnistopsError(f"model.scheduler={scheduler!r} is not one of {', '.join(SCHEDULERS)}")
        self.save_hyperparameters()
        self.net = build_net(net, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch, split: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        smoothing = self.hparams.label_smoothing if split == "train" else 0.0
        loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
        acc = (logits.argmax(1) == y).float().mean()
        on_step = split == "train"
        self.log(f"{split}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=split != "test", sync_dist=True,
                 batch_size=len(y))
        self.log(f"{split}/acc", acc, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=len(y))
        return loss

    # wall-clock times of the fit, logged once at its end (not per epoch: they are not metrics of the model)
    def on_train_start(self) -> None:
        self._fit_t0, self._val_s = time.perf_counter(), 0.0

    def on_validation_start(self) -> None:
        self._val_t0 = time.perf_counter()

    def on_validation_end(self) -> None:
        if getattr(self, "_fit_t0", None) is not None and not self.trainer.sanity_checking:
            self._val_s += time.perf_counter() - self._val_t0

    def on_train_end(self) -> None:
        if getattr(self, "_fit_t0", None) is None:
            return
        fit_s = time.perf_counter() - self._fit_t0
        self.fit_times = {"time/fit_s": fit_s, "time/train_s": fit_s - self._val_s, "time/val_s": self._val_s}
        self._fit_t0 = None
        if self.logger is not None:
            self.logger.log_metrics(self.fit_times, step=self.global_step)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self):
        h = self.hparams
        params = self.parameters()
        if h.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=h.lr, momentum=h.momentum, weight_decay=h.weight_decay, nesterov=True)
        elif h.optimizer == "adam":
            opt = torch.optim.Adam(params, lr=h.lr, weight_decay=h.weight_decay)
        elif h.optimizer == "adamw":
            opt = torch.optim.AdamW(params, lr=h.lr, weight_decay=h.weight_decay)
        else:
            opt = torch.optim.Adadelta(params, lr=h.lr, weight_decay=h.weight_decay)
        if h.scheduler == "none":
            return opt
        if h.scheduler == "onecycle":
            total = max(1, int(self.trainer.estimated_stepping_batches))
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=h.lr, total_steps=total, pct_start=h.pct_start)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        if h.scheduler == "step":
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=h.step_gamma)
        else:
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, self.trainer.max_epochs))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
