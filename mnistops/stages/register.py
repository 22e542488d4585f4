"""stage=register: export the evaluated model (ONNX + pyfunc wrapper), register it in the env's
MLflow registry with an input example, output signature and lineage tags, and set an alias."""

from __future__ import annotations

from omegaconf import DictConfig

from mnistops.errors import MnistopsError
from mnistops.stages import StageResult

INPUT_FORMS = "images (N,28,28) or rows (N,784); uint8 0-255 or float 0-1; numpy, lists or DataFrame"


def run(cfg: DictConfig) -> StageResult:
    import mlflow
    from mlflow.models import ModelSignature, infer_signature
    from mlflow.tracking import MlflowClient

    from mnistops import tracking
    from mnistops.data import mirrors
    from mnistops.data.idx import read_idx
    from mnistops.models.checkpoint import load_network
    from mnistops.models.export import PYFUNC_CODE, export_onnx, sha256_of
    from mnistops.serving import protocol
    from mnistops.stages.evaluate import find_train_run

    train_run = find_train_run(cfg, cfg.register.run_id)
    run_id = train_run.info.run_id
    if "test/acc" not in train_run.data.metrics:
        raise MnistopsError(f"run {run_id} has not been evaluated: run stage=evaluate evaluate.run_id={run_id} first")
    out = tracking.output_dir(cfg, "register")
    onnx_path = export_onnx(load_network(train_run), out / "model.onnx")
    weights_digest = sha256_of(onnx_path)
    example = read_idx(mirrors.fetch(cfg)["test_images"])[:3]

    # MLflow enforces tensor input schemas by exact dtype and shape, which would refuse the float
    # and 784-row forms this model accepts: so the signature declares the outputs, and the logged
    # input example plus metadata document the inputs.
    import importlib.util

    spec = importlib.util.spec_from_file_location("_mnistops_pyfunc", PYFUNC_CODE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    wrapper = module.MnistOnnxModel()
    wrapper.load_context(type("Ctx", (), {"artifacts": {"onnx": str(onnx_path)}})())
    outputs = infer_signature(example, wrapper.predict(None, example)).outputs
    name = cfg.env.model_name
    lineage = {
        "mnistops.run_id": run_id,
        "mnistops.dataset_digest": train_run.data.tags.get("mnistops.dataset_digest", ""),
        "mnistops.git_commit": train_run.data.tags.get("mnistops.git_commit", tracking.git_commit()),
        "mnistops.env": cfg.env.name,
        "mnistops.model": train_run.data.tags.get("mnistops.model", ""),
        "mnistops.weights_sha256": weights_digest,
        "mnistops.test_acc": f"{train_run.data.metrics['test/acc']:.6f}",
    }
    tracking.configure(cfg)
    nested = mlflow.active_run() is not None
    with mlflow.start_run(run_id=run_id, nested=nested):
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(PYFUNC_CODE), artifacts={"onnx": str(onnx_path)},
            signature=ModelSignature(inputs=None, outputs=outputs), input_example=example,
            registered_model_name=name, await_registration_for=60,
            pip_requirements=["mlflow>=3.1", "onnxruntime>=1.18", "numpy", "pandas"],
            code_paths=[str(protocol.vendor(out / "code"))],  # the endpoint's decoder travels with the model
            metadata={"input_forms": INPUT_FORMS, "classes": list(cfg.data.classes)},
        )
    client = MlflowClient()
    version = str(info.registered_model_version)
    config_yaml = mlflow.artifacts.load_text(f"runs:/{run_id}/config.yaml")
    for key, value in {**lineage, "mnistops.config": config_yaml[:4900]}.items():
        client.set_model_version_tag(name, version, key, value)
    client.update_model_version(name, version, description=(
        f"{lineage['mnistops.model']} from run {run_id}, test accuracy {lineage['mnistops.test_acc']}, "
        f"dataset {lineage['mnistops.dataset_digest']}"))
    client.set_registered_model_alias(name, cfg.register.alias, version)
    uri = f"models:/{name}/{version}"
    print(f"registered {uri} (alias @{cfg.register.alias}) from run {run_id}, "
          f"test accuracy {lineage['mnistops.test_acc']}, weights sha256 {weights_digest[:12]}")
    print(f"  load it: mlflow.pyfunc.load_model('models:/{name}@{cfg.register.alias}') "
          f"with MLFLOW_TRACKING_URI={tracking.tracking_uri(cfg)}")
    return StageResult("register", run_id=run_id, model_uri=uri, artifacts={"onnx": str(onnx_path)})
