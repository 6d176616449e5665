"""Grad-CAM (flowerpipe.explain): a map for every family of torchvision classifiers, overlays of
the photo's size that differ between classes, and `flowerpipe explain` on a trained model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO
from helpers.families import FAMILIES
from PIL import Image

from flowerpipe.explain import ExplainError, explain_file, grad_cams, overlay, overlays, target_layer
from flowerpipe.model.build import build_model, head_name, save_trained

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = ["daisy", "roses", "tulips"]
SIZE, RESIZE = 32, 37  # the model's input and the side of the square it is cropped from


def live_head(model: torch.nn.Module) -> torch.nn.Module:
    """Random heads start near zero (SqueezeNet's answers nothing then): a seeded spread of weights
    gives each class its own answer."""
    torch.manual_seed(0)
    torch.nn.init.normal_(model.get_submodule(head_name(model)).weight, std=1.0)
    return model.eval()


@pytest.mark.parametrize(
    ("arch", "side"), [(a, s if a.startswith(("vit", "maxvit")) else max(s, 64)) for a, s in FAMILIES]
)
def test_every_family_gets_a_map_per_class(arch: str, side: int) -> None:
    model = live_head(build_model(arch, None, 3))
    photos = np.random.default_rng(0).integers(0, 256, (2, side, side, 3), dtype=np.uint8)
    first, second = grad_cams(model, photos, [0, 0]), grad_cams(model, photos, [1, 1])
    assert first.shape == second.shape == (2, side, side)
    assert np.isfinite(first).all() and first.min() >= 0 and first.max() <= 1 + 1e-6
    assert first.max() > 0.5 or second.max() > 0.5  # scaled to [0, 1]: not all zero
    assert np.abs(first - second).max() > 0.1, "the two classes' maps are the same"


def test_the_layer_read_is_the_last_map_or_a_transformers_tokens() -> None:
    names = {}
    for arch, side in (("resnet18", 64), ("mobilenet_v2", 64), ("swin_t", 64), ("vit_b_32", 224)):
        model = build_model(arch, None, 3).eval()
        layer, reshape = target_layer(model, side)
        names[arch] = (next(n for n, m in model.named_modules() if m is layer), reshape is not None)
    assert names == {
        "resnet18": ("layer4", False),
        "mobilenet_v2": ("features", False),
        "swin_t": ("permute", False),  # its stages are NHWC; the map is laid NCHW before the pool
        "vit_b_32": ("encoder.layers.encoder_layer_11.ln_1", True),  # not the patch embedding's map
    }
    flat = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 3))  # no map at all
    with pytest.raises(ExplainError, match="Sequential: no layer before the head keeps a map at 16 px"):
        target_layer(flat, 16)


def test_overlay_has_the_photos_size_and_dims_what_the_model_does_not_see() -> None:
    photo = np.full((80, 120, 3), 200, np.uint8)
    cam = np.zeros((SIZE, SIZE), np.float32)
    cam[:, SIZE // 2 :] = 1.0  # the right half
    shown = overlay(photo, cam, SIZE / RESIZE)
    assert shown.shape == photo.shape and shown.dtype == np.uint8
    side = round(SIZE / RESIZE * 80)
    left = (120 - side) // 2
    assert (shown[:, : left - 1] == int(200 * 0.4)).all() and (shown[:, left + side + 1 :] == 80).all()
    inside = shown[:, left : left + side].astype(int)
    assert abs(inside[:, : side // 3] - inside[:, -side // 3 :]).sum() > 0  # hot and cold differ


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "best.pt"
    model = live_head(build_model("resnet18", None, len(CLASSES)))
    save_trained(model, path, arch="resnet18", classes=CLASSES, image_size=SIZE, resize_size=RESIZE)
    return path


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("photos") / "wide.png"
    pixels = np.random.default_rng(1).integers(0, 256, (90, 140, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def test_explain_file_overlays_the_photo_for_the_answer_or_a_label(trained: Path, photo: Path) -> None:
    shown, answer = explain_file(trained, photo)
    assert shown.shape == (90, 140, 3) and answer in CLASSES
    maps = {label: explain_file(trained, photo, label)[0] for label in CLASSES}
    assert np.array_equal(maps[answer], shown)
    assert len({m.tobytes() for m in maps.values()}) == 3  # each class looked for in its own place
    with pytest.raises(ExplainError, match="--label 'cats': not one of the model's classes"):
        explain_file(trained, photo, "cats")
    for bad, why in ((photo.with_name("missing.jpg"), "no such file"), (trained, "not a readable image")):
        with pytest.raises(ExplainError, match=f"^{bad}: {why}$"):
            explain_file(trained, bad)


def test_overlays_of_cached_photos_match_explain_of_the_file(trained: Path) -> None:
    model = build_model("resnet18", None, len(CLASSES))
    model.load_state_dict(torch.load(trained)["state_dict"])
    cached = np.random.default_rng(2).integers(0, 256, (2, RESIZE, RESIZE, 3), dtype=np.uint8)
    shown = overlays(model.eval(), cached, [0, 2], SIZE)
    assert [s.shape for s in shown] == [(RESIZE, RESIZE, 3)] * 2
    assert overlays(model, cached[:0], [], SIZE) == []


def explain_cli(*args: str, block_torch: bool = False) -> subprocess.CompletedProcess[str]:
    block = "import sys; sys.modules['torch'] = None; " if block_torch else ""
    code = f"{block}from flowerpipe.cli import main; main({['explain', *map(str, args)]!r})"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)


def test_explain_command_writes_the_overlay(trained: Path, photo: Path, tmp_path: Path) -> None:
    out = tmp_path / "look.png"
    done = explain_cli(photo, "--model", trained, "--label", "roses", "--out", out)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"photo": str(photo), "label": "roses", "overlay": str(out)}
    assert Image.open(out).size == (140, 90)
    wrong = explain_cli(photo, "--model", trained, "--label", "cats", "--out", out)
    assert wrong.returncode == 1 and wrong.stderr.strip().count("\n") == 0
    assert "--label 'cats'" in wrong.stderr


def test_explain_says_in_one_line_that_it_needs_torch(trained: Path, photo: Path) -> None:
    done = explain_cli(photo, "--model", trained, block_torch=True)
    assert done.returncode == 1 and done.stderr.strip().count("\n") == 0, done.stderr
    assert "explain needs the pipeline extra (torch)" in done.stderr


def test_a_frozen_model_still_gets_its_map() -> None:
    model = live_head(build_model("resnet18", None, len(CLASSES))).requires_grad_(False)
    photos = np.random.default_rng(3).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    assert grad_cams(model, photos, [0]).max() > 0.5
