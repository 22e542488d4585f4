"""Training accuracy and speed of mnistops' recipes, side by side with the pytorch/examples MNIST recipe.

Runs, each as the user would (`python -m mnistops stage=train seed=S ...`, a subprocess with a fresh
MNISTOPS_HOME), then measures the best checkpoint's accuracy on the official 10k test set:

  default  the default config (model=cnn, data=mnist, trainer=default), seeds --seeds
  fast     experiment=fast, the same seeds
  logreg   experiment=logreg (model=logreg with its own epochs), the same seeds
  peer     benchmarks/torch_example_mnist.py --all-epochs: pytorch/examples mnist/main.py, its whole
           recipe (14 epochs), noting when it first reaches 99.0 % test accuracy

and prints a markdown table (also written to --out). Times are wall-clock on whatever else the
machine is doing: read them next to the load averages the table records, and next to each run's
process CPU seconds (user + system, from getrusage of the finished child), which depend much less on
the other jobs than wall time does. Nothing is asserted.

Every run (ours and the peer) gets OMP_WAIT_POLICY=PASSIVE unless the environment sets it
(`--omp-wait-policy ''` leaves it alone): on a CPU shared with other jobs, OpenMP's default
spin-waiting makes PyTorch's 2 threads stall behind the other processes, up to ~9x slower.

    MNISTOPS_DATA_MIRROR=file:///path/to/mnist python benchmarks/train_accuracy.py
    python benchmarks/train_accuracy.py --only default,peer --seeds 42
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PARTS = ("default", "fast", "logreg", "peer")
RECIPES = {  # part -> overrides after `stage=train seed=S`
    "default": [],
    "fast": ["experiment=fast"],
    "logreg": ["experiment=logreg"],
}


def machine() -> dict:
    import torch

    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import lightning

        lightning_version = lightning.__version__
    except ImportError:
        lightning_version = "?"
    return {"nproc": os.cpu_count(), "cpu": cpu, "torch": torch.__version__, "lightning": lightning_version,
            "threads": torch.get_num_threads(), "python": platform.python_version(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset")}


def children_cpu_s() -> float:
    """CPU seconds (user + system) used so far by this process's finished children: a run's CPU time
    does not depend on what else shares the machine as much as its wall time does."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def test_accuracy(home: Path, checkpoint: str, overrides: list[str]) -> float:
    """The checkpoint's accuracy on the official test set, computed by the benchmark (not by the train
    stage), in a fresh interpreter: the config tree and the code it composes are read as they are now."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--eval-checkpoint", checkpoint, *overrides]
    env = dict(os.environ, MNISTOPS_HOME=str(home))
    proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"test accuracy of {checkpoint} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["test_acc"])


def eval_checkpoint(checkpoint: str, overrides: list[str]) -> float:
    """(in the subprocess) load the checkpoint, run it on the catalog's test split."""
    import torch
    from hydra import compose, initialize_config_dir

    from mnistops import config as _schemas  # noqa: F401  (registers the structured configs)
    from mnistops.data import catalog
    from mnistops.data.datamodule import labels_tensor, to_tensor
    from mnistops.models.module import Classifier

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["stage=train", *overrides])
    test = catalog.load(cfg, "test")
    net = Classifier.load_from_checkpoint(checkpoint, map_location="cpu").net.eval()
    images, labels = to_tensor(test.images), labels_tensor(test.labels)
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(images), 1000):
            correct += int((net(images[start:start + 1000]).argmax(1) == labels[start:start + 1000]).sum())
    return correct / len(images)


EPOCH_LINE = re.compile(r"^epoch (\d+)/\d+\s.*?val/acc ([0-9.]+)\s+(\d+(?::\d+){1,2}) elapsed", re.M)


def seconds(clock: str) -> int:
    total = 0
    for part in clock.split(":"):
        total = total * 60 + int(part)
    return total


def time_to(log: str, target: float = 0.99):
    """(epoch, seconds since the fit began) of the first epoch whose val/acc reaches `target`, from the
    run's one-line-per-epoch log (EpochLog; the seconds include that epoch's validation pass)."""
    for match in EPOCH_LINE.finditer(log):
        if float(match.group(2)) >= target:
            return int(match.group(1)), seconds(match.group(3))
    return None, None


def run_metrics(home: Path, run_id: str) -> dict:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{home / 'dev' / 'mlflow.db'}")
    run = client.get_run(run_id)
    metrics = dict(run.data.metrics)
    history = client.get_metric_history(run_id, "val/acc")
    metrics["epochs"] = len(history)
    return metrics


def train_once(part: str, seed: int, root: Path, extra: list[str], keep: bool, reuse: bool) -> dict:
    """One `stage=train` subprocess in a fresh MNISTOPS_HOME, then its test accuracy. A failure becomes a
    row with an `error` (the other runs go on). `reuse`: a run already finished under `root` (its log
    names its best checkpoint) is measured again, not retrained."""
    home, log_path, sidecar = root / f"{part}-seed{seed}", root / f"{part}-seed{seed}.log", root / f"{part}-seed{seed}.json"
    overrides = [f"seed={seed}", *RECIPES[part], *extra]
    result = {"part": part, "seed": seed, "test_acc": None, "val_acc": None, "epochs": None, "train_s": None,
              "fit_s": None, "wall_s": None, "cpu_s": None, "load": None, "error": None}
    try:
        if reuse and sidecar.is_file() and json.loads(sidecar.read_text()).get("test_acc") is not None:
            print(f"[{part} seed {seed}] reused {sidecar}", flush=True)
            return json.loads(sidecar.read_text())
        if reuse and log_path.is_file() and "best checkpoint:" in log_path.read_text():
            log = log_path.read_text()
            if sidecar.is_file():
                result.update({k: v for k, v in json.loads(sidecar.read_text()).items() if k in ("wall_s", "cpu_s", "load")})
            print(f"[{part} seed {seed}] reusing the finished run in {home}"
                  + ("" if result["wall_s"] else " (its process time is unknown)"), flush=True)
        else:
            shutil.rmtree(home, ignore_errors=True)
            cmd = [sys.executable, "-m", "mnistops", "stage=train", *overrides]
            env = dict(os.environ, MNISTOPS_HOME=str(home), PYTHONUNBUFFERED="1")
            print(f"[{part} seed {seed}] {' '.join(cmd[1:])}  (MNISTOPS_HOME={home}; load {loadavg()})", flush=True)
            t0, cpu0 = time.perf_counter(), children_cpu_s()
            proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            result.update(wall_s=time.perf_counter() - t0, cpu_s=children_cpu_s() - cpu0, load=loadavg())
            log = proc.stdout
            log_path.write_text(log)
            sidecar.write_text(json.dumps(result, indent=2))
            if proc.returncode != 0:
                raise RuntimeError(f"exit {proc.returncode}: " + " | ".join(log.strip().splitlines()[-3:]))
        best = re.search(r"best checkpoint: (\S+)", log)
        run = re.search(r"in run ([0-9a-f]{32})", log)
        if not best or not run:
            raise RuntimeError("no 'best checkpoint' / run id in the output")
        metrics = run_metrics(home, run.group(1))
        result.update(val_acc=metrics.get("best_val/acc"), epochs=metrics.get("epochs"),
                      train_s=metrics.get("time/train_s"), fit_s=metrics.get("time/fit_s"))
        result["reached_epoch"], result["reached_s"] = time_to(log)
        result["test_acc"] = test_accuracy(home, best.group(1), overrides)
    except Exception as err:  # noqa: BLE001 (report it in the table, measure the rest)
        result["error"] = f"{type(err).__name__}: {err}"
        print(f"[{part} seed {seed}] FAILED: {result['error']} (log: {log_path})", flush=True)
        return result
    sidecar.write_text(json.dumps(result, indent=2))
    print(f"[{part} seed {seed}] test acc {result['test_acc']:.4f}, training {fmt(result['train_s'])} s, "
          f"process {fmt(result['wall_s'])} s", flush=True)
    if not keep:
        shutil.rmtree(home, ignore_errors=True)
    return result


def run_peer(root: Path, reuse: bool = False) -> dict:
    out = root / "peer.json"
    if reuse and out.is_file() and "wall_s" in json.loads(out.read_text()):
        print(f"[peer] reused {out}", flush=True)
        return json.loads(out.read_text())
    cmd = [sys.executable, str(REPO / "benchmarks" / "torch_example_mnist.py"), "--all-epochs", "--json", str(out)]
    print(f"[peer] {' '.join(cmd[1:])}  (load {loadavg()})", flush=True)
    t0, cpu0 = time.perf_counter(), children_cpu_s()
    subprocess.run(cmd, check=True, cwd=REPO)
    result = json.loads(out.read_text())
    result.update(part="peer", wall_s=time.perf_counter() - t0, cpu_s=children_cpu_s() - cpu0, load=loadavg())
    out.write_text(json.dumps(result, indent=2))
    return result


def fmt(x, spec=".1f", empty="–"):
    return empty if x is None else format(x, spec)


def mean(xs):
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def seed_rows(rows: list[dict]) -> list[str]:
    lines = ["| seed | test acc | best val acc | epochs | training s | fit s (with val) | to 99 % val s (epoch) "
             "| process s | process CPU s | load avg at end |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if r.get("error"):
            lines.append(f"| {r['seed']} | failed: {r['error'][:200]} | | | | | | {fmt(r['wall_s'])} | {fmt(r.get('cpu_s'))} "
                         f"| {r['load'] or ''} |")
            continue
        reached = f"{fmt(r.get('reached_s'), 'd')} ({r['reached_epoch']})" if r.get("reached_epoch") else "–"
        lines.append(f"| {r['seed']} | {r['test_acc']:.2%} | {fmt(r['val_acc'], '.2%')} | {fmt(r['epochs'], 'd')} | "
                     f"{fmt(r['train_s'])} | {fmt(r['fit_s'])} | {reached} | {fmt(r['wall_s'])} | {fmt(r.get('cpu_s'))} "
                     f"| {r['load'] or ''} |")
    rows = [r for r in rows if not r.get("error")]
    if len(rows) > 1:
        accs = [r["test_acc"] for r in rows]
        lines.append(f"| **mean** | **{mean(accs):.2%}** (min {min(accs):.2%}) | {fmt(mean([r['val_acc'] for r in rows]), '.2%')} "
                     f"| | **{fmt(mean([r['train_s'] for r in rows]))}** | {fmt(mean([r['fit_s'] for r in rows]))} | "
                     f"{fmt(mean([r.get('reached_s') for r in rows]))} | {fmt(mean([r['wall_s'] for r in rows]))} | "
                     f"{fmt(mean([r.get('cpu_s') for r in rows]))} | |")
    return lines


def report(results: dict, info: dict, started: str, load0: str) -> str:
    lines = ["# Training: accuracy and speed", "",
             f"Run {started} with `python benchmarks/train_accuracy.py {' '.join(sys.argv[1:])}`.", "",
             f"Machine: {info['nproc']} CPUs ({info['cpu']}), torch {info['torch']} ({info['threads']} threads), "
             f"lightning {info['lightning']}, Python {info['python']}, OMP_WAIT_POLICY={info['omp_wait_policy']}; no GPU used. "
             f"Load average (1/5/15 min) at the start: {load0}; at the end: {loadavg()}. "
             "Other jobs may share the machine: times are wall-clock and noisy.", "",
             "Test accuracy: the run's best checkpoint (by val/acc) on the official 10k test set, computed by the "
             "benchmark. *training s*: the training passes only (MLflow `time/train_s`); *fit s*: with the "
             "per-epoch validation passes; *process s*: the whole `python -m mnistops stage=train` process "
             "(imports, data check, MLflow, checkpoints).", ""]
    if results.get("default"):
        lines += ["## Default config: `python -m mnistops stage=train seed=S`", "",
                  "Target: mean test accuracy >= 99.70 % with <= 10 minutes of training per seed on a quiet machine. "
                  "*to 99 % val s*: from the start of the fit to the end of the first epoch (with its validation "
                  "pass) whose val/acc reaches 99 % (the run's epoch log).", ""]
        lines += seed_rows(results["default"]) + [""]
    peer = results.get("peer")
    if peer:
        per_epoch = ", ".join(f"{e['test_acc']:.2%}" for e in peer["epochs"])
        lines += ["## The pytorch/examples MNIST recipe on the same machine", "",
                  f"Peer: `benchmarks/torch_example_mnist.py --all-epochs` (pytorch/examples `mnist/main.py`: two convs, "
                  f"dropout, two FC layers, Adadelta 1.0, StepLR(1, 0.7), batch 64, {len(peer['epochs'])} epochs, per-sample "
                  f"torchvision DataLoader, {'shuffled' if peer['shuffle'] else 'unshuffled as on CPU'}, all 60k training "
                  f"images), test accuracy after each epoch: {per_epoch}; "
                  + (f"first >= {peer['target']:.1%} after epoch {peer['reached_epoch']}." if peer["reached_epoch"]
                     else f"never reached {peer['target']:.1%}."), ""]
        default = [r for r in results.get("default") or [] if not r.get("error")]
        lines += ["| recipe | test acc | epochs | training s | to 99 % s | process s | process CPU s |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        if default:
            lines.append(f"| mnistops default (mean of {len(default)}; 99 % on val, with its val passes) | "
                         f"{mean([r['test_acc'] for r in default]):.2%} | {fmt(default[0]['epochs'], 'd')} | "
                         f"{fmt(mean([r['train_s'] for r in default]))} | {fmt(mean([r.get('reached_s') for r in default]))} | "
                         f"{fmt(mean([r['wall_s'] for r in default]))} | {fmt(mean([r.get('cpu_s') for r in default]))} |")
        reached_s = peer.get("reached_train_s")
        if reached_s is not None:
            reached_s += sum(e["test_s"] for e in peer["epochs"][:peer["reached_epoch"]])
        lines.append(f"| pytorch/examples mnist (99 % on test, with its test passes) | {peer['test_acc']:.2%} | "
                     f"{len(peer['epochs'])} | {peer['train_s']:.1f} | {fmt(reached_s)} | {peer['wall_s']:.1f} | "
                     f"{fmt(peer.get('cpu_s'))} |")
        lines.append("")
    if results.get("fast"):
        fast = [r for r in results["fast"] if not r.get("error")]
        lines += ["## `experiment=fast`: the quickest road to 99.0 % test accuracy", "",
                  "`python -m mnistops stage=train experiment=fast seed=S` (`conf/experiment/fast.yaml`; its epochs may "
                  "each take only part of the batches, `trainer.limit_train_batches`):", ""]
        lines += seed_rows(results["fast"]) + [""]
        if fast and peer and peer.get("reached_train_s") and mean([r["train_s"] for r in fast]):
            ratio = peer["reached_train_s"] / mean([r["train_s"] for r in fast])
            lines += [f"**Speed-up over the peer's training time to 99.0 % test accuracy ({peer['reached_train_s']:.1f} s): "
                      f"{ratio:.1f}x**.", ""]
    if results.get("logreg"):
        lines += ["## `experiment=logreg` (multinomial logistic regression)", "",
                  "The Azure ML tutorial's scikit-learn LogisticRegression reports 92.04 % test accuracy.", ""]
        lines += seed_rows(results["logreg"]) + [""]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts: {', '.join(PARTS)}")
    parser.add_argument("--seeds", default="42,1,2", help="comma-separated seeds for the mnistops runs")
    parser.add_argument("--root", default=None, help="folder for the runs' MNISTOPS_HOMEs and logs (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep each run's MNISTOPS_HOME (checkpoints, MLflow store)")
    parser.add_argument("--reuse", action="store_true",
                        help="with --root (and --keep) of an earlier, interrupted benchmark: measure its finished runs, don't retrain them")
    parser.add_argument("--eval-checkpoint", default=None, help=argparse.SUPPRESS)  # internal: see test_accuracy()
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "train_accuracy.md"),
                        help="where to write the markdown table ('' = don't)")
    parser.add_argument("--omp-wait-policy", default="PASSIVE",
                        help="OMP_WAIT_POLICY for every run unless already set ('' = leave it alone)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every mnistops run")
    args = parser.parse_args(argv)
    if args.eval_checkpoint:
        print(json.dumps({"test_acc": eval_checkpoint(args.eval_checkpoint, args.overrides)}))
        return
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"--only: unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if args.omp_wait_policy:  # before anything here loads torch (and its OpenMP runtime)
        os.environ.setdefault("OMP_WAIT_POLICY", args.omp_wait_policy)
    if not os.environ.get("MNISTOPS_DATA_MIRROR"):
        print("note: MNISTOPS_DATA_MIRROR is unset: each fresh MNISTOPS_HOME downloads from data.mirrors", flush=True)

    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="mnistops-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    started, load0, info = time.strftime("%Y-%m-%d %H:%M"), loadavg(), machine()
    results: dict = {}
    for part in PARTS:  # a fixed order, whatever --only says
        if part not in parts:
            continue
        if part == "peer":
            try:
                results["peer"] = run_peer(root, args.reuse)
            except (subprocess.CalledProcessError, OSError, ValueError) as err:
                print(f"[peer] FAILED: {err}", flush=True)
        else:
            results[part] = [train_once(part, seed, root, args.overrides, args.keep, args.reuse) for seed in seeds]
        (root / "results.json").write_text(json.dumps(results, indent=2))
    table = report(results, info, started, load0)
    print("\n" + table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table + "\n")
        print(f"\nwritten to {args.out}; runs under {root}")


if __name__ == "__main__":
    main()
