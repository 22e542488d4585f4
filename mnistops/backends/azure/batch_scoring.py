"""The azure flavour's batch scoring: a batch endpoint whose model deployment spreads mini-batches of
the input's files over the nodes of the compute cluster (batch_specs.py), invoked as a job that the
stage follows to its end; the job's appended CSV rows are then downloaded and written to
batch.output in its format, as the local flavour writes them.

    batch.input   a local folder (uploaded as uri_folder: its files are the mini-batches) or a
                  single .npz/.parquet file (uri_file: one mini-batch, one node), or an
                  azureml:// / https:// URI the workspace can read
    batch.output  a local .parquet | .csv | .jsonl path

With azure.dry_run=true nothing is read or sent: the environment, the endpoint and the deployment
are written as `az ml ... create -f` YAML, and the invoke command is printed.
"""

from __future__ import annotations

import csv
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from mnistops.backends.base import BatchOutcome, BatchScoring, ModelVersion
from mnistops.errors import MnistopsError

REMOTE = ("azureml:", "https://", "http://", "abfss://", "wasbs://")


class AzureBatchScoring(BatchScoring):
    remote = True

    def __init__(self, cfg: DictConfig, connection):
        self.cfg, self.connection = cfg, connection

    def _input(self):
        """(Input entity, digest, what): the input checked before anything is created or sent."""
        from azure.ai.ml import Input

        from mnistops.batch import inputs

        source = str(self.cfg.batch.input or "")
        if source.startswith(REMOTE):
            return Input(type="uri_folder" if source.endswith("/") else "uri_file", path=source), "", source
        path = Path(source).expanduser()
        if not source or not path.exists():
            raise MnistopsError(f"batch.input={source or '(not set)'}: no such file or folder (or give an "
                                "azureml:// URI the workspace can read)")
        if path.is_dir():
            return Input(type="uri_folder", path=str(path.resolve())), inputs.digest(str(path)), "uri_folder"
        if path.suffix.lower() not in inputs.ARRAYS:
            raise MnistopsError(f"batch.input={source}: {path.suffix or 'a file without suffix'} is not {inputs.FORMS}")
        print(f"  (one file is one mini-batch on one node: shard it into a folder of files to use "
              f"{self.cfg.batch.instance_count or self.cfg.compute.instance_count} nodes)")
        return Input(type="uri_file", path=str(path.resolve())), inputs.digest(str(path)), "uri_file"

    def score(self, version: ModelVersion) -> BatchOutcome:
        from mnistops.backends.azure import batch_specs, code_snapshot, compute, render
        from mnistops.batch import outputs
        from mnistops.serving.protocol import ProtocolError

        cfg = self.cfg
        try:
            out = outputs.check(cfg.batch.output, cfg.batch.input)
        except ProtocolError as err:
            raise MnistopsError(err.message) from None
        compute.require_cluster(cfg)
        job_input, digest, kind = self._input()
        name = batch_specs.endpoint_name(cfg)
        env = batch_specs.environment(cfg)
        from mnistops.backends.azure import environments

        if cfg.azure.dry_run:
            spec = batch_specs.deployment(cfg, name, version.name, version.version, environments.reference(env),
                                          str(code_snapshot.root()))
            paths = render.emit(cfg, [env, batch_specs.endpoint(cfg, name), spec])
            print(f"  then: az ml batch-endpoint invoke -n {name} -d {spec.name} --input {job_input.path} "
                  f"--input-type {job_input.type}")
            return BatchOutcome(output=str(out), input_digest=digest, where=f"batch endpoint {name} (dry run)",
                                previews=[str(p) for p in paths])
        ml = self.connection.ml
        compute.check(ml, cfg, int(cfg.batch.instance_count or cfg.compute.instance_count))
        ml.environments.create_or_update(env)
        spec = batch_specs.deployment(cfg, name, version.name, version.version, environments.reference(env),
                                      code_snapshot.ensure(ml, cfg))
        from azure.core.exceptions import ResourceNotFoundError

        try:
            endpoint = ml.batch_endpoints.get(name)
        except ResourceNotFoundError:
            print(f"creating batch endpoint {name} ({cfg.env.name})")
            endpoint = ml.batch_endpoints.begin_create_or_update(batch_specs.endpoint(cfg, name)).result()
        print(f"deploying {version.uri} as {spec.name} on batch endpoint {name}")
        ml.batch_deployments.begin_create_or_update(spec).result()
        if getattr(endpoint, "defaults", None) is not None:  # `az ml batch-endpoint invoke` without -d: this version
            endpoint.defaults.deployment_name = spec.name
            ml.batch_endpoints.begin_create_or_update(endpoint).result()
        job = ml.batch_endpoints.invoke(endpoint_name=name, deployment_name=spec.name, inputs={"input": job_input})
        print(f"batch job {job.name} on {cfg.compute.cluster} ({kind}): {job.studio_url}")
        self._follow(ml, job.name)
        with tempfile.TemporaryDirectory() as tmp:
            ml.jobs.download(name=job.name, download_path=tmp, output_name="score")
            found = sorted(Path(tmp).rglob(batch_specs.OUTPUT_FILE))
            if not found:
                raise MnistopsError(f"batch job {job.name} wrote no {batch_specs.OUTPUT_FILE}: {job.studio_url}")
            ids, scores = read_rows(found[0])
        outputs.write(out, ids, scores, {"mnistops.model": version.uri, "mnistops.input_digest": digest})
        digits = Counter(int(d) for d in scores.digits)
        return BatchOutcome(output=str(out), input_digest=digest, images=len(ids),
                            digits={str(d): digits.get(d, 0) for d in range(10)},
                            ood=int(scores.ood.sum()) if scores.ood is not None else None,
                            where=f"batch endpoint {name}, {spec.resources.instance_count} x {cfg.compute.cluster}")

    @staticmethod
    def _follow(ml, name: str) -> None:
        try:
            ml.jobs.stream(name)
        except Exception as err:  # noqa: BLE001 (the SDK raises a bare Exception when the job fails)
            raise MnistopsError(f"batch job {name} failed: {str(err).strip().splitlines()[0][:300]}") from None


def read_rows(path: Path):
    """predictions.csv (batch_specs.COLUMNS, no header) -> ids and Scores."""
    from mnistops.batch.scorer import Scores

    ids, probs, ood_score, ood = [], [], [], []
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if not row:
                continue
            ids.append(row[0])
            probs.append([float(v) for v in row[2:12]])
            ood_score.append(float(row[12]) if len(row) > 12 and row[12] else np.nan)
            ood.append(len(row) > 13 and row[13] == "true")
    has_ood = not np.isnan(ood_score).all() if ood_score else False
    return ids, Scores(np.asarray(probs, np.float32).reshape(-1, 10),
                       np.asarray(ood_score, np.float32) if has_ood else None,
                       np.asarray(ood, bool) if has_ood else None)
