"""One line per epoch where no progress bar is drawn (stderr is not a terminal: CI, a log file):

    epoch 3/6  train/loss 0.5730  train/acc 0.9878  val/loss 0.1176  val/acc 0.9936  9:30 elapsed, ETA 9:30 (3:10/epoch, 0.0053 epochs/s)
"""

from __future__ import annotations

import time
from typing import Dict, Optional

from lightning.pytorch.callbacks import Callback

SHOWN = ("train/loss", "train/acc", "val/loss", "val/acc")


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def per_epoch(seconds: float) -> str:
    return f"{seconds:.1f}s" if seconds < 60 else clock(seconds)


def epoch_line(epoch: int, max_epochs: Optional[int], metrics: Dict[str, float], elapsed: float,
               epochs_done: int) -> str:
    """The line for `epoch` (1-based) of `max_epochs` (None or -1: open-ended)."""
    shown = "  ".join(f"{k} {metrics[k]:.4f}" for k in SHOWN if k in metrics)
    rate = epochs_done / elapsed if elapsed > 0 and epochs_done > 0 else 0.0
    total = f"/{max_epochs}" if max_epochs and max_epochs > 0 else ""
    eta = ""
    if total and rate > 0:
        eta = f", ETA {clock((max_epochs - epoch) / rate)}"
    speed = f" ({per_epoch(1 / rate)}/epoch, {rate:.2g} epochs/s)" if rate > 0 else ""
    return f"epoch {epoch}{total}  {shown}  {clock(elapsed)} elapsed{eta}{speed}".replace("    ", "  ")


class EpochLog(Callback):
    """Prints `epoch_line` at the end of every training epoch (after its validation), on rank zero."""

    def __init__(self) -> None:
        self.t0: Optional[float] = None
        self.first_epoch = 0

    def on_train_start(self, trainer, pl_module) -> None:
        self.t0 = time.monotonic()
        self.first_epoch = trainer.current_epoch  # a resumed fit starts past 0

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or self.t0 is None or trainer.sanity_checking:
            return
        metrics = {}
        for key, value in trainer.callback_metrics.items():
            if getattr(value, "numel", lambda: 1)() == 1:
                metrics[key.removesuffix("_epoch")] = float(value)
        done = trainer.current_epoch + 1 - self.first_epoch
        print(epoch_line(trainer.current_epoch + 1, trainer.max_epochs, metrics, time.monotonic() - self.t0, done),
              flush=True)
