"""The model's own view of an image: class probabilities plus the penultimate-layer activation.

Embedding drift watches what the model *sees*, which pixel statistics can miss (a rotated 7 has the
ink, size and centroid of a 7). The activation is read from the registered ONNX graph itself: the
input of the Gemm/MatMul that feeds the logits (the classifier layer) is exposed as an extra graph output, so one
ONNX Runtime pass gives both the answer and the embedding, for any architecture the exporter
wrote. For the logistic regression that input is the (normalised) flattened image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from mnistops.errors import MnistopsError
from mnistops.serving.protocol import softmax

LINEAR_OPS = ("Gemm", "MatMul")
CHUNK = 2048
"""Images per inference call: bounds activation memory (a 10,000-image window in 5 calls)."""


def _read_meta(model_dir: Path) -> Tuple[Optional[str], Optional[str]]:
    """(model name, version) from the registry's ``registered_model_meta`` file, if downloaded."""
    meta = model_dir / "registered_model_meta"
    name = version = None
    if meta.is_file():
        for line in meta.read_text(encoding="utf-8").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model_name":
                name = value.strip()
            elif key.strip() == "model_version":
                version = value.strip()
    return name, version


def _classifier_node(graph):
    """The Gemm/MatMul nearest to the logits output (graph output 0), walking back through its
    producers (the temperature's Div, a bias Add); the last such node in the node list for graphs
    where the walk finds none. A calibrated graph computes its ood_score with MatMuls of its own,
    which may come later in the node list: the walk does not reach them."""
    producer = {out: node for node in graph.node for out in node.output}
    todo, seen = [graph.output[0].name], set()
    while todo:
        node = producer.get(todo.pop(0))
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if node.op_type in LINEAR_OPS:
            return node
        todo.extend(node.input)
    linear = [n for n in graph.node if n.op_type in LINEAR_OPS]
    return linear[-1] if linear else None


def embedding_graph(onnx_path: Path):
    """The model with the input of its last Gemm/MatMul added as a graph output.

    Returns (model proto, logits output name, embedding output name); the classifier layer is
    the Gemm/MatMul that feeds the logits (``_classifier_node``).
    """
    import onnx

    try:
        model = onnx.load(str(onnx_path))
    except Exception as exc:  # protobuf decode errors have no common type
        raise MnistopsError(f"cannot read ONNX graph {onnx_path}: {str(exc).splitlines()[0][:200]}") from None
    graph = model.graph
    if not graph.output:
        raise MnistopsError(f"{onnx_path}: the graph has no outputs")
    classifier = _classifier_node(graph)
    if classifier is None:
        raise MnistopsError(f"{onnx_path}: no Gemm/MatMul layer to take an embedding from")
    emb = classifier.input[0]
    if emb not in {o.name for o in graph.output}:
        graph.output.append(onnx.helper.make_tensor_value_info(emb, onnx.TensorProto.FLOAT, None))
    return model, graph.output[0].name, emb


class Embedder:
    """``Embedder(model_dir)(images_uint8) -> (probabilities (N,10) float32, embedding (N,D) float32)``.

    ``model_dir`` is a registered model as downloaded (``artifacts/model.onnx`` + ``MLmodel``);
    images are fed as the endpoint feeds them: uint8 / 255 as float32 (N, 1, 28, 28), or (N, 784)
    for a flat-input graph. ``threads`` 0 lets ONNX Runtime use every core (a batch job, not serving).
    """

    def __init__(self, model_dir, threads: int = 0):
        import onnxruntime as ort

        self.path = Path(model_dir)
        onnx_path = self.path / "artifacts" / "model.onnx"
        if not onnx_path.is_file():
            raise MnistopsError(f"no ONNX graph at {onnx_path}: not a registered mnistops model dir")
        model, self.logits_name, self.embedding_name = embedding_graph(onnx_path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads)
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        (inp,) = self.session.get_inputs()
        self.input_name = inp.name
        self.flat = list(inp.shape[1:]) == [784]
        self.model_name, self.version = _read_meta(self.path)

    def __call__(self, images: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        images = np.asarray(images)
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise MnistopsError(f"Embedder takes uint8 images (N, 28, 28), got {images.dtype} {images.shape}")
        probs, embs = [], []
        for start in range(0, len(images), CHUNK):
            x = images[start:start + CHUNK].astype(np.float32) / np.float32(255.0)
            x = x.reshape(len(x), 784) if self.flat else x[:, None]
            logits, emb = self.session.run([self.logits_name, self.embedding_name], {self.input_name: x})
            probs.append(softmax(logits.astype(np.float32, copy=False)))
            embs.append(emb.reshape(len(emb), -1).astype(np.float32, copy=False))
        if not probs:
            dim = self.dimension
            return np.zeros((0, 10), np.float32), np.zeros((0, dim), np.float32)
        return np.concatenate(probs), np.concatenate(embs)

    @property
    def dimension(self) -> int:
        """Width of the embedding (one inference on a blank image)."""
        x = np.zeros((1, 784) if self.flat else (1, 1, 28, 28), np.float32)
        return int(np.prod(self.session.run([self.embedding_name], {self.input_name: x})[0].shape[1:]))
