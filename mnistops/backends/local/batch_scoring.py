"""The local flavour's batch scoring: the input read and scored on this machine's cores
(mnistops/batch), with the version fetched from the env's registry as the endpoint fetches it."""

from __future__ import annotations

from collections import Counter

from omegaconf import DictConfig

from mnistops.backends.base import BatchOutcome, BatchScoring, ModelRegistry, ModelVersion
from mnistops.errors import MnistopsError


class ScoreHere(BatchScoring):
    remote = False

    def __init__(self, cfg: DictConfig, registry: ModelRegistry):
        self.cfg, self.registry = cfg, registry

    def score(self, version: ModelVersion) -> BatchOutcome:
        from mnistops import layout
        from mnistops.batch import inputs, outputs
        from mnistops.batch.scorer import BatchScorer
        from mnistops.serving.protocol import ProtocolError

        b = self.cfg.batch
        threads = int(b.threads or 0)
        try:
            path = outputs.check(b.output, b.input)
            source = inputs.read(b.input, threads)  # the whole input, before the model or any output
            model_dir = self.registry.download(version, layout.models_cache(self.cfg))
            scorer = BatchScorer(model_dir, threads, b.batch_size)
            print(f"scoring {len(source)} images ({source.kind} {b.input}) with {version.uri} on "
                  f"{scorer.threads} threads")
            scores = scorer.score(source.images, progress=bool(b.progress))
            outputs.write(path, source.ids, scores, {"mnistops.model": version.uri,
                                                     "mnistops.input_digest": source.digest})
        except ProtocolError as err:  # bad input, or a version the predictor cannot load
            raise MnistopsError(err.message) from None
        digits = Counter(int(d) for d in scores.digits)
        return BatchOutcome(output=str(path), input_digest=source.digest, images=len(scores),
                            seconds=scores.seconds, digits={str(d): digits.get(d, 0) for d in range(10)},
                            ood=int(scores.ood.sum()) if scores.ood is not None else None,
                            where=f"this machine, {scorer.threads} ONNX Runtime threads")
