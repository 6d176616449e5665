"""Shared fixtures: synthetic flower photos drawn per class, and the real photos when enabled."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("daisy", "dandelion", "roses")
# Each class is a shape of its own colour on a noisy background: learnable in one epoch.
_STYLE = {
    "daisy": ((240, 240, 240), "ellipse"),
    "dandelion": ((250, 210, 20), "rectangle"),
    "roses": ((200, 20, 40), "polygon"),
}


def draw_photo(label: str, rng: np.random.Generator, size: tuple[int, int] = (96, 72)) -> Image.Image:
    """A small RGB 'photo': background noise with the class's coloured shape at a random place."""
    w, h = size
    img = Image.fromarray(rng.integers(40, 120, (h, w, 3), dtype=np.uint8))
    color, shape = _STYLE[label]
    x0, y0 = int(rng.integers(0, w // 3)), int(rng.integers(0, h // 3))
    box = (x0, y0, x0 + w // 2, y0 + h // 2)
    draw = ImageDraw.Draw(img)
    if shape == "polygon":
        draw.polygon([(box[0], box[3]), ((box[0] + box[2]) // 2, box[1]), (box[2], box[3])], fill=color)
    else:
        getattr(draw, shape)(box, fill=color)
    return img


def make_photos(root: Path, per_class: int = 24, seed: int = 0, classes=CLASSES) -> Path:
    """Write `per_class` synthetic JPEGs into root/<class>/ and return root."""
    rng = np.random.default_rng(seed)
    for label in classes:
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            draw_photo(label, rng).save(root / label / f"{label}_{i:03d}.jpg", quality=90)
    return root


def without_timings(history: list[dict[str, float]]) -> list[dict[str, float]]:
    """Training history minus the wall-clock entries, which differ between identical runs."""
    return [
        {k: v for k, v in h.items() if k not in ("epoch_seconds", "train_images_per_second")} for h in history
    ]


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """A folder of three classes of 24 synthetic photos each."""
    return make_photos(tmp_path / "photos")


@pytest.fixture(scope="session")
def real_photos() -> Path:
    """The real flower_photos folder named by FLOWERPIPE_REAL_DATA (`.ci/run` sets it)."""
    folder = os.environ.get("FLOWERPIPE_REAL_DATA")
    if not folder:
        pytest.skip("set FLOWERPIPE_REAL_DATA=<flower_photos folder> to run the real-data tests")
    path = Path(folder).resolve()
    assert path.is_dir(), f"FLOWERPIPE_REAL_DATA={folder} is not a folder"
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on a shared 2-core machine run many times faster on one intra-op thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


IMAGE_SIZE, RESIZE = 32, 40  # the small model's input, and the square it is cropped from


def noisy_squares(count: int, seed: int = 0) -> np.ndarray:
    """uint8 NHWC RESIZE squares as in the prepared cache: smooth gradients plus noise."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, RESIZE)[None, :, None]
    base = (ramp * rng.uniform(0.2, 1.0, (count, 1, 1, 3))).astype(np.int64)
    noise = rng.integers(-30, 30, (count, RESIZE, RESIZE, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def classifier() -> torch.nn.Module:
    """An untrained resnet18 for IMAGE_SIZE inputs that behaves like a trained one: BatchNorm has
    running statistics, and the head spreads `noisy_squares` over all the classes."""
    from flowerpipe.models import build_model
    from flowerpipe.preprocess import center_crop, to_model_input

    torch.manual_seed(0)
    net = build_model("resnet18", None, len(CLASSES))
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.rand(8, 3, IMAGE_SIZE, IMAGE_SIZE) * 4 - 2)
        net.eval()
        head, net.fc = net.fc, torch.nn.Identity()
        features = net(torch.from_numpy(to_model_input(center_crop(noisy_squares(256, seed=1), IMAGE_SIZE))))
        net.fc = head
        centred = features - features.mean(0)
        directions = torch.linalg.svd(centred, full_matrices=False).Vh[: len(CLASSES)]
        weight = 3 * directions / (centred @ directions.T).std(0)[:, None]  # logits of spread ~3
        head.weight.copy_(weight)
        head.bias.copy_(-weight @ features.mean(0))
    return net


@pytest.fixture(scope="session")
def onnx_model(classifier: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`classifier` exported by flowerpipe, with its metadata."""
    from flowerpipe import export

    path = tmp_path_factory.mktemp("export") / "model.onnx"
    metadata = export.onnx_metadata(list(CLASSES), "resnet18", IMAGE_SIZE, RESIZE, {"git_commit": "abc123"})
    export.export_onnx(classifier, path, IMAGE_SIZE, metadata)
    return path
