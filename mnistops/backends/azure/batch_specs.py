"""The SDK entities of stage=batch on Azure ML: a batch endpoint (Entra ID auth, as every batch
endpoint) and one model batch deployment per registered version, on the compute cluster
`compute.cluster`: Azure splits the input folder into mini-batches of `batch.mini_batch_size` files
and hands them to `batch.max_concurrency_per_instance` processes on each of `batch.instance_count`
nodes, each running batch_score.py (the local batch scorer: the endpoint's decoding and predictor).
The rows come back appended to one CSV file (`output_action: append_row`), which the flavour
downloads and writes in batch.output's format.

The environment is the online one's pinned packages plus what reading pictures and parquet needs and
the runtime Azure's batch driver imports (azureml-core, azureml-dataset-runtime)."""

from __future__ import annotations

import re

from omegaconf import DictConfig, OmegaConf

from mnistops import tags as T

SCORING_SCRIPT = "mnistops/backends/azure/batch_score.py"  # relative to the source snapshot's root
OUTPUT_FILE = "predictions.csv"
COLUMNS = ["id", "digit", *[f"p{k}" for k in range(10)], "ood_score", "ood"]  # what each appended row holds
BATCH_PACKAGES = ["pillow", "pyarrow", "tqdm"]  # inputs.py reads pictures and parquet; scorer.py's bar
BATCH_RUNTIME = ["azureml-core", "azureml-dataset-runtime[fuse]"]  # Azure's batch driver, in a custom environment


def endpoint_name(cfg: DictConfig) -> str:
    """batch.endpoint_name, else <endpoint.name>-batch-<env> (3-32 characters, as online endpoint names)."""
    from mnistops.backends.azure.naming import ENDPOINT_NAME
    from mnistops.errors import MnistopsError

    name = cfg.batch.endpoint_name or f"{cfg.endpoint.name}-batch-{cfg.env.name}"
    if not ENDPOINT_NAME.match(name):
        raise MnistopsError(f"batch.endpoint_name: the Azure batch endpoint name {name!r} must be 3-32 letters, "
                            "digits or '-', start with a letter and not end with '-'")
    return name


def deployment_name(model_name: str, version: str) -> str:
    """One deployment per version (the endpoint's default moves to it): <model>-<version>, as Azure allows."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{model_name}-{version}".lower()).strip("-")[:32]


def environment(cfg: DictConfig):
    from mnistops.backends.azure import environments

    spec = OmegaConf.create({"name": f"{cfg.azure.inference_environment.name}-batch",
                             "image": cfg.azure.inference_environment.image})
    return environments.build(spec, environments.pinned(environments.INFERENCE + BATCH_PACKAGES) + BATCH_RUNTIME,
                              "mnistops batch scoring (mnistops/backends/azure/batch_score.py), pinned")


def endpoint(cfg: DictConfig, name: str):
    from azure.ai.ml.entities import BatchEndpoint

    return BatchEndpoint(name=name, description=f"mnistops batch scoring ({cfg.env.name})",
                         tags={T.ENV: cfg.env.name, T.ENDPOINT: cfg.endpoint.name})


def deployment(cfg: DictConfig, endpoint_name: str, model_name: str, version: str, env_ref: str, code: str):
    """A model batch deployment (`type: model`) in the shape `az ml batch-deployment create -f` and the
    SDK's load_batch_deployment take (the flat BatchDeployment fields)."""
    import warnings

    b = cfg.batch
    nodes = int(b.instance_count or cfg.compute.instance_count)
    with warnings.catch_warnings():  # the SDK steers to ModelBatchDeployment, whose `settings:` YAML its own
        warnings.simplefilter("ignore", UserWarning)  # public load_batch_deployment refuses ("Unknown field")
        return _deployment(cfg, endpoint_name, model_name, version, env_ref, code, nodes)


def _deployment(cfg, endpoint_name, model_name, version, env_ref, code, nodes):
    from azure.ai.ml.entities import BatchDeployment, BatchRetrySettings, CodeConfiguration, ResourceConfiguration

    b = cfg.batch
    return BatchDeployment(
        name=deployment_name(model_name, version), endpoint_name=endpoint_name,
        model=f"azureml:{model_name}:{version}", environment=env_ref, compute=cfg.compute.cluster,
        code_configuration=CodeConfiguration(code=code, scoring_script=SCORING_SCRIPT),
        resources=ResourceConfiguration(instance_count=nodes), mini_batch_size=int(b.mini_batch_size),
        max_concurrency_per_instance=int(b.max_concurrency_per_instance),
        output_action="append_row", output_file_name=OUTPUT_FILE, error_threshold=int(b.error_threshold),
        retry_settings=BatchRetrySettings(max_retries=3, timeout=int(b.timeout_s)), logging_level="info",
        environment_variables={"MNISTOPS_MODEL_NAME": model_name, "MNISTOPS_MODEL_VERSION": str(version),
                               "MNISTOPS_BATCH_SIZE": str(b.batch_size)},
        description=f"models:/{model_name}/{version} scoring mini-batches of files with batch_score.py",
        tags={T.MODEL_URI: f"models:/{model_name}/{version}", T.ENV: cfg.env.name})
