"""Label quality: how often stage=validate's label check refuses clean and corrupted batches, and how
many of the wrong rows it names, next to the suite's class-mean consistency check (the model-free
check it had before, issue #18).

For each scenario and each of ``--seeds`` seeds: ``--size`` official *test* images drawn at random
(the model never trained on them), labels corrupted as the scenario says, judged by
``label_quality.assess`` with the default ``quality.*`` thresholds on the model's probabilities (its
pyfunc's answer, as the stage computes them), and by the baseline suite's label-image consistency
expectation (nearest reference class-mean image; its threshold from the training set as
``stage=baseline`` derives it). Scenarios:

    clean            no label changed
    random 5% / 10% / 20%   that share of rows given another class, uniformly
    swap 4<->9       half the 4s labelled 9 and half the 9s labelled 4
    half 4->9        half the 4s labelled 9
    half a->b        half of a random class (per seed) labelled as another random class

Targets (issue #18): clean never refused; random 10 % and both systematic swaps refused in >= 19/20;
>= 80 % of the wrong rows among the suspects.

The model: ``--model-dir`` (a downloaded registered model), or the ``--home`` store's
``models:/mnist-classifier@candidate`` (trained there first with ``--recipe`` when absent: the
default recipe, or ``fast`` for ``experiment=fast``). Nothing is asserted.

    MNISTOPS_DATA_MIRROR=file:///path/to/mnist python benchmarks/label_noise.py --home /tmp/lq
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DEFAULT_OUT = REPO / "benchmarks" / "results" / "label_noise.md"
SCENARIOS = ("clean", "random 5%", "random 10%", "random 20%", "swap 4<->9", "half 4->9", "half a->b")
TARGETS = {"clean": "never refused", "random 10%": ">= 19/20 refused", "swap 4<->9": ">= 19/20 refused",
           "half 4->9": ">= 19/20 refused", "half a->b": ">= 19/20 refused"}


def config(home: Path):
    from hydra import compose, initialize_config_dir

    import mnistops.config  # noqa: F401  (schemas)

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=[f"paths.home={home}"])


def mnistops(args, home: Path) -> None:
    env = {**os.environ, "MNISTOPS_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "mnistops", *args, f"paths.home={home}"], cwd=REPO, env=env,
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"mnistops {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")


def model_dir(home: Path, recipe: str) -> tuple:
    """(the candidate's model dir, its test accuracy tag, how it was made)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from mnistops import tracking

    uri = tracking.tracking_uri(config(home))
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(uri, uri)
    made = "found in the store"
    try:
        version = client.get_model_version_by_alias("mnist-classifier", "candidate")
    except Exception:
        t0 = time.perf_counter()
        mnistops(["stage=pipeline", "trainer.enable_progress_bar=false"]
                 + (["experiment=fast"] if recipe == "fast" else []), home)
        made = f"trained here in {time.perf_counter() - t0:.0f} s"
        version = client.get_model_version_by_alias("mnist-classifier", "candidate")
    path = Path(mlflow.artifacts.download_artifacts(f"models:/mnist-classifier/{version.version}",
                                                    dst_path=str(home / "bench-model")))
    return path, version.tags.get("mnistops.test_acc", "?"), made, version.tags.get("mnistops.model", "?")


def corrupt(name: str, labels: np.ndarray, rng) -> np.ndarray:
    noisy = labels.copy()
    if name.startswith("random"):
        share = float(name.split()[1].rstrip("%")) / 100
        rows = rng.choice(len(labels), int(round(share * len(labels))), replace=False)
        noisy[rows] = (noisy[rows] + rng.integers(1, 10, len(rows))) % 10
    elif name != "clean":
        if name == "swap 4<->9":
            pairs = [(4, 9), (9, 4)]
        elif name == "half 4->9":
            pairs = [(4, 9)]
        else:
            a, b = rng.choice(10, 2, replace=False)
            pairs = [(int(a), int(b))]
        for a, b in pairs:
            rows = np.flatnonzero(labels == a)
            noisy[rng.choice(rows, len(rows) // 2, replace=False)] = b
    return noisy


def class_mean_check(train_x, train_y):
    """(templates, threshold): the suite's label-image consistency expectation as stage=baseline builds it."""
    from mnistops.quality import build_suite, suite_info

    suite, _ = build_suite(train_x, train_y, name="bench", dataset_digest="bench")
    (exp,) = [e for e in suite.expectations if getattr(e, "column", None) == "label_matches_template"]
    stats = suite_info(suite)["reference_stats"]
    templates = np.asarray(stats["templates"]["means"], dtype=np.float32).reshape(10, *stats["image_shape"])
    return templates, float(exp.min_value)


def run(args) -> str:
    from mnistops.data import catalog
    from mnistops.quality import label_quality
    from mnistops.quality.table import template_matches

    home = Path(args.home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    cfg = config(home)
    test, train = catalog.load(cfg, "test"), catalog.load(cfg, "train")
    if args.model_dir:
        mdir, acc, made, kind = Path(args.model_dir), "?", args.about or "given", "?"
    else:
        mdir, acc, made, kind = model_dir(home, args.recipe)
    t0 = time.perf_counter()
    probs = label_quality.model_probabilities(mdir, test.images)
    t_probs = time.perf_counter() - t0
    print(f"model {mdir} ({kind}, {made}; test accuracy {acc}); probabilities of 10,000 test images in {t_probs:.1f} s")
    templates, threshold = class_mean_check(train.images, train.labels)
    rows = []
    seconds = []
    for name in args.scenarios:
        res = {"scenario": name, "refused": 0, "class_mean_refused": 0, "true": [], "est": [], "recall": [],
               "precision": [], "by": {"max_label_noise": 0, "systematic": 0}}
        for seed in range(args.seeds):
            rng = np.random.default_rng(1000 * seed + SCENARIOS.index(name) if name in SCENARIOS else seed)
            idx = rng.choice(len(test.labels), args.size, replace=False)
            y = test.labels[idx].astype(np.int64)
            noisy = corrupt(name, y, rng)
            t0 = time.perf_counter()
            q = label_quality.assess(noisy, probs[idx], classes=list(cfg.data.classes), source=name)
            seconds.append(time.perf_counter() - t0)
            wrong = np.flatnonzero(noisy != y)
            res["refused"] += int(not q.passed)
            res["by"]["max_label_noise"] += int(any("max_label_noise" in r for r in q.reasons))
            res["by"]["systematic"] += int(any("systematic" in r for r in q.reasons))
            res["true"].append(len(wrong) / args.size)
            res["est"].append(q.noise_rate)
            if len(wrong):
                res["recall"].append(float(np.isin(wrong, q.suspects).mean()))
            if len(q.suspects):
                res["precision"].append(float(np.isin(q.suspects, wrong).mean()))
            agree = float(np.nanmean(template_matches(test.images[idx], noisy, templates)))
            res["class_mean_refused"] += int(agree < threshold)
        rows.append(res)
        print(f"  {name}: refused {res['refused']}/{args.seeds}, est {np.mean(res['est']):.3f} vs true "
              f"{np.mean(res['true']):.3f}, class-mean check refused {res['class_mean_refused']}/{args.seeds}")
    return report(rows, args, mdir, acc, made, kind, t_probs, float(np.mean(seconds)), threshold)


def machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        cpu = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "?")
    except OSError:
        cpu = platform.processor() or "?"
    return f"{os.cpu_count()} CPUs (nproc), {cpu}, Python {platform.python_version()}"


def _pct(values, digits: int = 1) -> str:
    return f"{100 * np.mean(values):.{digits}f} %" if values else "–"


def report(rows, args, mdir, acc, made, kind, t_probs, t_assess, threshold) -> str:
    import cleanlab

    n = args.seeds
    lines = [
        "# Label quality: confident learning vs the class-mean check",
        "",
        f"`python benchmarks/label_noise.py {' '.join(sys.argv[1:])}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"{machine()}; load average {os.getloadavg()[0]:.1f} at the end; cleanlab {cleanlab.__version__}.",
        "",
        f"Model: {made}" + (f" (`{kind}`, test accuracy {acc})" if kind != "?" else "") + "; its pyfunc's probabilities for the 10,000 official "
        f"test images in {t_probs:.1f} s. Batches: {args.size} test images each, {n} seeds per scenario; "
        f"`quality.max_label_noise` 0.05, `quality.max_class_noise` 0.1 (defaults). Class-mean check: the "
        f"suite's label-image consistency expectation (agreement with the nearest reference class-mean "
        f"image >= {threshold:.3f}). One assessment: {1000 * t_assess:.0f} ms.",
        "",
        "| scenario | wrong labels (true) | estimated | refused (ours) | by noise rate / systematic | "
        "wrong rows among suspects | suspects truly wrong | class-mean check refused | target |",
        "|---|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(f"| {r['scenario']} | {_pct(r['true'])} | {_pct(r['est'], 2)} | **{r['refused']}/{n}** | "
                     f"{r['by']['max_label_noise']} / {r['by']['systematic']} | {_pct(r['recall'])} | "
                     f"{_pct(r['precision'])} | {r['class_mean_refused']}/{n} | {TARGETS.get(r['scenario'], '–')} |")
    lines += ["", "`wrong rows among suspects`: mean over seeds of the share of the corrupted rows that are "
              "suspects (target >= 80 %); `suspects truly wrong`: the share of suspects whose label was "
              "corrupted (on clean batches every suspect is a model error or one of MNIST's own label "
              "errors)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--home", default=str(Path("/tmp") / "mnistops-label-noise"), help="store of the model")
    p.add_argument("--model-dir", help="a downloaded registered model (skips the store)")
    p.add_argument("--about", help="with --model-dir: what the model is, for the report")
    p.add_argument("--recipe", choices=("default", "fast"), default="default", help="when training here")
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--size", type=int, default=1000)
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--out", default=str(DEFAULT_OUT))
    args = p.parse_args()
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    text = run(args)
    print(text)
    Path(args.out).write_text(text)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
