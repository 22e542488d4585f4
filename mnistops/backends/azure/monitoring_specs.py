"""The Azure ML model-monitoring schedule with the local monitor's signals and thresholds
(cfg.monitor.*), on cfg.monitor.schedule (cron), alerting by email or Azure Monitor. Azure runs it
on its own serverless Spark; `stage=monitor` computes the same signals and more from the same
collected files (data_collector_reader.py), and is the one that hands labelled data over for retraining.

Signal mapping (local -> Azure), on the columns score.py collects (data_collector_rows.py):
  data_drift        -> data_drift, normalized_wasserstein_distance on the image features of
                       model_inputs (monitoring.drift.DRIFT_FEATURES, never the pixels or ids),
                       against the training features asset
  prediction_drift  -> prediction_drift, jensen_shannon_distance on the predicted `digit`
  out_of_bounds_rate, malformed_rate -> data_quality on the image features: out_of_bounds_rate;
                       data_type_error_rate and null_value_rate (what Azure can see of malformed inputs)
  min_accuracy, min_class_recall -> model_performance: accuracy; recall (Azure's is macro, not per
                       class), joining model_outputs with the ground-truth asset on the rows'
                       `correlation_id` column (the request id of a one-image request: feedback's key)
embedding_drift, max_p99_ms and max_error_rate have no Azure ML monitoring signal: latency and
errors are Azure Monitor metrics of the endpoint (alert rules), the embedding is stage=monitor's.

The production inputs are the live deployment's collections (`<endpoint>-<deployment>-<collection>`,
registered by Azure when the deployment is created); `follow_deployment` repoints an existing
schedule after a blue/green swap. The ground truth is one asset per endpoint, whatever the slot.
"""

from __future__ import annotations

import re
from typing import Optional

from omegaconf import DictConfig

from mnistops import tags as T
from mnistops.backends.azure.data_collector_rows import CORRELATION as JOIN
from mnistops.backends.azure.data_collector_rows import DIGIT as PREDICTION
from mnistops.backends.azure.data_collector_rows import LABEL
from mnistops.errors import MnistopsError

NOT_ON_AZURE = ("embedding_drift", "max_p99_ms", "max_error_rate")


def iso_window(window: str) -> Optional[str]:
    """monitor.window (30m | 24h | 7d | all) as an ISO 8601 lookback (None: all)."""
    if window == "all":
        return None
    m = re.fullmatch(r"(\d+)([mhd])", window)
    if not m:
        raise MnistopsError(f"monitor.window={window!r} must be <n>m, <n>h, <n>d or all")
    n, unit = m.groups()
    return f"P{n}D" if unit == "d" else f"PT{n}{unit.upper()}"


def schedule_name(endpoint: str) -> str:
    return f"{endpoint}-monitor"


def target_id(endpoint: str, deployment: str) -> str:
    return f"azureml:{endpoint}:{deployment}"


def production_path(endpoint: str, deployment: str, collection: str) -> str:
    """The data asset Azure registers for a deployment's collection (version 1)."""
    return f"azureml:{endpoint}-{deployment}-{collection}:1"


def schedule(cfg: DictConfig, endpoint: str, deployment: str, ground_truth: str):
    from azure.ai.ml import Input
    from azure.ai.ml.entities import (AlertNotification, CategoricalDriftMetrics, CronTrigger, DataDriftMetricThreshold,
                                      DataDriftSignal, DataQualityMetricsNumerical, DataQualityMetricThreshold,
                                      DataQualitySignal, ModelPerformanceClassificationThresholds,
                                      ModelPerformanceMetricThreshold, ModelPerformanceSignal, MonitorDefinition,
                                      MonitoringTarget, MonitorSchedule, NumericalDriftMetrics,
                                      PredictionDriftMetricThreshold, PredictionDriftSignal, ServerlessSparkCompute)
    from azure.ai.ml.entities._monitoring.signals import BaselineDataRange, ProductionData, ReferenceData

    from mnistops.backends.azure import data_assets
    from mnistops.data import mirrors
    from mnistops.monitoring.drift import DRIFT_FEATURES
    from mnistops.quality.features import FEATURE_COLUMNS

    t, az = cfg.monitor.thresholds, cfg.azure.monitoring
    lookback = iso_window(cfg.monitor.window)
    window = BaselineDataRange(lookback_window_size=lookback, lookback_window_offset="P0D") if lookback else None

    def production(context: str, columns=None):
        return ProductionData(input_data=Input(type="uri_folder", path=production_path(endpoint, deployment, context)),
                              data_context=context, data_window=window, data_column_names=columns)

    reference = ReferenceData(input_data=Input(type="mltable", path=f"azureml:{cfg.azure.reference_asset}:"
                                                                     f"{mirrors.digest(cfg)}"), data_context="training")
    truth = ReferenceData(input_data=Input(type="uri_folder",
                                           path=f"azureml:{ground_truth}:{data_assets.GROUND_TRUTH_VERSION}"),
                          data_context="ground_truth", data_column_names={"target_column": LABEL, "join_column": JOIN})
    signals = {
        "data_drift": DataDriftSignal(
            production_data=production("model_inputs"), reference_data=reference, features=list(DRIFT_FEATURES),
            metric_thresholds=DataDriftMetricThreshold(numerical=NumericalDriftMetrics(
                normalized_wasserstein_distance=t.data_drift)), alert_enabled=True),
        "prediction_drift": PredictionDriftSignal(
            production_data=production("model_outputs"), reference_data=reference,
            metric_thresholds=PredictionDriftMetricThreshold(categorical=CategoricalDriftMetrics(
                jensen_shannon_distance=t.prediction_drift)), alert_enabled=True),
        "data_quality": DataQualitySignal(
            production_data=production("model_inputs"), reference_data=reference, features=list(FEATURE_COLUMNS),
            metric_thresholds=DataQualityMetricThreshold(numerical=DataQualityMetricsNumerical(
                out_of_bounds_rate=t.out_of_bounds_rate, data_type_error_rate=t.malformed_rate,
                null_value_rate=t.malformed_rate)), alert_enabled=True),
        "model_performance": ModelPerformanceSignal(
            production_data=production("model_outputs", {"target_column": PREDICTION, "join_column": JOIN}),
            reference_data=truth,
            metric_thresholds=ModelPerformanceMetricThreshold(classification=ModelPerformanceClassificationThresholds(
                accuracy=t.min_accuracy, recall=t.min_class_recall)), alert_enabled=True),
    }
    definition = MonitorDefinition(
        compute=ServerlessSparkCompute(instance_type=az.instance_type, runtime_version=az.runtime_version),
        monitoring_target=MonitoringTarget(ml_task="classification",
                                           endpoint_deployment_id=target_id(endpoint, deployment)),
        monitoring_signals=signals,
        alert_notification=AlertNotification(emails=list(az.emails)) if az.emails else "azmonitoring")
    return MonitorSchedule(name=schedule_name(endpoint), trigger=CronTrigger(expression=cfg.monitor.schedule),
                           create_monitor=definition, display_name=f"mnistops monitor {endpoint} ({cfg.env.name})",
                           tags={T.ENV: cfg.env.name, "mnistops.not_on_azure": ",".join(NOT_ON_AZURE)})


def followed_deployment(existing) -> Optional[str]:
    """The deployment an existing schedule watches (azureml:<endpoint>:<deployment>, or an ARM id)."""
    target = str(existing.create_monitor.monitoring_target.endpoint_deployment_id or "")
    return re.split(r"[:/]", target.rstrip("/"))[-1] or None


def follow_deployment(existing, endpoint: str, deployment: str) -> None:
    """Point an existing schedule (its thresholds untouched) at `deployment`: the target and every
    signal's production data."""
    from azure.ai.ml import Input

    monitor = existing.create_monitor
    monitor.monitoring_target.endpoint_deployment_id = target_id(endpoint, deployment)
    for signal in (monitor.monitoring_signals or {}).values():
        production = getattr(signal, "production_data", None)
        for data in (production if isinstance(production, list) else [production]):
            if data is not None and data.data_context:
                data.input_data = Input(type="uri_folder",
                                        path=production_path(endpoint, deployment, str(data.data_context)))
