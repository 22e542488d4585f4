"""Calibrated probabilities and "not a digit" (issue #18 parts 1 and 4), measured on one trained model.

What the train stage fits (models/calibration.py) is refitted here from the model's checkpoint,
the same way: the temperature by NLL on the 5,000-image validation split, the Mahalanobis class
means and covariance on 10,000 training images, each OOD threshold on the validation split so
that train.ood_rate (0.8 %) of its digits lie above it. Then, on data no fit saw:

  calibration   accuracy, NLL and expected calibration error (15 bins) on the 10,000 MNIST test
                images, before (the raw softmax) and after the temperature; a reliability diagram
  OOD scores    every candidate (max-softmax and energy on raw and calibrated logits, Mahalanobis
                distance on the penultimate-layer embedding): AUROC of MNIST test (in) against
                Fashion-MNIST test (out: 10,000 clothes, Debian's dataset-fashion-mnist package)
                and against uniform noise; share of MNIST test flagged at the validation threshold
                (target <= 1 %) and share of Fashion-MNIST caught. Target: AUROC >= 0.95.

    # the model: a train run's checkpoint (e.g. the default recipe's, stage=train) ...
    python benchmarks/ood_calibration.py --checkpoint ~/.mnistops/dev/outputs/.../checkpoints/best-05.ckpt
    # ... or one trained here first with any overrides (experiment=fast: ~1 min on 2 busy cores)
    MNISTOPS_DATA_MIRROR=file:///path/to/mnist python benchmarks/ood_calibration.py --train "experiment=fast"

Fashion-MNIST: `apt-get install dataset-fashion-mnist` puts it in /usr/share/datasets/fashion-mnist
(--fashion). Nothing is asserted; the table goes to --out.
"""

from __future__ import annotations

import argparse
import gzip
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serving as bench  # noqa: E402  (machine facts)

REPO = bench.REPO
DEFAULT_OUT = REPO / "benchmarks" / "results" / "ood_calibration.md"


def read_images(path: Path) -> np.ndarray:
    raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    return np.frombuffer(raw[16:], np.uint8).reshape(-1, 28, 28)


def trained_checkpoint(overrides: str) -> Path:
    home = Path(tempfile.mkdtemp(prefix="mnistops-ood-bench-"))
    print(f"training ({overrides or 'the default recipe'}) in {home} ...", flush=True)
    subprocess.run([sys.executable, "-m", "mnistops", "stage=train", *shlex.split(overrides)], cwd=REPO,
                   env={**os.environ, "MNISTOPS_HOME": str(home)}, check=True, stdout=subprocess.DEVNULL)
    found = sorted(home.glob("dev/outputs/*/*/checkpoints/best-*.ckpt"))
    if not found:
        raise SystemExit(f"no best checkpoint under {home}")
    return found[-1]


def compose(overrides):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import mnistops.config  # noqa: F401  (schemas)

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", type=Path, help="a train run's checkpoint (default: train one, --train)")
    ap.add_argument("--train", default="", help="overrides for the model trained when --checkpoint is not given")
    ap.add_argument("--label", default="", help="what the model is, for the table (e.g. 'default recipe (cnn)')")
    ap.add_argument("--fashion", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--diagram", type=Path, default=REPO / "benchmarks" / "results" / "ood_calibration_reliability.png")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    from mnistops import plots
    from mnistops.data import catalog
    from mnistops.models.calibration import (auroc, ece, fit_mahalanobis, fit_temperature, mahalanobis, nll,
                                             ood_threshold, reliability)
    from mnistops.models.checkpoint import predict_with_embeddings
    from mnistops.models.module import Classifier
    from mnistops.serving.protocol import ood_score, softmax

    t0 = time.time()
    checkpoint = args.checkpoint or trained_checkpoint(args.train)
    model = Classifier.load_from_checkpoint(checkpoint, map_location="cpu")
    net = model.net.eval()
    cfg = compose([])
    val, test, fit = (catalog.load(cfg, split) for split in ("val", "test", "fit"))
    fashion = read_images(args.fashion / "t10k-images-idx3-ubyte.gz")
    noise = np.random.default_rng(0).integers(0, 256, (2000, 28, 28), dtype=np.uint8)

    lv, ev = predict_with_embeddings(net, val.images)
    lt, et = predict_with_embeddings(net, test.images)
    lf, ef = predict_with_embeddings(net, fashion)
    ln, en = predict_with_embeddings(net, noise)
    _, efit = predict_with_embeddings(net, fit.images[:10000])

    temperature = fit_temperature(lv, val.labels)
    raw_p, cal_p = softmax(lt.astype(np.float64)), softmax(lt.astype(np.float64) / temperature)
    calibration = {
        "accuracy": float((raw_p.argmax(1) == test.labels).mean()),
        "nll": (nll(lt, test.labels), nll(lt, test.labels, temperature)),
        "ece": (ece(raw_p, test.labels), ece(cal_p, test.labels)),
        "confidence": (float(raw_p.max(1).mean()), float(cal_p.max(1).mean())),
    }
    plots.reliability_diagram(
        {"uncalibrated": {**reliability(raw_p, test.labels), "ece": calibration["ece"][0]},
         f"calibrated (T={temperature:.3f})": {**reliability(cal_p, test.labels), "ece": calibration["ece"][1]}},
        args.diagram, f"MNIST test set (n={len(test.labels)}), test accuracy {calibration['accuracy']:.4f}")

    means, transform = fit_mahalanobis(efit, fit.labels[:10000], shrinkage=0.01)
    candidates = {}
    for method in ("msp", "energy"):
        for name, t in (("raw logits", 1.0), ("calibrated logits", temperature)):
            candidates[f"{method}, {name}"] = tuple(ood_score((x / t).astype(np.float32), method) for x in (lv, lt, lf, ln))
    candidates["mahalanobis, penultimate embedding (the default)"] = tuple(
        mahalanobis(e, means, transform) for e in (ev, et, ef, en))

    rows = []
    for name, (sv, st, sf, sn) in candidates.items():
        thr = ood_threshold(sv, 0.008)
        rows.append((name, auroc(st, sf), auroc(st, sn), float((st > thr).mean()), float((sf > thr).mean()),
                     float((sn > thr).mean())))
    seconds = time.time() - t0

    lines = [
        "# Calibrated probabilities and \"not a digit\" (benchmarks/ood_calibration.py)", "",
        f"Model: {args.label or checkpoint}, test accuracy {calibration['accuracy']:.4f}. Machine: "
        f"{os.cpu_count()}-core {bench.cpu_model()}, no GPU; load average at the end {bench.loadavg()}; "
        f"{seconds:.0f} s. In-distribution: the 10,000 MNIST test images; out: the 10,000 Fashion-MNIST test "
        "images (Debian's dataset-fashion-mnist) and 2,000 images of uniform noise. Temperature and thresholds "
        "fitted on the 5,000-image validation split (threshold: 0.8 % of validation digits above it), "
        "Mahalanobis means/covariance on 10,000 training images: the test sets were seen by no fit.", "",
        "## Calibration (MNIST test)", "",
        "| | uncalibrated | calibrated |", "|---|---:|---:|",
        f"| temperature | 1 | {temperature:.3f} |",
        f"| expected calibration error (15 bins) | {calibration['ece'][0]:.4f} | **{calibration['ece'][1]:.4f}** |",
        f"| negative log-likelihood | {calibration['nll'][0]:.4f} | {calibration['nll'][1]:.4f} |",
        f"| mean confidence (accuracy {calibration['accuracy']:.4f}) | {calibration['confidence'][0]:.4f} | "
        f"{calibration['confidence'][1]:.4f} |", "",
        f"Reliability diagram: `{args.diagram.relative_to(REPO) if args.diagram.is_relative_to(REPO) else args.diagram}`.",
        "", "## \"Not a digit\" scores", "",
        "| ood_score | AUROC Fashion-MNIST vs MNIST | AUROC noise vs MNIST | MNIST test flagged | "
        "Fashion-MNIST flagged | noise flagged |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, a_f, a_n, flagged, caught, noise_caught in rows:
        lines.append(f"| {name} | {a_f:.4f} | {a_n:.4f} | {flagged:.2%} | {caught:.2%} | {noise_caught:.2%} |")
    lines += ["", "Targets: AUROC >= 0.95 (Fashion-MNIST vs MNIST), <= 1 % of MNIST test flagged.", ""]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
