"""Structured-config schemas, registered in Hydra's ConfigStore.

Every YAML file under ``conf/`` is merged onto these dataclasses, so a misspelt key or a value of
the wrong type fails at composition time with the key's full name, before anything runs.
Importing this module is cheap (no torch, no mlflow): ``--help`` and ``--cfg job`` stay instant.

One rule for defaults: **every default lives here, in the schema** (typed, with the comment that
says what it means), and a YAML file under ``conf/`` sets only what its option changes (``model=logreg``
its net, optimizer and rate; ``env=qa`` its name and port). A group's ``default`` option selects the
schema and sets nothing. Why here and not in YAML: the schema must exist anyway (it types and checks
every key), it holds every knob (not only those some option sets), and it is what ``--cfg job``,
the tests and other code read. tests/test_config_declared_once.py fails on any YAML value that
restates a schema default, and on a ``default.yaml`` that sets a key the schema already defaults.
("The schema" includes each flavour's own fields: a flavour owns its config, ``FlavourConfig`` below,
in ``mnistops/backends/<flavour>/config.py``, joined to the sections users type.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from mnistops import tags as T



def config_path() -> str:
    """The repo's conf/ in a source checkout; the copy packaged as mnistops.conf once installed."""
    from pathlib import Path

    source_tree = Path(__file__).resolve().parent.parent / "conf"
    if (source_tree / "config.yaml").is_file() and (source_tree / "env").is_dir():
        return str(source_tree)
    return "pkg://mnistops.conf"


def other_env(cfg, name: str):
    """Another env's `env` section (e.g. `promote.source_env=qa` read from env=prod), from its
    conf/env/<name>.yaml on the same schema, with its ${oc.env:...} values read now."""
    from importlib import resources
    from pathlib import Path

    from mnistops.errors import MnistopsError

    root = config_path()
    path = resources.files("mnistops.conf") / "env" / f"{name}.yaml" if root.startswith("pkg://") \
        else Path(root) / "env" / f"{name}.yaml"
    if not path.is_file():
        raise MnistopsError(f"env {name!r} has no config file ({path})")
    raw = OmegaConf.load(str(path))
    section = raw["env"] if "env" in raw else raw  # a `# @package _global_` env file holds an env: block
    merged = OmegaConf.merge(OmegaConf.structured(section_schema("env")), section)
    OmegaConf.resolve(merged)
    return merged


def _stages_help() -> str:
    from mnistops.stage_table import help_text

    return help_text()


if not OmegaConf.has_resolver("mnistops_stages"):  # `--help` lists the stages from their one table
    OmegaConf.register_new_resolver("mnistops_stages", _stages_help)
if not OmegaConf.has_resolver("abspath"):
    OmegaConf.register_new_resolver("abspath", lambda p: os.path.abspath(os.path.expanduser(str(p))))
if not OmegaConf.has_resolver("cpu_count"):  # endpoint.workers: one per core of the machine that serves
    OmegaConf.register_new_resolver("cpu_count", lambda: os.cpu_count() or 1)

# One knob: the backend picks the endpoint it serves on (env.backend=azure alone means Azure's managed
# online endpoint), and the endpoint's kind picks the defaults that differ between kinds. A flavour
# adds its own backend -> kind and kind defaults (FlavourConfig.endpoint_kind, .kind_defaults).
ENDPOINT_KIND = {"local": "local"}  # env.backend -> endpoint.kind
KIND_DEFAULTS = {  # knob -> {endpoint.kind: default}
    "startup_timeout_s": {"local": 90.0},
}
if not OmegaConf.has_resolver("endpoint_kind"):
    OmegaConf.register_new_resolver("endpoint_kind", lambda backend: ENDPOINT_KIND.get(str(backend), str(backend)))
if not OmegaConf.has_resolver("endpoint_kind_default"):
    OmegaConf.register_new_resolver(
        "endpoint_kind_default", lambda knob, kind: KIND_DEFAULTS[knob].get(str(kind), KIND_DEFAULTS[knob]["local"]))


@dataclass
class PathsConfig:
    # Root of every local store; relative values are taken from the directory you run in.
    home: str = "${abspath:${oc.env:MNISTOPS_HOME,.mnistops}}"


@dataclass
class EnvConfig:
    name: str = MISSING
    backend: str = "local"  # local | azure
    description: str = ""
    # None: the env's own sqlite store, <paths.home>/<env>/mlflow.db
    tracking_uri: Optional[str] = None
    model_name: str = "mnist-classifier"


@dataclass
class CollectConfig:
    """The endpoint's data collector: what it served, into <paths.home>/<env>/monitoring/<endpoint>/."""

    enabled: bool = True
    # share of scored requests whose inputs and outputs are kept; every request's system record
    # (status, latency, deployment) is kept whatever the rate
    sampling_rate: float = 1.0
    rotate_mb: float = 64.0  # a request file is closed and a new one started past this size...
    rotate_minutes: float = 60.0  # ...or this age
    flush_ms: float = 200.0  # the writer thread wakes this often (what a kill -9 can lose)
    max_pending: int = 50000  # records waiting for the writer; beyond it they are dropped and counted


@dataclass
class EndpointConfig:
    """A real-time endpoint: where it listens, how it answers, and how traffic splits.

    Every endpoint knob and its one default; conf/endpoint/<kind>.yaml sets only what differs for
    that kind, conf/env/<env>.yaml sets the env's port. The local server reads the subset it uses
    (mnistops/serving/settings.py:ServerSettings, the same names)."""

    name: str = "mnist"
    # local: a supervised server on this machine | azure_managed: a managed online endpoint; default: the
    # one env.backend serves on (ENDPOINT_KIND), so env.backend=azure needs no endpoint=azure_managed
    kind: str = "${endpoint_kind:${oc.select:env.backend,local}}"  # (an EndpointConfig alone: local)
    host: str = "127.0.0.1"
    port: int = 5080  # conf/env/<env>.yaml: dev 5080, qa 5081, prod 5082
    # worker processes behind the port (each with its own models and micro-batcher); default: one per core
    workers: int = "${cpu_count:}"  # type: ignore[assignment]  (an interpolation, resolved to an int)
    auth: bool = True  # a scoring key (primary or secondary) on scoring routes; admin routes always take the admin key
    # deployment -> percent, summing to 100; empty: the newly deployed version takes 100
    # (typed Any: Hydra's struct mode would refuse new keys in a typed dict override)
    traffic: Any = None
    mirror_traffic: Any = None  # deployment -> percent of requests copied there; answers discarded
    max_body_bytes: int = 2_000_000
    request_timeout_ms: int = 2000
    max_batch: int = 64  # micro-batching of concurrent requests
    max_wait_ms: float = 2.0
    max_queue: int = 2048  # images waiting per deployment and worker; beyond it: 503 at once
    startup_timeout_s: float = "${endpoint_kind_default:startup_timeout_s,${.kind}}"  # type: ignore[assignment]
    # stage=endpoint's own options: its section is the one named after it (DESIGN §2 pins
    # `endpoint.action=status|stop`); no server reads them (ServerSettings leaves them out)
    action: str = "status"  # stage=endpoint: status | stop | regenerate-keys
    key: str = "primary"  # stage=endpoint endpoint.action=regenerate-keys: which scoring key (primary | secondary)
    collect: CollectConfig = field(default_factory=CollectConfig)
    # a flavour's own endpoint kind adds its knobs (azure_managed: mnistops/backends/azure/config.py)


@dataclass
class DataFileConfig:
    name: str = MISSING  # file name without .gz, e.g. train-images-idx3-ubyte
    size: int = MISSING  # bytes, decompressed
    # what a download is verified by: the decompressed bytes' digests (any faithful mirror, compressed
    # any way or not at all, verifies) and, accepted only where neither is known, the publisher's .gz MD5
    md5: Optional[str] = None
    sha256: Optional[str] = None
    gz_md5: Optional[str] = None


@dataclass
class AugmentConfig:
    enabled: bool = False
    max_shift: float = 0.0  # pixels
    max_rotate: float = 0.0  # degrees
    max_scale: float = 0.0  # relative, e.g. 0.1 = 90%..110%
    elastic: float = 0.0  # pixels of smooth random displacement (elastic distortion); 0 = off
    elastic_cells: int = 4  # its lattice: cells x cells random offsets, upsampled to the image


@dataclass
class DataConfig:
    name: str = MISSING
    mirrors: List[str] = field(default_factory=list)
    train_images: DataFileConfig = field(default_factory=DataFileConfig)
    train_labels: DataFileConfig = field(default_factory=DataFileConfig)
    test_images: DataFileConfig = field(default_factory=DataFileConfig)
    test_labels: DataFileConfig = field(default_factory=DataFileConfig)
    classes: List[str] = field(default_factory=list)
    val_size: int = 5000  # held out from the training file, seeded
    batch_size: int = 128
    eval_batch_size: int = 1000
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    timeout_s: float = 30.0  # per mirror request
    retries: int = 2  # per mirror
    sample_grid: int = 100  # images in the sample grid PNG
    # .npz files (`images` uint8 N x 28 x 28, `labels`) appended to the training split, e.g. the
    # feedback-labelled production data a monitor-triggered retraining adds
    extra_train: List[str] = field(default_factory=list)


@dataclass
class ModelConfig:
    name: str = MISSING
    net: Dict[str, Any] = field(default_factory=dict)  # _target_ + kwargs of an nn.Module
    optimizer: str = "adamw"  # sgd | adam | adamw | adadelta
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    scheduler: str = "onecycle"  # onecycle | step | cosine | none
    step_gamma: float = 0.7  # step only
    pct_start: float = 0.25  # onecycle only
    label_smoothing: float = 0.0


@dataclass
class TrainerConfig:
    # the default cnn recipe's budget (~99.6 % test accuracy in ~3 (idle) to ~6 (busy) minutes on
    # 2 CPU cores; benchmarks/results/training.md)
    max_epochs: int = 6
    min_epochs: Optional[int] = None
    max_time: Optional[str] = None  # "DD:HH:MM:SS"
    limit_train_batches: Optional[Any] = None  # int (batches) or float (fraction)
    limit_val_batches: Optional[Any] = None
    limit_test_batches: Optional[Any] = None
    fast_dev_run: Any = False
    precision: Any = "32-true"
    deterministic: Any = True
    gradient_clip_val: Optional[float] = None
    log_every_n_steps: int = 50
    num_sanity_val_steps: int = 0
    check_val_every_n_epoch: int = 1
    enable_progress_bar: Optional[bool] = None  # None: on when stderr is a terminal


@dataclass
class ComputeConfig:
    name: str = MISSING
    accelerator: str = "cpu"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    num_threads: Optional[int] = None  # torch intra-op threads; None: all cores
    # a flavour's compute clusters add their knobs (compute.cluster, ...: mnistops/backends/azure/config.py)


@dataclass
class StageConfig:
    name: str = MISSING
    steps: List[str] = field(default_factory=list)  # composite stages only


@dataclass
class TrainStageConfig:
    resume: bool = False  # continue the latest unfinished train run from its last checkpoint
    resume_run_id: Optional[str] = None  # or this run
    monitor: str = "val/acc"
    monitor_mode: str = "max"
    checkpoint_every_n_steps: Optional[int] = None  # extra mid-epoch `last.ckpt`
    # after training: fit a temperature and the "not a digit" threshold on the validation split
    # (models/calibration.py); register bakes both into the exported graph
    calibrate: bool = True
    # the ood_score every answer carries: mahalanobis (penultimate-layer embedding; AUROC ~0.997
    # Fashion-MNIST vs MNIST, benchmarks/results/ood_calibration.md) | energy | msp (logit-based)
    ood_method: str = "mahalanobis"
    ood_rate: float = 0.008  # share of validation digits above the threshold (<= 1 % of test flagged)
    ood_fit_images: int = 10000  # training images the Mahalanobis class means and covariance are fitted on


@dataclass
class EvaluateStageConfig:
    run_id: Optional[str] = None  # train run to evaluate; None: the latest finished one
    misclassified: int = 64  # images in the misclassified grid


@dataclass
class RegisterStageConfig:
    run_id: Optional[str] = None  # train run to register; None: the latest evaluated one
    alias: str = T.CANDIDATE


@dataclass
class DeployStageConfig:
    model: str = T.model_uri("${env.model_name}", T.CANDIDATE)  # any version, alias or "latest"
    deployment: Optional[str] = None  # blue | green; None: the one not taking traffic


@dataclass
class SmokeStageConfig:
    samples: int = 200  # labelled test images sent as web requests
    min_accuracy: float = 0.9
    max_p95_ms: float = 250.0
    concurrency: int = 4
    deployment: Optional[str] = None  # pin a deployment; None: the endpoint's traffic split


@dataclass
class BaselineStageConfig:
    model: str = T.model_uri("${env.model_name}", T.CHAMPION)  # whose quality becomes the model baseline
    quantiles: List[float] = field(default_factory=lambda: [0.001, 0.999])
    class_tolerance: float = 0.5  # relative, on each class's share of a batch


@dataclass
class ValidateStageConfig:
    # what to check against the env's baseline suite: train | test (the dataset's files), or a
    # .npz path with `images` (and optionally `labels`), e.g. collected production inputs
    batch: str = "train"
    data_docs: bool = True


@dataclass
class QualityConfig:
    """Label quality of labelled batches (stage=validate, so CI before training, and the feedback data
    a monitor hands over): confident learning on the env's @champion's probabilities
    (mnistops/quality/label_quality.py). Without a champion only the suite's class-mean check runs."""

    max_label_noise: float = 0.05  # estimated share of wrong labels above which a batch is refused
    # one confusion above this share of the images of a class (e.g. half the 4s labelled 9) is refused too
    max_class_noise: float = 0.1
    label_issues: str = "fail"  # fail: refuse the batch | drop: drop the suspects, record which, go on
    model: str = T.model_uri("${env.model_name}", T.CHAMPION)  # whose probabilities judge the labels
    # a weaker model's own confident mistakes look like wrong labels (an 85 % logreg: ~4.4 % on clean
    # test labels): below this registered test accuracy it does not judge, the class-mean check does
    min_model_accuracy: float = 0.95


@dataclass
class GateStageConfig:
    candidate: str = T.model_uri("${env.model_name}", T.CANDIDATE)
    tolerance: float = 0.002  # accuracy may drop at most this much below the champion's
    class_tolerance: float = 0.01  # no class's recall may drop more than this
    min_accuracy: float = 0.97  # the first champion needs at least this


@dataclass
class CiStageConfig:
    # the tests step: the unit tier (nothing trains, no server starts), on every core of the agent, a
    # module's tests on one worker (its fixtures made once): 473 tests in 61 s instead of 103 s on 2 cores
    pytest_args: List[str] = field(default_factory=lambda: ["-m", "unit", "-x", "-q", "-p", "no:cacheprovider",
                                                            "-n", "auto", "--dist", "loadfile"])


@dataclass
class UiConfig:
    """stage=ui: MLflow's UI on the env's store (with env.tracking_uri set, that server's own UI)."""

    host: str = "127.0.0.1"
    port: int = 5000
    foreground: bool = True  # serve until Ctrl-C; false: start it in the background, print its URL and pid
    startup_timeout_s: float = 120.0


@dataclass
class PromoteStageConfig:
    source_env: str = "qa"
    # None: the source env's own local store, <paths.home>/<source_env>/mlflow.db
    source_tracking_uri: Optional[str] = None
    model: str = T.model_uri("${env.model_name}", T.CHAMPION)  # in the source registry
    alias: str = T.CHAMPION  # set on the promoted version in this env


@dataclass
class MonitorThresholds:
    data_drift: float = 0.1  # normalised Wasserstein distance, per image feature
    embedding_drift: float = 0.1  # normalised Wasserstein distance, per principal component of the embedding
    prediction_drift: float = 0.1  # Jensen-Shannon distance (base 2) of the predicted-class distribution
    out_of_bounds_rate: float = 0.05  # share of collected images failing a baseline-suite range check
    malformed_rate: float = 0.05  # share of scoring requests refused as malformed (400/415/422)
    min_accuracy: float = 0.95  # on requests with feedback
    min_class_recall: float = 0.8  # per class, on requests with feedback
    min_class_precision: float = 0.8  # per class, on requests with feedback
    max_p99_ms: float = 500.0  # per deployment
    max_error_rate: float = 0.01  # 5xx, 408 and 503 answers per deployment
    max_ood_rate: float = 0.05  # share of answers flagged "not a digit" (the model's threshold flags ~1 % of MNIST)


@dataclass
class AlertSinksConfig:
    # Teams/Slack-style incoming webhook (default: $MNISTOPS_ALERT_WEBHOOK); None: the alert log only
    webhook_url: Optional[str] = "${oc.env:MNISTOPS_ALERT_WEBHOOK,null}"
    timeout_s: float = 5.0
    retries: int = 3  # attempts after the first
    backoff_s: float = 0.5  # doubled after each failed attempt
    fail_on_sink_error: bool = False  # a dead sink is always reported; this also makes it fail the run


@dataclass
class RetrainConfig:
    # the env whose CI retrains: the labelled production data are handed to its store, and a new
    # champion reaches this env only through that env's CI, CD, approval and promotion
    env: str = "qa"
    trigger: str = "local"  # local: run `env=<env> stage=ci` here now | none: hand the data over only
    # trigger=none: write what the retraining CI needs ({env, dataset_run_id, labelled, command,
    # ci_overrides}) to this JSON file, for a pipeline step that queues that env's CI; removed when
    # the stage starts, so no file means no retraining asked for
    request_file: Optional[str] = None
    overrides: List[str] = field(default_factory=list)  # extra overrides for the retraining `stage=ci`
    min_labelled: int = 1  # feedback-labelled images needed before a retraining is worth it


@dataclass
class MonitorConfig:
    window: str = "24h"  # how far back from now: 30m | 24h | 7d | all
    # judge exactly the requests of this stage=traffic run (its MLflow run id) instead of a window,
    # waiting up to collect_wait_s for the endpoint's collector to have written all of them
    traffic_run: Optional[str] = None
    collect_wait_s: float = 30.0
    endpoint: Optional[str] = None  # None: endpoint.name
    reference_size: int = 10000  # training images sampled as the drift reference
    min_requests: int = 100  # fewer collected images: drift signals are reported as not computed
    min_feedback: int = 30  # fewer labelled requests: model performance is not judged
    embedding_components: int = 8  # principal components of the model embedding compared
    # drift values are lower bounds: the distance minus this quantile of the distances that windows
    # of the same size drawn from the reference itself show (sampling noise); None: raw distances
    drift_noise_quantile: Optional[float] = 0.95
    min_class_support: int = 10  # labelled (recall) or predicted (precision) images to judge a class
    # how estimated_performance estimates accuracy without labels: atc | atc_ne | ac | doc
    # (mnistops/monitoring/estimate.py; chosen by benchmarks/estimated_accuracy.py)
    estimator: str = "atc"
    model: Optional[str] = None  # whose embedding; None: the version that served most of the window
    thresholds: MonitorThresholds = field(default_factory=MonitorThresholds)
    alerts: AlertSinksConfig = field(default_factory=AlertSinksConfig)
    on_alert: str = "none"  # none | retrain
    fail_on_alert: bool = False  # alerts are data: exit 0 unless this is set
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    schedule: str = "0 * * * *"  # cron: how often the scheduled monitoring job runs


@dataclass
class TrafficStageConfig:
    shift: str = "none"  # none | rotate | noise | blur | invert | thick | imbalance
    severity: float = 1.0  # 0..1
    requests: int = 500
    rate: float = 50.0  # requests per second; 0: as fast as the endpoint answers
    feedback_fraction: float = 0.0  # share of requests whose true label is sent to /feedback
    label_noise: float = 0.0  # share of that feedback given a wrong label
    concurrency: int = 4
    seed: Optional[int] = None  # None: the top-level seed
    deployment: Optional[str] = None  # pin a deployment; None: the endpoint's traffic split


@dataclass
class BatchStageConfig:
    """stage=batch: score many images offline, answered as the endpoint answers them."""

    model: str = T.model_uri("${env.model_name}", T.CHAMPION)  # any version, alias or "latest"
    input: Optional[str] = None  # a folder of pictures, an .npz (`images`) or a .parquet file
    output: Optional[str] = None  # .parquet | .csv | .jsonl (the suffix picks the format)
    batch_size: int = 1024  # images per ONNX Runtime call
    threads: Optional[int] = None  # ONNX Runtime intra-op threads (and picture decoders); None: every core
    progress: bool = True  # a tqdm bar (rate, ETA) on stderr
    # env.backend=azure: a batch endpoint whose deployment spreads mini-batches of files over
    # compute.cluster's nodes (backends/azure/batch_specs.py)
    endpoint_name: Optional[str] = None  # None: <endpoint.name>-batch-<env>
    instance_count: Optional[int] = None  # nodes; None: compute.instance_count
    mini_batch_size: int = 10  # files per run() call on a node
    max_concurrency_per_instance: int = 2  # run() processes per node
    error_threshold: int = 0  # files that may fail before the job fails (-1: any number)
    timeout_s: int = 300  # per mini-batch


@dataclass
class CanaryStageConfig:
    """stage=canary (and stage=cd with cd.canary): deploy.model on mirrored live traffic vs the champion."""

    mirror: int = 20  # percent of live requests copied to the challenger (answers recorded, never returned)
    requests: int = 500  # requests answered by both before judging (at 20 %: 2,500 live requests)
    warmup: int = 50  # ...after this many more, not judged: the freshly loaded challenger's cold start
    min_agreement: float = 0.97  # lower confidence bound on the share of images with the same digit
    max_error_rate: float = 0.01  # the challenger's failed answers (confidence bound)
    max_latency_ratio: float = 1.5  # challenger p99 / champion p99, on the same requests
    max_ood_increase: float = 0.02  # 'not a digit' rate, challenger minus champion (where answers carry it)
    confidence: float = 0.95  # of the Wilson intervals
    timeout_s: float = 600.0  # waiting longer for `requests` ends in hold
    no_traffic_s: float = 30.0  # no live request at all in this long: "no live traffic"
    poll_s: float = 2.0


@dataclass
class CdStageConfig:
    canary: bool = False  # judge the new version on mirrored live traffic before traffic moves (prod: true)


@dataclass
class Config:
    defaults: List[Any] = field(default_factory=list)
    env: EnvConfig = MISSING
    data: DataConfig = MISSING
    model: ModelConfig = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    compute: ComputeConfig = MISSING
    endpoint: EndpointConfig = MISSING
    stage: StageConfig = MISSING
    paths: PathsConfig = field(default_factory=PathsConfig)
    train: TrainStageConfig = field(default_factory=TrainStageConfig)
    evaluate: EvaluateStageConfig = field(default_factory=EvaluateStageConfig)
    register: RegisterStageConfig = field(default_factory=RegisterStageConfig)
    deploy: DeployStageConfig = field(default_factory=DeployStageConfig)
    smoke: SmokeStageConfig = field(default_factory=SmokeStageConfig)
    baseline: BaselineStageConfig = field(default_factory=BaselineStageConfig)
    validate: ValidateStageConfig = field(default_factory=ValidateStageConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    gate: GateStageConfig = field(default_factory=GateStageConfig)
    ci: CiStageConfig = field(default_factory=CiStageConfig)
    ui: UiConfig = field(default_factory=UiConfig)
    promote: PromoteStageConfig = field(default_factory=PromoteStageConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    traffic: TrafficStageConfig = field(default_factory=TrafficStageConfig)
    canary: CanaryStageConfig = field(default_factory=CanaryStageConfig)
    cd: CdStageConfig = field(default_factory=CdStageConfig)
    batch: BatchStageConfig = field(default_factory=BatchStageConfig)
    # + each flavour's own sections (azure.*: mnistops/backends/azure/config.py), joined by register_configs
    seed: int = 42
    experiment_name: str = "mnistops"  # MLflow experiment, in the env's store
    # the score a sweep optimises (a metric of the train run, e.g. val/acc)
    optimized_metric: str = "val/acc"


@dataclass(frozen=True)
class FlavourConfig:
    """What a backend flavour adds to the shared schema, as a ZenML flavour owns its ``config_class``.

    A flavour's module ``mnistops/backends/<flavour>/config.py`` defines ``FLAVOUR = FlavourConfig(...)``
    with dataclasses only (no SDK); register_configs finds it there, so a new flavour edits nothing
    here. Its fields join the sections users already type (``azure.*``, ``endpoint.instance_type``)."""

    name: str  # its env.backend value
    # section ("" for the root, else a top-level key such as "endpoint") -> a dataclass whose fields
    # join that section
    sections: Dict[str, type] = field(default_factory=dict)
    endpoint_kind: str = ""  # the endpoint.kind that env.backend=<name> alone selects ("": local)
    kind_defaults: Dict[str, Any] = field(default_factory=dict)  # endpoint knob -> that kind's default


def flavour_configs() -> List[FlavourConfig]:
    """Every flavour's FLAVOUR, found by place: mnistops/backends/<name>/config.py. Imported by name at
    run time (a plugin lookup, as Hydra finds its plugins): the flavour's config depends on this module,
    never the reverse; those modules import dataclasses only, so `--help` stays SDK-free."""
    import importlib
    from pathlib import Path

    found = []
    backends = Path(__file__).resolve().parent / "backends"
    for module in sorted(backends.glob("*/config.py")):
        flavour = getattr(importlib.import_module(f"mnistops.backends.{module.parent.name}.config"), "FLAVOUR", None)
        if isinstance(flavour, FlavourConfig):
            found.append(flavour)
    return found


_SCHEMA: Dict[str, type] = {}  # section -> its dataclass with every flavour's fields ("" : the root)


def _joined(base: type, extra: List[type], fields_of_root: Optional[Dict[str, type]] = None) -> type:
    """`base` with the fields of `extra` after its own (a dataclass subclass of each, same name)."""
    if not extra and not fields_of_root:
        return base
    namespace: Dict[str, Any] = {"__module__": base.__module__, "__doc__": base.__doc__, "__annotations__": {}}
    for name, schema in (fields_of_root or {}).items():  # a root section whose type grew
        namespace["__annotations__"][name] = schema
        default = base.__dataclass_fields__[name].default
        namespace[name] = MISSING if default is MISSING else field(default_factory=schema)
    name = f"{base.__name__}WithFlavours"  # a module attribute too, so a composed config pickles (DDP spawn)
    joined = globals()[name] = dataclass(type(name, (*reversed(extra), base), namespace))
    return joined


def section_schema(section: str = "") -> type:
    """The dataclass of a section (e.g. "env") with every flavour's fields; "": the root schema."""
    if not _SCHEMA:
        register_configs()
    return _SCHEMA[section]


def _config_store_copies_as_itself() -> None:
    """Hydra (1.3) deep-copies its config repository, ConfigStore singleton included, each time it
    lists a config group: ~100 times for `--help` or tab completion, 2.4 s of the 3.7 s `--help`
    took. The store is never mutated through a copy (loading a node deep-copies that node), so a
    copy of the singleton may be the singleton itself; Hydra's own fix (facebookresearch/hydra#2928:
    look the singleton up instead of keeping it) has the same effect."""
    from hydra.core.config_store import ConfigStore

    if "__deepcopy__" not in vars(ConfigStore):
        ConfigStore.__deepcopy__ = lambda self, memo: self


def build_schema(flavours: List[FlavourConfig]) -> Dict[str, type]:
    """Section -> its dataclass with the flavours' fields joined ("": the root schema)."""
    root_fields = Config.__dataclass_fields__
    schema: Dict[str, type] = {}
    for name in root_fields:
        kind = root_fields[name].type
        schema[name] = globals().get(kind, kind) if isinstance(kind, str) else kind
    grown = {}
    for name in sorted({s for f in flavours for s in f.sections if s}):
        if not isinstance(schema.get(name), type) or not hasattr(schema[name], "__dataclass_fields__"):
            raise TypeError(f"a flavour extends section {name!r}, which is not a section of the schema")
        grown[name] = schema[name] = _joined(schema[name], [f.sections[name] for f in flavours if name in f.sections])
    schema[""] = _joined(Config, [f.sections[""] for f in flavours if "" in f.sections], grown)
    schema.pop("defaults", None)
    return schema


def register_configs() -> None:
    """The root schema (every YAML file merges onto it; it types every group), with each flavour's
    fields joined to their sections, and one `stage` option per stage of the table."""
    from mnistops.stage_table import STAGES

    flavours = flavour_configs()
    for flavour in flavours:
        if flavour.endpoint_kind:
            ENDPOINT_KIND[flavour.name] = flavour.endpoint_kind
            for knob, value in flavour.kind_defaults.items():
                KIND_DEFAULTS[knob][flavour.endpoint_kind] = value
    _SCHEMA.clear()
    _SCHEMA.update(build_schema(flavours))

    _config_store_copies_as_itself()
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=_SCHEMA[""])
    for stage in STAGES.values():
        cs.store(group="stage", name=stage.name, node=StageConfig(name=stage.name, steps=list(stage.steps)))


register_configs()
