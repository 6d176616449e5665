"""Every family of torchvision classifiers through the real code paths at a small input, and the
rules that refuse a model up front (flowerpipe.model.architectures).
benchmarks/accuracy/matrix.py runs all 80."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.models as tvm
from helpers.families import FAMILIES
from helpers.recipes import PLAIN_TRAIN

from flowerpipe.config import Config, config_from_dict
from flowerpipe.core.errors import ConfigError
from flowerpipe.export.onnx import check_parity, export_onnx, onnx_metadata
from flowerpipe.model.architectures import BF16_SIDES, MIN_SIDES, input_side, parameters
from flowerpipe.model.build import build_model, freeze, head_name
from flowerpipe.model.checks import check_trainable
from flowerpipe.training.loop import fit

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]  # every family

CPU = torch.device("cpu")
CLASSES = ["a", "b", "c"]
FALLBACK = "the head is not the model's last step"


def trainable(raw: dict) -> Config:
    """params as the train stage reads them: read, then checked where torch is."""
    return check_trainable(config_from_dict(raw))


def photos(side: int, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 NHWC squares a few pixels larger than `side` (as prepare caches them) and labels."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, side + 4, side + 4, 3), dtype=np.uint8), np.arange(count) % 3


@pytest.mark.parametrize(("arch", "side"), FAMILIES)
def test_family_trains_freezes_and_exports(
    arch: str, side: int, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Validation accepts it; one augmented training step moves every layer; with a frozen backbone
    and no augmentation only the head learns (on features computed once, or through the whole
    model where the head is not the last step); the ONNX file matches PyTorch."""
    caplog.set_level(logging.INFO, logger="flowerpipe")
    params = {"data": {"image_size": side}, "model": {"arch": arch, "weights": None}}
    cfg = trainable({**params, "train": PLAIN_TRAIN})  # every layer learns in the one step
    one_step = replace(cfg.train, epochs=1, batch_size=8, precision="fp32")  # RegNet diverges on 4
    images, labels = photos(side, 12)
    train, val = np.arange(8), np.arange(8, 12)

    model = build_model(arch, None, len(CLASSES))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    split = {"images": images, "labels": labels, "train_idx": train, "val_idx": val}
    model.load_state_dict(
        fit(model, one_step, **split, image_size=side, device=CPU).best_state
    )  # as train does
    head = f"{head_name(model)}."
    moved = {k.partition(".")[0] for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert moved == {name.partition(".")[0] for name, _ in model.named_parameters()}

    frozen = build_model(arch, None, len(CLASSES), seed=1)
    freeze(frozen, "backbone")  # as fit does: only the head's parameters learn
    assert all(name.startswith(head) for name, p in frozen.named_parameters() if p.requires_grad)
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    fit(frozen, replace(one_step, freeze="backbone", augment=[]), **split, image_size=side, device=CPU)
    changed = {k for k, v in frozen.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith(head) for k in changed)
    assert (FALLBACK in caplog.text) == arch.startswith("squeezenet")

    onnx = tmp_path / "model.onnx"
    export_onnx(model, onnx, side, onnx_metadata(CLASSES, arch, side, side + 4))
    parity = check_parity(model, onnx, images, side, cfg.export)
    assert parity["within_tolerance"] and parity["images"] == len(images)


# the smallest model of each family that needs more than 16 px, and the one-side models
SIDE_CASES = [
    min((a for a in tvm.list_models(module=tvm) if a.startswith(prefix)), key=parameters)
    for prefix in MIN_SIDES
    if prefix not in BF16_SIDES
] + ["vit_b_32", "maxvit_t"]


@pytest.mark.parametrize("arch", SIDE_CASES)
def test_the_side_rule_is_exact(arch: str) -> None:
    """The model runs at the side the rule gives and fails one pixel below it (or, where it takes
    one side only, at others), where validation refuses it."""
    side, fixed = input_side(arch, None)
    model = tvm.get_model(arch).eval()
    wrong = [side // 2, side + 32] if fixed else [side - 1]
    with torch.inference_mode():
        assert model(torch.zeros(1, 3, side, side)).shape == (1, 1000)
        for size in wrong:
            with pytest.raises((RuntimeError, AssertionError)):  # a layer's shape check, or ViT's own
                model(torch.zeros(1, 3, size, size))
            with pytest.raises(ConfigError, match=f"model.arch: {arch} (needs|takes only)"):
                params = {"data": {"image_size": size}, "model": {"arch": arch, "weights": None}}
                trainable({**params, "train": PLAIN_TRAIN})  # training crops of that size too


def refusal(arch: str, size: int = 224, scale: float = 1.0, weights: str | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        params = {"data": {"image_size": size}, "train": {**PLAIN_TRAIN, "image_scale": scale}}
        trainable({**params, "model": {"arch": arch, "weights": weights}})
    (line,) = str(caught.value).splitlines()
    return line


def test_a_fixed_side_model_names_the_side_it_needs() -> None:
    assert refusal("vit_b_16", 128) == (
        "params.yaml: model.arch: vit_b_16 takes only 224 px inputs: it needs data.image_size 224 "
        "(got 128 px, training crops 128 px)"
    )
    assert refusal("maxvit_t", 256, weights="DEFAULT").endswith(
        "maxvit_t takes only 224 px inputs: it needs data.image_size 224 (got 256 px, training crops 256 px)"
    )
    # weights trained at another side set it
    assert refusal("vit_b_16", weights="IMAGENET1K_SWAG_E2E_V1").endswith(
        "takes only 384 px inputs: it needs data.image_size 384 (got 224 px, training crops 224 px)"
    )
    trainable(
        {
            "data": {"image_size": 384},
            "model": {"arch": "vit_b_16", "weights": "IMAGENET1K_SWAG_E2E_V1"},
            "train": PLAIN_TRAIN,
        }
    )


def test_a_fixed_side_model_names_every_key_to_change() -> None:
    """params.yaml's own sides (256 px, training crops 7/8 of it) need both keys changed: one line says so."""
    assert refusal("vit_b_32", 256, scale=0.875).endswith(
        "vit_b_32 takes only 224 px inputs: it needs data.image_size 224 and train.image_scale 1 "
        "(got 256 px, training crops 224 px)"
    )
    assert refusal("vit_b_32", 224, scale=0.5).endswith(
        "it needs train.image_scale 1 (got 224 px, training crops 112 px)"
    )


def test_a_model_with_a_smallest_side_names_it() -> None:
    assert (
        refusal("inception_v3", 64)
        == "params.yaml: model.arch: inception_v3 needs data.image_size >= 75 (got 64)"
    )
    assert refusal("inception_v3", 96, scale=0.5) == (
        "params.yaml: model.arch: inception_v3 needs training crops >= 75 px "
        "(data.image_size x train.image_scale gives 48)"
    )
    trainable({"data": {"image_size": 75}, "model": {"arch": "inception_v3"}, "train": PLAIN_TRAIN})


def test_regnet_keeps_its_last_strided_grouped_convolution_off_a_one_pixel_map() -> None:
    """Where PyTorch's bf16 CPU backward gives NaN gradients in some runs (see BF16_SIDES)."""
    assert refusal("regnet_x_400mf", 16).endswith("regnet_x_400mf needs data.image_size >= 17 (got 16)")
    model, seen = tvm.regnet_x_400mf().eval(), []
    conv = model.trunk_output.block4[0].f.b[0]
    assert conv.stride == (2, 2) and conv.groups > 1
    conv.register_forward_hook(lambda _m, args, _out: seen.append(tuple(args[0].shape[2:])))
    with torch.inference_mode():
        for side in (16, 17):
            model(torch.zeros(1, 3, side, side))
    assert seen == [(1, 1), (2, 2)]


@pytest.mark.parametrize("arch", ["vit_h_14", "regnet_y_128gf"])
def test_a_model_past_the_single_file_onnx_limit_is_refused(arch: str) -> None:
    """Its float32 weights alone pass protobuf's 2 GiB: whatever the input side, no run starts."""
    line = refusal(arch, 518)
    assert line.startswith(f"params.yaml: model.arch: {arch} has 6")
    assert "past the 2 GiB limit of one ONNX file" in line and "choose a model under 536 M parameters" in line


def test_every_other_model_is_accepted_at_its_smallest_side() -> None:
    refused = []
    for arch in tvm.list_models(module=tvm):
        side, _ = input_side(arch, None)
        try:
            params = {"data": {"image_size": side}, "model": {"arch": arch, "weights": None}}
            trainable({**params, "train": PLAIN_TRAIN})  # training crops of that side too
        except ConfigError:
            refused.append(arch)
    assert refused == ["regnet_y_128gf", "vit_h_14"]
