"""`stage=monitor` with env.backend=azure: an Azure ML model-monitoring schedule with the local
monitor's signals and thresholds (cfg.monitor.*), on cfg.monitor.schedule (cron), alerting by email.

Signal mapping (local -> Azure):
  data_drift        -> data_drift, normalized_wasserstein_distance on the image features that
                       score.py collects as model_inputs, against the training features asset
  prediction_drift  -> prediction_drift, jensen_shannon_distance on the predicted `digit`
  out_of_bounds_rate, malformed_rate -> data_quality: out_of_bounds_rate; data_type_error_rate and
                       null_value_rate (what Azure can see of malformed inputs)
  min_accuracy, min_class_recall -> model_performance: accuracy; recall (Azure's is macro, not per class)
embedding_drift, max_p99_ms and max_error_rate have no Azure ML monitoring signal: latency and
errors are Azure Monitor metrics of the endpoint (alert rules), the embedding stays local."""

from __future__ import annotations

import re
from typing import Optional

from omegaconf import DictConfig

from mnistops.errors import MnistopsError
from mnistops.stages import StageResult

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


def schedule(cfg: DictConfig, deployment: str):
    from azure.ai.ml import Input
    from azure.ai.ml.entities import (AlertNotification, CategoricalDriftMetrics, CronTrigger, DataDriftMetricThreshold,
                                      DataDriftSignal, DataQualityMetricsNumerical, DataQualityMetricThreshold,
                                      DataQualitySignal, ModelPerformanceClassificationThresholds,
                                      ModelPerformanceMetricThreshold, ModelPerformanceSignal, MonitorDefinition,
                                      MonitoringTarget, MonitorSchedule, NumericalDriftMetrics,
                                      PredictionDriftMetricThreshold, PredictionDriftSignal, ServerlessSparkCompute)
    from azure.ai.ml.entities._monitoring.signals import BaselineDataRange, ProductionData, ReferenceData

    from mnistops.data import mirrors

    t, az, endpoint = cfg.monitor.thresholds, cfg.azure.monitoring, cfg.azure.endpoint_name
    lookback = iso_window(cfg.monitor.window)
    window = BaselineDataRange(lookback_window_size=lookback, lookback_window_offset="P0D") if lookback else None

    def production(context: str, columns=None):
        return ProductionData(input_data=Input(type="uri_folder", path=f"azureml:{endpoint}-{deployment}-{context}:1"),
                              data_context=context, data_window=window, data_column_names=columns)

    reference = ReferenceData(input_data=Input(type="mltable", path=f"azureml:{cfg.azure.reference_asset}:"
                                                                     f"{mirrors.digest(cfg)}"), data_context="training")
    signals = {
        "data_drift": DataDriftSignal(
            production_data=production("model_inputs"), reference_data=reference, features="all_features",
            metric_thresholds=DataDriftMetricThreshold(numerical=NumericalDriftMetrics(
                normalized_wasserstein_distance=t.data_drift)), alert_enabled=True),
        "prediction_drift": PredictionDriftSignal(
            production_data=production("model_outputs"), reference_data=reference,
            metric_thresholds=PredictionDriftMetricThreshold(categorical=CategoricalDriftMetrics(
                jensen_shannon_distance=t.prediction_drift)), alert_enabled=True),
        "data_quality": DataQualitySignal(
            production_data=production("model_inputs"), reference_data=reference, features="all_features",
            metric_thresholds=DataQualityMetricThreshold(numerical=DataQualityMetricsNumerical(
                out_of_bounds_rate=t.out_of_bounds_rate, data_type_error_rate=t.malformed_rate,
                null_value_rate=t.malformed_rate)), alert_enabled=True),
        "model_performance": ModelPerformanceSignal(
            production_data=production("model_outputs", {"prediction": "digit", "correlation_id": "correlation_id"}),
            reference_data=ReferenceData(input_data=Input(type="mltable", path=f"azureml:{az.ground_truth}@latest"),
                                         data_context="ground_truth",
                                         data_column_names={"actual": "label", "correlation_id": "correlation_id"}),
            metric_thresholds=ModelPerformanceMetricThreshold(classification=ModelPerformanceClassificationThresholds(
                accuracy=t.min_accuracy, recall=t.min_class_recall)), alert_enabled=True),
    }
    definition = MonitorDefinition(
        compute=ServerlessSparkCompute(instance_type=az.instance_type, runtime_version=az.runtime_version),
        monitoring_target=MonitoringTarget(ml_task="classification", endpoint_deployment_id=f"azureml:{endpoint}:{deployment}"),
        monitoring_signals=signals,
        alert_notification=AlertNotification(emails=list(az.emails)) if az.emails else "azmonitoring")
    return MonitorSchedule(name=f"{endpoint}-monitor", trigger=CronTrigger(expression=cfg.monitor.schedule),
                           create_monitor=definition, display_name=f"mnistops monitor {endpoint} ({cfg.env.name})",
                           tags={"mnistops.env": cfg.env.name, "mnistops.not_on_azure": ",".join(NOT_ON_AZURE)})


def monitor_schedule(cfg: DictConfig) -> StageResult:
    """Create or update the schedule (or, with azure.dry_run=true, write its YAML)."""
    from mnistops.backends.azure import backend, render

    if cfg.azure.dry_run:
        deployment = backend.live_deployment(cfg, None)
        (path,) = render.emit(cfg, [schedule(cfg, deployment)])
        return StageResult("monitor", artifacts={"schedule": str(path)})
    ml = backend.connect(cfg)
    deployment = backend.live_deployment(cfg, ml)
    created = ml.schedules.begin_create_or_update(schedule(cfg, deployment)).result()
    print(f"monitoring schedule {created.name} on {cfg.azure.endpoint_name}:{deployment} ({cfg.monitor.schedule}): "
          f"data_drift, prediction_drift, data_quality, model_performance; not on Azure: {', '.join(NOT_ON_AZURE)}")
    return StageResult("monitor", artifacts={"schedule": created.name})
