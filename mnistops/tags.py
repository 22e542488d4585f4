"""Every tag key mnistops writes on MLflow runs, registered model versions and Azure ML assets.

One place for the names, because other stages, other envs and the pipelines read them back: a
misspelt literal would silently break promotion or a lookup. Keep them stable: stores written by
earlier versions are read with these names.
"""

from __future__ import annotations

PREFIX = "mnistops."

# --- runs -------------------------------------------------------------------------------------
STAGE = "mnistops.stage"  # which stage made the run
ENV = "mnistops.env"  # the env whose store holds it (also on versions: the env that registered them)
GIT_COMMIT = "mnistops.git_commit"
OUTPUT_DIR = "mnistops.output_dir"
OVERRIDES = "mnistops.overrides"
SWEEP_DIR = "mnistops.sweep_dir"
DATASET_DIGEST = "mnistops.dataset_digest"
MODEL = "mnistops.model"  # model config name (cnn, logreg, ...)
CHECKPOINT_DIR = "mnistops.checkpoint_dir"
BEST_CHECKPOINT = "mnistops.best_checkpoint"
CALIBRATION = "mnistops.calibration"  # on a train run: JSON of protocol.Calibration.metadata() (register bakes it)
WORLD_SIZE = "mnistops.world_size"
EVALUATED = "mnistops.evaluated"
SUITE_VERSION = "mnistops.suite_version"
BASELINE_RUN_ID = "mnistops.baseline_run_id"  # on a validate run: the baseline run whose suite it used
VALIDATION = "mnistops.validation"
BATCH = "mnistops.batch"
LABEL_QUALITY = "mnistops.label_quality"  # on a validate run: passed | failed | dropped | not checked
SMOKE_PASSED = "mnistops.smoke_passed"
BATCH_INPUT = "mnistops.batch.input"  # on a batch run: what it scored, its digest, where the rows went
BATCH_INPUT_DIGEST = "mnistops.batch.input_digest"
BATCH_OUTPUT = "mnistops.batch.output"
LINEAGE_PREFIX = "mnistops.lineage."  # on a batch run: the scoring version's own lineage tags, copied
ENDPOINT = "mnistops.endpoint"

# --- registered versions: lineage -------------------------------------------------------------
RUN_ID = "mnistops.run_id"
CONFIG = "mnistops.config"
WEIGHTS_SHA256 = "mnistops.weights_sha256"
TEST_ACC = "mnistops.test_acc"

# --- registered versions: decisions -----------------------------------------------------------
GATE_DECISION = "mnistops.gate.decision"  # approved | rejected
GATE_REASONS = "mnistops.gate.reasons"
GATE_COMPARED_TO = "mnistops.gate.compared_to"
GATE_ACCURACY = "mnistops.gate.accuracy"
GATE_RUN_ID = "mnistops.gate.run_id"
GATE_ENV = "mnistops.gate.env"
GATE_CANDIDATE = "mnistops.gate.candidate"  # on the gate run
PREVIOUS_CHAMPION = "mnistops.previous_champion"
APPROVED = "approved"
REJECTED = "rejected"


def smoke(env: str) -> str:
    """The smoke outcome of a version in `env` (passed | failed): promotion out of `env` needs passed."""
    return f"mnistops.smoke.{env}"


# --- registered versions: canary analysis (stage=canary) -----------------------------------------
CANARY_DECISION = "mnistops.canary.decision"  # promote | hold | reject
CANARY_REASONS = "mnistops.canary.reasons"
CANARY_COMPARED_TO = "mnistops.canary.compared_to"  # the champion's model URI it was judged against
CANARY_EVIDENCE = "mnistops.canary.evidence"  # e.g. "agreement 0.9950 on 200 requests, p99 ratio 1.10"
CANARY_RUN_ID = "mnistops.canary.run_id"
CANARY_ENV = "mnistops.canary.env"


# --- registered versions: promotion lineage ---------------------------------------------------
SOURCE_ENV = "mnistops.source_env"
SOURCE_VERSION = "mnistops.source_version"
SOURCE_RUN_ID = "mnistops.source_run_id"
SOURCE_URI = "mnistops.source_uri"
SOURCE_ASSET_ID = "mnistops.source_asset_id"

# --- datasets handed between envs (feedback-labelled production data) -------------------------
DATASET = "mnistops.dataset"  # what a data run holds, e.g. production-feedback
IMAGES = "mnistops.images"  # how many images it holds
SOURCE_MONITOR_RUN = "mnistops.source_monitor_run"  # the monitor run (in the source env) that handed it over

# --- monitoring runs --------------------------------------------------------------------------
MONITOR_WINDOW = "mnistops.monitor.window"
MONITOR_ALERTS = "mnistops.monitor.alerts"
MONITOR_ENDPOINT = "mnistops.monitor.endpoint"
MONITOR_MODEL = "mnistops.monitor.model"
MONITOR_RETRAIN = "mnistops.monitor.retrain"
REQUEST_PREFIX = "mnistops.request_prefix"  # on a traffic run: the prefix of every request id it sent
DRIFT_REFERENCE = "mnistops.drift_reference"  # on the run holding a drift reference: its cache key

# --- sweeps -----------------------------------------------------------------------------------
BEST_RUN_ID = "mnistops.best_run_id"
BEST_OVERRIDES = "mnistops.best_overrides"

# --- registry aliases: models:/<name>@<alias> --------------------------------------------------
CANDIDATE = "candidate"  # stage=register points it at the version it registered
CHAMPION = "champion"  # stage=gate moves it to an approved candidate; cd deploys it, promote copies it


def model_uri(model_name: str, alias: str) -> str:
    """`models:/<model_name>@<alias>` (model_name may be an interpolation, e.g. `${env.model_name}`)."""
    return f"models:/{model_name}@{alias}"


# --- the azure flavour: what Azure ML's registry and endpoints lack, kept as tags -------------
ALIAS_PREFIX = "mnistops.alias."  # on a model version: this alias points at it (value: when it moved there, UTC)


def alias(name: str) -> str:
    """The tag that carries alias `name` on Azure ML, whose registry has no aliases."""
    return f"{ALIAS_PREFIX}{name}"


FILES_RUN_ID = "mnistops.files_run_id"  # model version property: the run in the workspace's MLflow holding its files
MODEL_URI = "mnistops.model_uri"  # on an online deployment: the version it serves
PREVIOUS_TRAFFIC = "mnistops.previous_traffic"  # on an online endpoint: traffic + mirror before the last change
