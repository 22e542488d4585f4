"""The networks' shapes, their channels_last path and their ONNX export (unit: nothing trains)."""

from __future__ import annotations

import numpy as np
import pytest


def test_strided_convnet_shrinks_28px_to_one_pixel_of_hidden_channels():
    import torch

    from mnistops.models.nets import StridedConvNet

    net = StridedConvNet().eval()
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        features = net.features(x)
        logits = net(x)
    assert features.shape == (5, 128, 1, 1) and logits.shape == (5, 10)
    convs = [m for m in net.features.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.kernel_size[0], c.stride[0]) for c in convs] == [(3, 1), (3, 1), (5, 2), (3, 1), (3, 1), (5, 2), (4, 1)]


def test_strided_convnet_channels_last_computes_the_same_logits():
    import torch

    from mnistops.models.nets import StridedConvNet

    torch.manual_seed(0)
    plain = StridedConvNet(stages=[[8, 8], [16, 16]], hidden=32).eval()
    nhwc = StridedConvNet(stages=[[8, 8], [16, 16]], hidden=32, channels_last=True).eval()
    nhwc.load_state_dict(plain.state_dict())
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(plain(x), nhwc(x), atol=1e-5)


def test_strided_convnet_that_shrinks_the_image_to_nothing_is_refused():
    from mnistops.models.nets import StridedConvNet

    with pytest.raises(ValueError, match="StridedConvNet"):
        StridedConvNet(stages=[[8, 8], [8, 8], [8, 8], [8, 8]])


def test_strided_convnet_exports_to_onnx_with_its_embedding_before_the_classifier(tmp_path):
    import onnxruntime as ort
    import torch

    from mnistops.models.export import export_onnx
    from mnistops.models.nets import StridedConvNet

    torch.manual_seed(0)
    net = StridedConvNet(stages=[[8, 8], [16, 16]], hidden=32, channels_last=True).eval()
    path = export_onnx(net, tmp_path / "model.onnx")
    x = np.random.default_rng(0).random((6, 1, 28, 28), dtype=np.float32)
    onnx_logits = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    with torch.no_grad():
        assert np.allclose(onnx_logits, net(torch.from_numpy(x)).numpy(), atol=1e-4)
        seen = {}
        hook = net.classifier[-1].register_forward_pre_hook(lambda _, inputs: seen.update(e=inputs[0]))
        net(torch.from_numpy(x))
        hook.remove()
    assert seen["e"].shape == (6, 32) and bool((seen["e"] >= 0).all())  # the ReLU of the full-map conv
