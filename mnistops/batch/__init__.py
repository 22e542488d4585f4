"""Batch scoring: many images through one registered version on this machine's cores, answered as
the online endpoint answers them (the same decoding, the same ONNX predictor, the same answer rules).

    inputs.py   a folder of pictures, an .npz or a .parquet file -> ids + images (+ the input's digest)
    scorer.py   the version's ONNX graph on every core, in chunks, with a progress bar
    outputs.py  one row per image -> .parquet | .csv | .jsonl, written atomically

stage=batch (mnistops/stages/batch.py) drives these through the flavour's batch-scoring capability
(backends/base.py: BatchScoring): the local flavour runs them here; Azure's batch deployment runs
them on each node of its cluster (backends/azure/batch_score.py).
"""
