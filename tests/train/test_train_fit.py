"""training.fit on a tiny prepared synthetic dataset, and the augmentation built from params."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.models as tvm
from helpers.photos import make_photos
from helpers.recipes import plain_train, without_timings

from flowerpipe import training
from flowerpipe.config import SplitConfig, TrainConfig
from flowerpipe.core.errors import ConfigError
from flowerpipe.data.prepared import Prepared, load_prepared
from flowerpipe.model.build import build_model
from flowerpipe.model.inference import predict_logits
from flowerpipe.model.transforms import CropFlip, augment_batch, build_augment, center_crop_batch, normalize
from flowerpipe.prepare import scan

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RESIZE, IMAGE_SIZE = 40, 32
CPU = torch.device("cpu")
CFG = plain_train(epochs=2, batch_size=16, lr=0.01, precision="fp32", device="cpu", seed=0)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    root = make_photos(tmp_path_factory.mktemp("photos"))
    out = tmp_path_factory.mktemp("prepared") / "prepared"
    scan.prepare(root, out, SplitConfig(val=0.2, test=0.2, seed=42), resize=RESIZE, workers=2)
    return load_prepared(out)


def run_fit(data: Prepared, cfg: TrainConfig = CFG, model: torch.nn.Module | None = None, on_epoch=None):
    if model is None:
        torch.manual_seed(123)  # the same random weights for every run
        model = build_model("resnet18", None, len(data.classes))
    result = training.fit(
        model,
        cfg,
        images=data.images,
        labels=data.labels,
        train_idx=data.indices("train"),
        val_idx=data.indices("val"),
        image_size=IMAGE_SIZE,
        device=CPU,
        on_epoch=on_epoch,
    )
    return model, result


@pytest.fixture(scope="module")
def first_run(prepared: Prepared) -> tuple[training.FitResult, list[dict[str, float]]]:
    seen: list[dict[str, float]] = []
    _, result = run_fit(prepared, on_epoch=seen.append)
    return result, seen


def test_fit_records_each_epoch_and_keeps_the_best(prepared: Prepared, first_run) -> None:
    result, seen = first_run
    history = result.history
    assert [h["epoch"] for h in history] == [1, 2]
    assert seen == history
    for h in history:
        for key in ("train/loss", "val/loss"):
            assert math.isfinite(h[key]) and h[key] > 0
        for key in ("train/accuracy", "val/accuracy"):
            assert 0.0 <= h[key] <= 1.0
        assert h["lr"] == pytest.approx(0.01)
        assert h["epoch_seconds"] > 0 and h["train_images_per_second"] > 0
    best = max(history, key=lambda h: h["val/accuracy"])
    assert result.best_val_accuracy == best["val/accuracy"]
    assert result.best_epoch == best["epoch"]

    # best_state loads into a fresh model and reproduces the best epoch's val accuracy
    fresh = build_model("resnet18", None, len(prepared.classes))
    fresh.load_state_dict(result.best_state)
    val = prepared.indices("val")
    logits = predict_logits(fresh, np.asarray(prepared.images[val]), IMAGE_SIZE, 16, CPU)
    assert float((logits.argmax(1) == prepared.labels[val]).mean()) == pytest.approx(result.best_val_accuracy)


def test_same_seed_gives_the_same_run(prepared: Prepared, first_run) -> None:
    first, _ = first_run
    _, second = run_fit(prepared)
    assert without_timings(first.history) == without_timings(second.history)
    assert first.best_epoch == second.best_epoch
    assert first.best_state.keys() == second.best_state.keys()
    for key, value in first.best_state.items():
        assert torch.equal(value, second.best_state[key]), key


def test_other_seed_gives_another_run(prepared: Prepared, first_run) -> None:
    first, _ = first_run
    _, other = run_fit(prepared, plain_train(epochs=1, batch_size=16, lr=0.01, device="cpu", seed=1))
    assert first.history[0]["train/loss"] != other.history[0]["train/loss"]


def test_train_seed_drives_the_head_init(prepared: Prepared, tmp_path: Path) -> None:
    torch.manual_seed(0)
    backbone = tmp_path / "backbone.pth"  # fixed 'pretrained' weights: only the new head is random
    torch.save(tvm.get_model("resnet18", weights=None).state_dict(), backbone)
    runs = []
    for global_state in (1, 2):  # whatever happened to the global RNG before the stage built the model
        torch.manual_seed(global_state)
        one_epoch = plain_train(epochs=1, batch_size=16, lr=0.01, device="cpu", seed=0)
        model = build_model("resnet18", str(backbone), len(prepared.classes), seed=one_epoch.seed)
        runs.append(run_fit(prepared, one_epoch, model=model)[1])
    assert without_timings(runs[0].history) == without_timings(runs[1].history)


# --- what the training steps are fed ---------------------------------------------------------------

FEED_CFG = TrainConfig(batch_size=8, freeze="backbone", augment=[], precision="fp32", device="cpu")
POSITIONS = [torch.tensor([3, 0, 7]), torch.tensor([5, 1])]  # an epoch's batches of train positions


def feed_run(data: Prepared, cfg: TrainConfig = FEED_CFG) -> training.Run:
    model = build_model("resnet18", None, len(data.classes), seed=4)
    return training.start_run(model, cfg, CPU, data.labels[data.splits == "train"])


def image_feed(data: Prepared, run: training.Run) -> training.ImageFeed:
    train_size = run.cfg.train_size(IMAGE_SIZE)
    return training.ImageFeed(
        run, data.images, data.indices("train"), data.indices("val"), train_size, IMAGE_SIZE
    )


def centre_crops(data: Prepared, pos: torch.Tensor, size: int) -> torch.Tensor:
    """The normalized centre crops of the cached train images at `pos`, read without a feed."""
    rows = torch.from_numpy(data.images[data.indices("train")[pos.numpy()]]).permute(0, 3, 1, 2)
    return normalize(center_crop_batch(rows, size))


def drive(feed: training.Feed, seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor]:
    """An epoch's inputs at POSITIONS and the val logits, through what every feed offers."""
    feed.train_mode([])
    assert feed.net.training
    torch.manual_seed(seed)
    return list(feed.inputs(POSITIONS)), feed.val_logits(feed.net)


@pytest.mark.parametrize("augment", [[], [{"RandomResizedCrop": {}}, {"RandomHorizontalFlip": {}}]])
def test_image_feed_gives_the_images_at_the_positions_held_or_streamed(prepared: Prepared, augment) -> None:
    val_idx = prepared.indices("val")
    runs = {
        loader: feed_run(prepared, replace(FEED_CFG, augment=augment, image_scale=0.75, loader=loader))
        for loader in ("device", "stream")
    }
    (held, held_val), (streamed, streamed_val) = (drive(image_feed(prepared, run)) for run in runs.values())
    assert [x.shape for x in held] == [(len(pos), 3, 24, 24) for pos in POSITIONS]
    for x, y in zip(held, streamed, strict=True):
        assert x.dtype == torch.float32 and torch.equal(x, y)  # the same draws on the same images
    if not augment:  # the centre crop of the cached images at those positions, so of their labels
        for x, pos in zip(held, POSITIONS, strict=True):
            assert torch.equal(x, centre_crops(prepared, pos, 24))
    model = runs["device"].model
    assert held_val.shape == (len(val_idx), len(prepared.classes))
    expected = predict_logits(model, np.asarray(prepared.images[val_idx]), IMAGE_SIZE, 8, CPU)
    assert torch.equal(held_val, streamed_val) and torch.equal(held_val, torch.from_numpy(expected))


def test_feature_feed_gives_what_the_backbone_hands_the_head_at_the_positions(prepared: Prepared) -> None:
    run = feed_run(prepared)
    train_idx, val_idx = prepared.indices("train"), prepared.indices("val")
    features = training.FeatureFeed.compute(run, prepared.images, train_idx, val_idx, IMAGE_SIZE)
    assert features is not None and features.net is run.model.fc
    feats, val_logits = drive(features)
    assert [x.shape for x in feats] == [(len(pos), 512) for pos in POSITIONS]
    run.model.eval()
    with torch.inference_mode():  # the head on the features is the model on the images, batch by batch
        for x, pos in zip(feats, POSITIONS, strict=True):
            expected = run.model(centre_crops(prepared, pos, IMAGE_SIZE))
            torch.testing.assert_close(run.model.fc(x), expected, rtol=1e-4, atol=1e-4)
    _, image_val_logits = drive(image_feed(prepared, run))
    torch.testing.assert_close(val_logits, image_val_logits, rtol=1e-4, atol=1e-4)


# --- augmentation ----------------------------------------------------------------------------------


def test_unknown_transform_names_its_position() -> None:
    spec = [{"RandomFlipp": {}}, {"RandomHorizontalFlip": {}}]
    with pytest.raises(ConfigError, match="RandomFlipp") as info:
        build_augment(spec, IMAGE_SIZE)
    assert info.value.key == "train.augment[0]"


@pytest.mark.parametrize("name", ["functional", "InterpolationMode", "Tensor", "__class__"])
def test_things_that_are_not_transforms_are_refused(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_augment([{"RandomHorizontalFlip": {}}, {name: {}}], IMAGE_SIZE)
    assert info.value.key == "train.augment[1]"


def test_bad_transform_arguments_name_the_transform() -> None:
    with pytest.raises(ConfigError) as info:
        build_augment([{"RandomRotation": {"degrees": 10, "no_such_arg": 1}}], IMAGE_SIZE)
    assert info.value.key == "train.augment[0].RandomRotation"


@pytest.mark.parametrize(
    "spec",
    [
        [{"RandomHorizontalFlip": {}}],
        [{"RandomHorizontalFlip": None}],
        [],
        [{"RandomResizedCrop": {"scale": [0.5, 1.0]}}, {"RandomHorizontalFlip": {}}],
        [{"Resize": {}}],
        [{"ColorJitter": {"brightness": 0.3}}],
    ],
)
def test_augment_output_is_image_size(spec: list) -> None:
    augment = build_augment(spec, IMAGE_SIZE)
    image = torch.randint(0, 256, (3, RESIZE, RESIZE + 10), dtype=torch.uint8)
    out = augment(image)
    assert out.shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    assert out.dtype == torch.uint8


def test_certain_flip_flips_the_centre_crop() -> None:
    augment = build_augment([{"RandomHorizontalFlip": {"p": 1.0}}], IMAGE_SIZE)
    image = torch.randint(0, 256, (3, RESIZE, RESIZE), dtype=torch.uint8)
    crop = center_crop_batch(image[None], IMAGE_SIZE)[0]
    assert torch.equal(augment(image), crop.flip(-1))


def test_augment_batch_draws_per_image() -> None:
    torch.manual_seed(0)
    augment = build_augment([{"RandomHorizontalFlip": {}}], IMAGE_SIZE)
    image = torch.arange(RESIZE, dtype=torch.uint8).repeat(3, RESIZE, 1)  # a horizontal ramp
    out = augment_batch(image.repeat(32, 1, 1, 1), augment)
    assert out.shape == (32, 3, IMAGE_SIZE, IMAGE_SIZE)
    flipped = [bool(o[0, 0, 0] > o[0, 0, -1]) for o in out]
    assert 0 < sum(flipped) < 32


def test_normalize_uses_imagenet_statistics() -> None:
    images = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2).repeat(1, 3, 1, 1)
    x = normalize(images)
    assert x.dtype == torch.float32
    torch.testing.assert_close(
        x[0, :, 0, 0], -torch.tensor([0.485, 0.456, 0.406]) / torch.tensor([0.229, 0.224, 0.225])
    )
    torch.testing.assert_close(
        x[0, :, 0, 1], torch.tensor([0.515, 0.544, 0.594]) / torch.tensor([0.229, 0.224, 0.225])
    )


def test_default_augmentation_is_batched_and_others_are_not() -> None:
    assert isinstance(build_augment(TrainConfig().augment, IMAGE_SIZE), CropFlip)
    assert isinstance(build_augment([{"RandomResizedCrop": {"scale": [0.5, 1]}}], IMAGE_SIZE), CropFlip)
    for spec in (
        [{"RandomResizedCrop": {"antialias": False}}],
        [{"RandomResizedCrop": {}}, {"ColorJitter": {"brightness": 0.3}}],
        [{"RandomHorizontalFlip": {}}, {"RandomResizedCrop": {}}],
    ):
        assert not isinstance(build_augment(spec, IMAGE_SIZE), CropFlip), spec


def test_crop_flip_of_the_whole_image_is_the_image_or_its_mirror() -> None:
    images = torch.randint(0, 256, (6, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8)
    assert torch.equal(CropFlip(IMAGE_SIZE, (1.0, 1.0), (1.0, 1.0))(images), images)
    assert torch.equal(CropFlip(IMAGE_SIZE, (1.0, 1.0), (1.0, 1.0), flip=1.0)(images), images.flip(-1))
    assert torch.equal(CropFlip(IMAGE_SIZE, (1.0, 1.0), (1.0, 1.0))(images[0]), images[0])  # one CHW image


def test_crop_flip_draws_per_image_within_scale_and_ratio() -> None:
    torch.manual_seed(0)
    crop = CropFlip(IMAGE_SIZE, (0.3, 0.8), (0.75, 1.333), flip=0.5)
    boxes = crop.boxes(2000, RESIZE, RESIZE + 10)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    area = w * h / (RESIZE * (RESIZE + 10))
    assert area.min() >= 0.28 and area.max() <= 0.82  # rounding to whole pixels
    assert (w / h).min() >= 0.7 and (w / h).max() <= 1.4
    assert boxes[:, :2].min() >= 0 and (boxes[:, 2] <= RESIZE + 10).all() and (boxes[:, 3] <= RESIZE).all()
    assert len(set(boxes[:, 0].tolist())) > 5 and len(set(boxes[:, 1].tolist())) > 5  # not one box for all
    ramp = torch.arange(RESIZE + 10, dtype=torch.uint8).repeat(3, RESIZE, 1)  # brighter to the right
    out = crop(ramp.repeat(400, 1, 1, 1))
    assert out.shape == (400, 3, IMAGE_SIZE, IMAGE_SIZE) and out.dtype == torch.uint8
    flipped = (out[:, 0, 0, 0] > out[:, 0, 0, -1]).float().mean()
    assert 0.4 < flipped < 0.6
