"""stage=batch's throughput against raw ONNX Runtime batch inference on the same model, machine and cores.

One registered model (the default `cnn`; its weights do not change the cost), the 10,000 official
test images, in alternating rounds so drifting machine load hits every contender alike:

  raw ONNX Runtime   one InferenceSession, intra-op threads = the CPU count, batches of --batch
                     images over a float32 array already in memory: the graph alone, nothing else
  stage=batch        mnistops.batch's scorer as the stage runs it (the endpoint's OnnxModel on every
  scoring            core, calibrated probabilities, ood_score/ood, progress bar off): what its
                     "images/s" line reports
  stage=batch        the local flavour's whole path in this process: read the .npz, decode by the
  end to end         protocol's pixel rule, score, write the .parquet atomically
  folder of PNGs     decoding --pngs pictures as /predict frames an upload (serving/images.py), the
                     step a folder input adds before scoring

Plus one `python -m mnistops stage=batch` run (process start, registry, MLflow run included).
Target: stage=batch scoring >= 80 % of raw ONNX Runtime's images/s. Nothing is asserted; the table
goes to --out.

    MNISTOPS_DATA_MIRROR=file:///path/to/mnist python benchmarks/batch_scoring.py
    python benchmarks/batch_scoring.py --home ~/.mnistops --rounds 5
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serving as bench  # noqa: E402  (benchmarks/serving.py: machine info, the model-making pipeline)

DEFAULT_OUT = bench.REPO / "benchmarks" / "results" / "batch.md"


def model_home(args) -> Path:
    if args.home:
        return args.home
    home = Path(tempfile.mkdtemp(prefix="mnistops-batch-bench-"))
    print(f"training the model to score ({args.model_args}) in {home} ...", flush=True)
    subprocess.run([sys.executable, "-m", "mnistops", "stage=pipeline", *shlex.split(args.model_args)],
                   cwd=bench.REPO, env={**os.environ, "MNISTOPS_HOME": str(home)}, check=True,
                   stdout=subprocess.DEVNULL)
    return home


def model_dir(home: Path, uri: str) -> Path:
    sys.path.insert(0, str(bench.REPO))
    from hydra import compose, initialize_config_dir

    import mnistops.config  # noqa: F401
    from mnistops import backends, layout

    with initialize_config_dir(config_dir=str(bench.REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"paths.home={home}"])
    registry = backends.get(cfg).registry()
    return registry.download(registry.resolve(uri, "--model"), layout.models_cache(cfg))


def raw_session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def time_raw(session, x, batch: int) -> float:
    name = session.get_inputs()[0].name
    start = time.perf_counter()
    for lo in range(0, len(x), batch):
        session.run(None, {name: x[lo:lo + batch]})
    return len(x) / (time.perf_counter() - start)


def spread(values) -> str:
    return f"{median(values):,.0f} ({min(values):,.0f}–{max(values):,.0f})"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--home", type=Path, help="an existing MNISTOPS_HOME with a registered model")
    p.add_argument("--model", default="models:/mnist-classifier/latest")
    p.add_argument("--model-args", default=bench.DEFAULT_MODEL_ARGS)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch", type=int, default=1024, help="images per ONNX Runtime call (both sides)")
    p.add_argument("--pngs", type=int, default=2000)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    import numpy as np

    from mnistops.batch import inputs, outputs
    from mnistops.batch.scorer import BatchScorer
    from mnistops.data.idx import read_idx

    load_start = bench.loadavg()
    home = model_home(args)
    mdir = model_dir(home, args.model)
    images = np.array(read_idx(home / "data" / "mnist" / "t10k-images-idx3-ubyte"))
    work = Path(tempfile.mkdtemp(prefix="batch-bench-"))
    npz = work / "test.npz"
    np.savez(npz, images=images)
    from PIL import Image

    (work / "pngs").mkdir()
    for i in range(args.pngs):
        Image.fromarray(images[i]).save(work / "pngs" / f"{i:05d}.png")
    threads = os.cpu_count() or 1
    x = inputs.read(str(npz)).images
    session = raw_session(mdir / "artifacts" / "model.onnx", threads)
    scorer = BatchScorer(mdir, threads, args.batch)
    time_raw(session, x[:2048], args.batch)  # warm both
    scorer.score(x[:2048], progress=False)
    raw, ours, e2e, pngs, ratios = [], [], [], [], []
    for r in range(args.rounds):
        raw.append(time_raw(session, x, args.batch))
        s = scorer.score(x, progress=False)
        ours.append(len(x) / s.seconds)
        ratios.append(ours[-1] / raw[-1])
        start = time.perf_counter()
        src = inputs.read(str(npz))
        outputs.write(work / "out.parquet", src.ids, scorer.score(src.images, progress=False))
        e2e.append(len(x) / (time.perf_counter() - start))
        start = time.perf_counter()
        inputs.read(str(work / "pngs"))
        pngs.append(args.pngs / (time.perf_counter() - start))
        print(f"round {r + 1}: raw {raw[-1]:,.0f}  stage=batch scoring {ours[-1]:,.0f} ({ratios[-1]:.2f}x)  "
              f"end to end {e2e[-1]:,.0f}  PNG decoding {pngs[-1]:,.0f} images/s  load {bench.loadavg()}", flush=True)

    cli_start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mnistops", "stage=batch", f"batch.model={args.model}",
                           f"batch.input={npz}", f"batch.output={work / 'cli.parquet'}", "batch.progress=false"],
                          cwd=bench.REPO, env={**os.environ, "MNISTOPS_HOME": str(home)}, capture_output=True,
                          text=True, check=True)
    cli_wall = time.perf_counter() - cli_start
    said = re.search(r"\(([\d,]+) images/s\)", proc.stdout)
    load_end = bench.loadavg()

    rows = [("raw ONNX Runtime (1 session, %d threads, batch %d)" % (threads, args.batch), spread(raw), "1.00"),
            ("stage=batch scoring (calibrated probabilities, ood_score, ood)", spread(ours),
             f"**{median(ratios):.2f}** ({min(ratios):.2f}–{max(ratios):.2f})"),
            ("stage=batch end to end in-process (.npz read, score, .parquet written)", spread(e2e),
             f"{median(e2e) / median(raw):.2f}"),
            (f"folder of {args.pngs} PNGs: decoding + MNIST framing only", spread(pngs), "–")]
    verdict = "met" if median(ratios) >= 0.8 else "missed"
    lines = [
        "# Batch scoring: stage=batch vs raw ONNX Runtime",
        "",
        f"`python benchmarks/batch_scoring.py --rounds {args.rounds}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}:",
        f"{os.cpu_count()} × {bench.cpu_model()}, Python {bench.platform.python_version()}, onnxruntime "
        f"{bench.version('onnxruntime')}, numpy {bench.version('numpy')}, pyarrow {bench.version('pyarrow')}; "
        f"load average {load_start} at the start, {load_end} at the end (other jobs shared the machine).",
        f"Model: {args.model} (`cnn`, the default recipe's network), {len(x):,} official test images, "
        f"{args.rounds} alternating rounds; images/s as median (min–max).",
        "",
        "| contender | images/s | × raw |",
        "|---|---:|---:|",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
        "",
        f"Target ≥ 0.80 × raw ONNX Runtime: **{verdict}** (median of the per-round ratios {median(ratios):.2f}).",
        f"One `python -m mnistops stage=batch` of the same {len(x):,} images: {cli_wall:.1f} s wall "
        f"(process start, registry, MLflow run included); it reported {said.group(1) if said else '?'} images/s.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
