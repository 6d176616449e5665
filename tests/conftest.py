"""Shared fixtures: synthetic flower photos drawn per class, the real photos when enabled, and
throwaway git + DVC repos holding the pipeline. torch is imported where a fixture needs it: the
deploy tests (tests/deploy/) run in an environment without it."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import yaml
from PIL import Image, ImageDraw

if TYPE_CHECKING:
    import torch

    from flowerpipe.config import TrainConfig

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


# The training recipe of one mechanism at a time: the reference recipe's steps (presets/, the
# file users run) without its epochs and augmentation: one constant rate for every layer from the
# first step, no label smoothing, head-only epochs, weight average or smaller training crops. Tests
# of a mechanism start from it and turn on only what they test.
PLAIN_TRAIN: dict[str, Any] = {
    key: value
    for key, value in yaml.safe_load((REPO / "presets/resnet18-reference.yaml").read_text())["train"].items()
    if key not in ("epochs", "augment")
}


def plain_train(**values: Any) -> TrainConfig:
    """A TrainConfig of PLAIN_TRAIN with `values` set over it."""
    from flowerpipe.config import TrainConfig  # the config needs torch; the deploy tests have none

    return TrainConfig(**{**PLAIN_TRAIN, **values})


SMALL = {
    "model": {"weights": None},
    "data": {"image_size": 32},
    # random weights: every layer learns from the first step, as docs/training.md advises
    "train": {"epochs": 2, "batch_size": 16, "head_epochs": 0, "backbone_lr_factor": 1.0},
    # 14 test photos and a 2-epoch model: one changed answer is 7 points; test_quantize and test_gate
    # test the search and the gate, so here the gate lets any int8 model through
    "export": {"max_accuracy_drop": 100.0, "calibration_images": 16},
}


class DvcRepo:
    """A git + DVC repo holding a copy of the project's pipeline files."""

    def __init__(self, path: Path, template: DvcRepo | None = None) -> None:
        self.path = path
        bindir = str(Path(sys.executable).parent)  # `python` in dvc.yaml must be this venv's
        self.env = {
            **os.environ,
            "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}",
            "DVC_NO_ANALYTICS": "1",
            "GIT_AUTHOR_NAME": "test",
            "GIT_AUTHOR_EMAIL": "test@example.invalid",
            "GIT_COMMITTER_NAME": "test",
            "GIT_COMMITTER_EMAIL": "test@example.invalid",
        }
        if template:  # a copy of another repo, its DVC cache and outputs included
            shutil.copytree(template.path, path, symlinks=True)
            return
        path.mkdir(parents=True, exist_ok=True)
        (path / "data").mkdir()
        for name in ("dvc.yaml", "params.yaml", ".gitignore", "data/exclude.txt"):
            shutil.copy(REPO / name, path / name)
        for folder in ("stages", "flowerpipe", "presets"):
            shutil.copytree(REPO / folder, path / folder, ignore=shutil.ignore_patterns("__pycache__"))
        self.run("git", "init", "-q")
        self.dvc("init", "-q")
        shutil.copy(REPO / ".dvcignore", path / ".dvcignore")
        self.commit("pipeline")

    @classmethod
    def clone_of(cls, other: DvcRepo, path: Path) -> DvcRepo:
        """A `git clone` of `other`: its commits, without its DVC cache or outputs."""
        other.run("git", "clone", "-q", str(other.path), str(path))
        repo = cls.__new__(cls)
        repo.path, repo.env = path, other.env
        return repo

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(args, cwd=self.path, env=self.env, capture_output=True, text=True)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done

    def dvc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(sys.executable, "-m", "dvc", *args, check=check)

    def commit(self, message: str) -> None:
        self.run("git", "add", "-A")
        self.run("git", "commit", "-qm", message, "--allow-empty")

    def set_params(self, changes: dict) -> None:
        params = yaml.safe_load((self.path / "params.yaml").read_text())
        for section, values in changes.items():
            params[section].update(values)
        (self.path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    def json(self, relpath: str):
        return json.loads((self.path / relpath).read_text())

    def stop_training(self, sig: signal.Signals) -> int:
        """Start `dvc repro train`, send `sig` to it (and what it started) once the run has written
        a checkpoint, wait until all of them have exited, and return the checkpoint's epoch."""
        checkpoint = self.path / "models/checkpoint.pt"
        written = checkpoint.stat().st_mtime_ns if checkpoint.exists() else None
        args = (sys.executable, "-m", "dvc", "repro", "train")
        proc = subprocess.Popen(args, cwd=self.path, env=self.env, text=True, start_new_session=True)
        while not checkpoint.exists() or checkpoint.stat().st_mtime_ns == written:
            assert proc.poll() is None, "training ended before it could be stopped"
            time.sleep(0.01)
        os.killpg(proc.pid, sig)
        proc.wait()
        with contextlib.suppress(ProcessLookupError):
            while True:  # torchrun's agent stops its workers before it exits
                os.killpg(proc.pid, 0)
                time.sleep(0.05)
        import torch

        return torch.load(checkpoint, weights_only=True)["epoch"]


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


# Chromium as the tests run it: headless, and quiet on a machine without internet.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
)


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
        _colour_model(path, metadata)
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
        _colour_model(path, metadata, bank.astype(np.float32))
    else:
        net = request.getfixturevalue("classifier")
        bank = feature_bank(features(net, bank_photos, IMAGE_SIZE, 32, torch.device("cpu")))
        model = WithKnnScore(net, bank, IMAGE_SIZE)
        export.export_onnx(model, path, IMAGE_SIZE, metadata, outputs=(export.OUTPUT_NAME, KNN_OUTPUT))
    return path


def with_metadata(source: Path, path: Path, changes: dict[str, str | None]) -> Path:
    """A copy of the ONNX file `source` at `path` with each metadata key of `changes` set to its
    value, or removed where the value is None (the `onnx` package alone, no torch)."""
    import onnx

    model = onnx.load(str(source))
    kept = [p for p in model.metadata_props if p.key not in changes]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in changes.items():
        if value is not None:
            model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def knn_bank_in(path: Path) -> np.ndarray:
    """The training features an exported knn file's similarity reads, as its top-k's matmul takes
    them, in the type the file stores them in (through the Cast and Transpose nodes in between)."""
    import onnx

    graph = onnx.load(str(path)).graph
    made_by = {out: node for node in graph.node for out in node.output}
    constants = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    matmul = made_by[next(node for node in graph.node if node.op_type == "TopK").input[0]]
    assert matmul.op_type == "MatMul"
    name, between = matmul.input[1], []
    while name not in constants:
        between.append(made_by[name])
        assert between[-1].op_type in ("Cast", "Transpose"), between[-1]
        name = between[-1].input[0]
    values = constants[name]
    for node in reversed(between):
        if node.op_type == "Transpose":
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            values = values.transpose(perm)
    return values


def rejecting(source: Path, path: Path, threshold: float, score: str = "max_softmax") -> Path:
    """A copy of the ONNX file `source` that answers unknown below the `score` `threshold`."""
    return with_metadata(source, path, {"reject_score": score, "reject_threshold": repr(threshold)})


def _colour_model(path: Path, metadata: dict[str, str], bank: np.ndarray | None = None) -> None:
    """An ONNX classifier without torch: the mean of each colour channel, times a fixed matrix; with
    a `bank` of unit colour vectors also the knn similarity of the unit mean colour to them."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from flowerpipe.runtime.metadata import KNN_K, KNN_OUTPUT

    weight = np.array([[3.0, -1.5, -1.5], [-1.5, 3.0, -1.5], [-1.5, -1.5, 3.0]], dtype=np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["input", "axes"], ["mean"], keepdims=0),
        helper.make_node("MatMul", ["mean", "weight"], ["logits"]),
    ]
    constants = [numpy_helper.from_array(np.array([2, 3]), "axes"), numpy_helper.from_array(weight, "weight")]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(CLASSES)])]
    if bank is not None:
        nodes += [
            helper.make_node("ReduceL2", ["mean", "one"], ["norm"], keepdims=1),
            helper.make_node("Div", ["mean", "norm"], ["unit"]),
            helper.make_node("MatMul", ["unit", "bank"], ["similarity"]),
            helper.make_node("TopK", ["similarity", "k"], ["nearest", "which"], axis=1),
            helper.make_node("Gather", ["nearest", "last"], [KNN_OUTPUT], axis=1),
        ]
        k = min(KNN_K, len(bank))
        constants += [
            numpy_helper.from_array(np.array([1]), "one"),
            numpy_helper.from_array(np.ascontiguousarray(bank.T), "bank"),
            numpy_helper.from_array(np.array([k]), "k"),
            numpy_helper.from_array(np.array(k - 1), "last"),
        ]
        outputs.append(helper.make_tensor_value_info(KNN_OUTPUT, TensorProto.FLOAT, ["batch"]))
    graph = helper.make_graph(
        nodes,
        "colour",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, IMAGE_SIZE, IMAGE_SIZE])],
        outputs,
        constants,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8  # what the oldest supported onnxruntime reads
    onnx.helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    onnx.save(model, path)


class _RunsCode:
    """Unpickled, this would create the file it names: proof that a load ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def hostile_torch_files(folder: Path) -> tuple[dict[str, Path], Path]:
    """Files that are no torch file flowerpipe wrote, by name, and the file that a load which ran
    code would create."""
    import pickle

    import torch

    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / "code-ran"
    files = {name: folder / f"{name}.pt" for name in ("text", "empty", "cut_short", "pickle", "torch_pickle")}
    files["text"].write_text("not a torch file\n")
    files["empty"].write_bytes(b"")
    torch.save({"weight": torch.ones(64, 64)}, files["cut_short"])
    files["cut_short"].write_bytes(files["cut_short"].read_bytes()[:300])
    files["pickle"].write_bytes(pickle.dumps(_RunsCode(marker)))
    torch.save({"state_dict": _RunsCode(marker)}, files["torch_pickle"])
    return files, marker


def _as_unprivileged(queue, call, args) -> None:
    if os.geteuid() == 0:  # root reads whatever the permissions say: be nobody
        os.setgid(65534)
        os.setuid(65534)
    try:
        queue.put(call(*args))
    except Exception as exc:  # handed to the test, which raises it
        queue.put(exc)


def unprivileged(call, *args):
    """`call(*args)` in a forked process that file permissions bind, even when the tests run as
    root; what it returns or raises comes back."""
    Image.init()  # every PIL plugin loaded before the fork
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_as_unprivileged, args=(queue, call, args))
    child.start()
    result = queue.get(timeout=300)
    child.join()
    if isinstance(result, Exception):
        raise result
    return result
