"""The fixtures and hooks of the suite: synthetic photos, the real photos and weights when enabled,
one torch thread, and small trained-like models exported to ONNX. torch is imported where a
fixture needs it: the deploy tests (tests/deploy/) run in an environment without it. What tests
import goes in tests/helpers/."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from helpers.onnx_files import colour_model
from helpers.photos import CLASSES, IMAGE_SIZE, RESIZE, make_photos, noisy_squares

if TYPE_CHECKING:
    import torch


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """A folder of three classes of 24 synthetic photos each."""
    return make_photos(tmp_path / "photos")


def _shared(variable: str, what: str) -> Path:
    """The path in environment variable `variable` (`.ci/run` sets it to a file or folder in
    ../shared, read in place, never copied); the test is skipped where it is unset."""
    value = os.environ.get(variable)
    if not value:
        pytest.skip(f"set {variable}=<{what}> to run the real-data tests")
    path = Path(value).resolve()
    assert path.exists(), f"{variable}={value} does not exist"
    return path


@pytest.fixture(scope="session")
def real_photos() -> Path:
    """The real flower_photos folder named by FLOWERPIPE_REAL_DATA."""
    return _shared("FLOWERPIPE_REAL_DATA", "flower_photos folder")


@pytest.fixture(scope="session")
def real_weights() -> Path:
    """The real ImageNet state_dict for torchvision's mobilenet_v2 named by FLOWERPIPE_REAL_WEIGHTS."""
    return _shared("FLOWERPIPE_REAL_WEIGHTS", "mobilenet_v2 state_dict")


def pytest_configure(config: pytest.Config) -> None:
    """A pytest-xdist worker (one per core) runs its tests, and the stages they start, on one
    thread: OpenMP threads that outnumber the cores spin against each other."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        with contextlib.suppress(ImportError):  # not installed for the deploy tests
            import torch

            torch.set_num_threads(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The real-data tests first: the pipeline's takes minutes, and started last it would keep one
    worker busy while the others stand idle."""
    items.sort(key=lambda item: item.get_closest_marker("real_data") is None)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on a shared 2-core machine run many times faster on one intra-op thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def classifier() -> torch.nn.Module:
    """An untrained resnet18 for IMAGE_SIZE inputs that behaves like a trained one: BatchNorm has
    running statistics, and the head spreads `noisy_squares` over all the classes."""
    import torch

    from flowerpipe.model.build import build_model
    from flowerpipe.runtime.preprocess import center_crop, to_model_input

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
def onnx_model(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    """A small model for IMAGE_SIZE inputs exported with flowerpipe's metadata: `classifier` through
    the export code where torch is installed, else (the deploy tests' environment) a graph built with
    `onnx` alone that answers from the photo's mean colour."""
    from flowerpipe.runtime.metadata import onnx_metadata

    path = tmp_path_factory.mktemp("export") / "model.onnx"
    metadata = onnx_metadata(list(CLASSES), "resnet18", IMAGE_SIZE, RESIZE, {"git_commit": "abc123"})
    try:
        from flowerpipe.export import onnx as export
    except ImportError:  # no torch
        colour_model(path, metadata)
    else:
        export.export_onnx(request.getfixturevalue("classifier"), path, IMAGE_SIZE, metadata)
    return path


@pytest.fixture(scope="session")
def knn_model(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    """`onnx_model`'s kind of model with a knn score beside its logits, its feature bank made of
    `noisy_squares` (seed 2), and no threshold yet (`rejecting` sets one): through the export code
    where torch is installed, else built with `onnx` alone on the mean colour."""
    from flowerpipe.runtime.metadata import KNN_OUTPUT, onnx_metadata
    from flowerpipe.runtime.preprocess import center_crop, to_model_input

    path = tmp_path_factory.mktemp("export") / "knn.onnx"
    metadata = onnx_metadata(list(CLASSES), "resnet18", IMAGE_SIZE, RESIZE, {"git_commit": "abc123"})
    bank_photos = center_crop(noisy_squares(64, seed=2), IMAGE_SIZE)
    try:
        import torch

        from flowerpipe.export import onnx as export
        from flowerpipe.model.knn import WithKnnScore, feature_bank, features
    except ImportError:  # no torch
        colours = to_model_input(bank_photos).mean(axis=(2, 3))
        bank = colours / np.linalg.norm(colours, axis=1, keepdims=True)
        colour_model(path, metadata, bank.astype(np.float32))
    else:
        net = request.getfixturevalue("classifier")
        bank = feature_bank(features(net, bank_photos, IMAGE_SIZE, 32, torch.device("cpu")))
        model = WithKnnScore(net, bank, IMAGE_SIZE)
        export.export_onnx(model, path, IMAGE_SIZE, metadata, outputs=(export.OUTPUT_NAME, KNN_OUTPUT))
    return path
