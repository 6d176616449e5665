"""The passes with fixed weights run by ONNX Runtime where it gives PyTorch's numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models import mobilenet_v2

from flowerpipe.config import ExportConfig
from flowerpipe.model.engine import FixedWeights, fixed_weights_engine
from flowerpipe.model.inference import folded_where_fixed, for_inference, predict_logits
from flowerpipe.model.transforms import center_crop_batch, normalize, to_nchw


def _small_mobilenet() -> nn.Module:
    torch.manual_seed(0)
    model = mobilenet_v2(num_classes=5, width_mult=0.25)
    model.train()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        model(torch.randn(8, 3, 48, 48) * 2 + 0.5)
    return model.eval()


def test_fixed_weights_run_on_onnx_runtime_with_the_logits_of_pytorch_within_the_export_gate() -> None:
    model, gate = _small_mobilenet(), ExportConfig()
    images = np.random.default_rng(0).integers(0, 256, (10, 48, 48, 3), dtype=np.uint8)
    logits = predict_logits(model, images, 40, 4, torch.device("cpu"))  # batches of 4, 4, 2
    with torch.inference_mode():
        eager = model(normalize(center_crop_batch(to_nchw(images), 40)))  # unfolded, as trained
    np.testing.assert_allclose(logits, eager.numpy(), rtol=gate.rtol, atol=gate.atol)
    engine = for_inference(model)
    assert isinstance(engine, FixedWeights)
    with torch.inference_mode():
        x = torch.randn(3, 3, 40, 40)
        got, want = engine(x), model(x)
    assert engine.sessions[(3, 3, 40, 40)] is not None  # ONNX Runtime gave these logits
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=gate.rtol, atol=gate.atol)


def test_a_frozen_block_hands_channels_last_on_as_the_folded_copy_does() -> None:
    block = _small_mobilenet().features[:3]
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        out = for_inference(block)(x)
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_a_gradient_through_a_fixed_module_or_autocast_runs_the_folded_copy() -> None:
    model = _small_mobilenet()
    engine = for_inference(model.features[:2])
    x = torch.randn(2, 3, 32, 32, requires_grad=True)  # a layer before it learns
    engine(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0 and engine.sessions == {}
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
        out = engine(torch.randn(2, 3, 32, 32))
    assert out.dtype == torch.bfloat16 and engine.sessions == {}


class _ValueBranch(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -x if x.mean() > 0 else x  # a value read in Python: a trace keeps one branch


def test_a_module_whose_trace_would_keep_one_branch_runs_in_pytorch() -> None:
    engine = FixedWeights(_ValueBranch())
    with torch.inference_mode():
        up, down = torch.ones(1, 3, 4, 4), -torch.ones(1, 3, 4, 4)
        # the first batch takes the branch the trace would keep, so the check alone would pass it
        assert torch.equal(engine(down), down) and torch.equal(engine(up), -up)
    assert engine.sessions == {(1, 3, 4, 4): None}


def test_consecutive_frozen_blocks_run_as_one_pass_with_the_model_s_outputs() -> None:
    model, gate = _small_mobilenet(), ExportConfig()
    view = folded_where_fixed(model, ["features.2", "features.0", "features.1", "classifier.1"])
    assert isinstance(view.features[0], FixedWeights)  # blocks 0-2, one copy
    assert isinstance(view.features[1], nn.Identity) and isinstance(view.features[2], nn.Identity)
    assert isinstance(view.classifier[1], FixedWeights) and view.features[3] is model.features[3]
    apart = folded_where_fixed(model, ["features.0", "features.2"])  # not consecutive: two copies
    assert isinstance(apart.features[2], FixedWeights) and apart.features[1] is model.features[1]
    x = torch.randn(4, 3, 32, 32)
    with torch.inference_mode():
        want = model(x)
        for net in (view, apart):
            np.testing.assert_allclose(net(x).numpy(), want.numpy(), rtol=gate.rtol, atol=gate.atol)


def test_the_frozen_blocks_of_a_training_step_run_on_onnx_runtime_and_the_rest_learns() -> None:
    model = _small_mobilenet()
    model.features[:3].requires_grad_(False)
    view = folded_where_fixed(model, ["features.0", "features.1", "features.2"])
    view.features[3:].train()
    out = view(torch.randn(4, 3, 32, 32))
    out.sum().backward()
    assert view.features[0].sessions[(4, 3, 32, 32)] is not None
    assert model.features[3].conv[0][0].weight.grad is not None
    assert all(p.grad is None for p in model.features[:3].parameters())


@pytest.mark.parametrize(
    ("device", "dtype", "engine"),
    [("cpu", None, "onnxruntime"), ("cpu", torch.bfloat16, "pytorch"), ("cuda", None, "pytorch")],
)
def test_the_run_record_names_what_runs_the_fixed_weights(
    device: str, dtype: torch.dtype | None, engine: str
) -> None:
    assert fixed_weights_engine(torch.device(device), dtype) == engine
