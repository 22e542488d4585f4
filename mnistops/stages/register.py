"""stage=register: export the evaluated model (ONNX + pyfunc wrapper, with the temperature and OOD
threshold fitted at training baked into the graph) as an MLflow model directory,
register it in the env's registry with an input example, output signature and lineage tags, and
point an alias (`register.alias`, default candidate) at it.

The model directory is written with `save_model` and handed to the flavour's registry, which stores
it with the train run and creates the version: MLflow 3's logged-models API (`log_model`) is not
served by every MLflow server (Azure ML's answers 404), the registry APIs used here are."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from mnistops import tags as T
from mnistops.errors import MnistopsError
from mnistops.stages import StageResult

INPUT_FORMS = "images (N,28,28) or rows (N,784); uint8 0-255 or float 0-1; numpy, lists or DataFrame"


def save_model(onnx_path, example, classes, into):
    """The MLflow pyfunc model directory: the ONNX graph behind models/pyfunc_model.py, with an input
    example and the output signature."""
    import importlib.util

    import mlflow
    from mlflow.models import ModelSignature, infer_signature

    from mnistops.models.export import PYFUNC_CODE
    from mnistops.serving import protocol

    # MLflow enforces tensor input schemas by exact dtype and shape, which would refuse the float
    # and 784-row forms this model accepts: so the signature declares the outputs, and the input
    # example plus metadata document the inputs.
    spec = importlib.util.spec_from_file_location("_mnistops_pyfunc", PYFUNC_CODE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    wrapper = module.MnistOnnxModel()
    wrapper.load_context(type("Ctx", (), {"artifacts": {"onnx": str(onnx_path)}})())
    outputs = infer_signature(example, wrapper.predict(None, example)).outputs
    mlflow.pyfunc.save_model(
        str(into), python_model=str(PYFUNC_CODE), artifacts={"onnx": str(onnx_path)},
        signature=ModelSignature(inputs=None, outputs=outputs), input_example=example,
        pip_requirements=["mlflow>=3.1", "onnxruntime>=1.18", "numpy", "pandas"],
        code_paths=[str(protocol.vendor(Path(into).parent / "code"))],  # the endpoint's decoder travels with it
        metadata={"input_forms": INPUT_FORMS, "classes": list(classes),
                  "calibration": wrapper.calibration.metadata()})  # as read back from the graph
    return into


def run(cfg: DictConfig) -> StageResult:
    import mlflow

    from mnistops import backends, tracking
    from mnistops.data import catalog
    from mnistops.models.checkpoint import load_network
    from mnistops.models.export import export_onnx, sha256_of
    from mnistops.stages.evaluate import calibration_of, find_train_run, ood_head_of

    train_run = find_train_run(cfg, cfg.register.run_id)
    run_id = train_run.info.run_id
    if "test/acc" not in train_run.data.metrics:
        raise MnistopsError(f"run {run_id} has not been evaluated: run stage=evaluate evaluate.run_id={run_id} first")
    out = tracking.output_dir(cfg, "register")
    # the temperature, OOD head and threshold fitted at training, baked into the graph (protocol.Calibration)
    calibration = calibration_of(train_run)
    onnx_path = export_onnx(load_network(train_run), out / "model.onnx", calibration.metadata(),
                            ood_head_of(train_run, calibration))
    example = catalog.load(cfg, "test").images[:3].copy()
    model_dir = save_model(onnx_path, example, cfg.data.classes, out / "model")

    name = cfg.env.model_name
    run_tags = train_run.data.tags
    lineage = {
        T.RUN_ID: run_id,
        T.DATASET_DIGEST: run_tags.get(T.DATASET_DIGEST, ""),
        T.GIT_COMMIT: run_tags.get(T.GIT_COMMIT, tracking.git_commit()),
        T.ENV: cfg.env.name,
        T.MODEL: run_tags.get(T.MODEL, ""),
        T.WEIGHTS_SHA256: sha256_of(onnx_path),
        T.TEST_ACC: f"{train_run.data.metrics['test/acc']:.6f}",
    }
    tracking.configure(cfg)
    config_yaml = mlflow.artifacts.load_text(f"runs:/{run_id}/config.yaml")
    registry = backends.get(cfg).registry()
    version = registry.register(
        name, model_dir, run_id=run_id, tags={**lineage, T.CONFIG: config_yaml[:4900]},
        description=(f"{lineage[T.MODEL]} from run {run_id}, test accuracy {lineage[T.TEST_ACC]}, "
                     f"dataset {lineage[T.DATASET_DIGEST]}"))
    registry.set_alias(name, cfg.register.alias, version.version)
    print(f"registered {version.uri} (alias @{cfg.register.alias}) from run {run_id}, "
          f"test accuracy {lineage[T.TEST_ACC]}, weights sha256 {lineage[T.WEIGHTS_SHA256][:12]}")
    print(f"  load it: mlflow.pyfunc.load_model('models:/{name}@{cfg.register.alias}') "
          f"with MLFLOW_TRACKING_URI={tracking.tracking_uri(cfg)}")
    return StageResult("register", run_id=run_id, model_uri=version.uri, artifacts={"onnx": str(onnx_path)})
