"""A registered version's ONNX graph scoring many images on every core, with a progress bar.

The predictor is the endpoint's own (serving/deployments.py: OnnxModel, with its load checks and
test inference), so a batch answer is the endpoint's answer for the same image. Only the threading
differs: the endpoint gives each worker process one thread; here one process has the machine, so
the graph runs on `threads` intra-op threads over chunks of `batch_size` images.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from mnistops.serving.deployments import OnnxModel


@dataclass
class Scores:
    """What the endpoint answers per image, as columns."""

    probabilities: np.ndarray  # float32 (N, 10)
    ood_score: Optional[np.ndarray] = None  # float32 (N,), where the version has an OOD detector
    ood: Optional[np.ndarray] = None  # bool (N,)
    seconds: float = 0.0  # scoring only (the graph and the answer rules), not reading or writing

    @property
    def digits(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)

    def __len__(self) -> int:
        return len(self.probabilities)


class BatchScorer:
    def __init__(self, model_dir: Path, threads: int = 0, batch_size: int = 1024):
        self.threads = threads or os.cpu_count() or 1
        self.batch_size = max(1, int(batch_size))
        self.model = OnnxModel(Path(model_dir), intra_op_threads=self.threads)
        self.model.warm_up()

    def score(self, images: np.ndarray, progress: bool = True, desc: str = "scoring") -> Scores:
        """float32 (N, 1, 28, 28) in [0, 1] -> Scores; a tqdm bar (rate, ETA) on stderr when `progress`."""
        from tqdm import tqdm

        n = len(images)
        probs = np.empty((n, 10), np.float32)
        # the endpoint's answer rule: OnnxModel.score (calibrated probabilities, ood_score, ood) where
        # the predictor has it, else its probabilities alone
        score = getattr(self.model, "score", None)
        ood_score = np.empty(n, np.float32) if score is not None else None
        ood = np.empty(n, bool) if score is not None else None
        start = time.perf_counter()
        with tqdm(total=n, unit="img", desc=desc, disable=not progress, file=sys.stderr, mininterval=0.5,
                  dynamic_ncols=True, smoothing=0.1) as bar:
            for lo in range(0, n, self.batch_size):
                hi = min(n, lo + self.batch_size)
                if score is None:
                    probs[lo:hi] = self.model.predict(images[lo:hi])
                else:
                    scored = score(images[lo:hi])
                    probs[lo:hi] = scored.probabilities
                    ood_score[lo:hi] = scored.ood_score
                    ood[lo:hi] = scored.ood
                bar.update(hi - lo)
        return Scores(probs, ood_score, ood, seconds=time.perf_counter() - start)
