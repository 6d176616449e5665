"""Training recipes from params: heads, freezing, optimizers, schedules, checkpoints and resume,
cached backbone features, mixed precision."""

from __future__ import annotations

import itertools
import logging
import math
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers.hostile import hostile_torch_files
from helpers.recipes import plain_train, without_timings
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from flowerpipe import training
from flowerpipe.config import TrainConfig
from flowerpipe.core.errors import ConfigError, FlowerpipeError, TrainingError
from flowerpipe.model.build import (
    Head,
    build_model,
    freeze,
    head_name,
    load_trained,
    save_trained,
    train_mode,
)
from flowerpipe.model.devices import autocast_dtype
from flowerpipe.training import feeds, loop
from flowerpipe.training.schedule import lr_factor

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU = torch.device("cpu")
RESIZE, IMAGE_SIZE, CLASSES = 36, 32, 3


def tiny_data(
    n_train: int, n_val: int = 6, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Random uint8 NHWC 'photos' whose class is visible in their mean colour."""
    rng = np.random.default_rng(seed)
    n = n_train + n_val
    labels = np.arange(n) % CLASSES
    images = rng.integers(0, 100, (n, RESIZE, RESIZE, 3), dtype=np.uint8)
    images[np.arange(n), :, :, labels] += 120
    return images, labels.astype(np.int64), np.arange(n_train), np.arange(n_train, n)


def fit(
    cfg: TrainConfig, data=None, model: nn.Module | None = None, **kwargs
) -> tuple[nn.Module, training.FitResult]:
    images, labels, train_idx, val_idx = data if data is not None else tiny_data(24)
    model = model if model is not None else build_model("resnet18", None, CLASSES)
    split = {"images": images, "labels": labels, "train_idx": train_idx, "val_idx": val_idx}
    result = training.fit(model, cfg, **split, image_size=IMAGE_SIZE, device=CPU, **kwargs)
    return model, result


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def count_epochs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record each epoch that really trains (a resumed or finished run skips some)."""
    calls: list[int] = []
    real = loop.train_one_epoch

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train_one_epoch", counted)
    return calls


class Stop(Exception):
    """Raised from on_epoch: the run dies there, as if killed, after its checkpoint is written."""


def stop_after(epoch: int):
    def on_epoch(metrics: dict[str, float]) -> None:
        if metrics["epoch"] == epoch:
            raise Stop

    return on_epoch


# --- every head / freeze / optimizer / scheduler combination trains a step ---------------------------

FREEZES = ["none", "backbone", ["conv1", "bn1", "layer1", "layer2"]]
COMBINATIONS = list(
    itertools.product(
        ["linear", "mlp"], FREEZES, ["sgd", "adam", "adamw"], ["none", "step", "cosine", "warmup_cosine"]
    )
)


@pytest.mark.parametrize(("head", "frozen", "optimizer", "scheduler"), COMBINATIONS)
def test_each_combination_trains_one_step(head: str, frozen, optimizer: str, scheduler: str) -> None:
    cfg = plain_train(
        epochs=3,
        batch_size=8,
        optimizer=optimizer,
        lr=0.01,
        scheduler=scheduler,
        warmup_epochs=1,
        freeze=frozen,
        precision="fp32",
        device="cpu",
        augment=[{"RandomHorizontalFlip": {}}],
    )
    model = build_model("resnet18", None, CLASSES, head=head, hidden=16, dropout=0.1)
    before = snapshot(model)
    seen: list[dict[str, float]] = []
    with pytest.raises(Stop):  # one epoch of 8 images in batches of 8: one optimizer step
        fit(cfg, tiny_data(8), model, on_epoch=lambda m: (seen.append(m), stop_after(1)(m)))
    assert seen[0]["lr"] == pytest.approx(0.01)  # a one-step warm-up ends at lr

    head_prefix = f"{head_name(model)}."
    frozen_prefixes = (
        [] if frozen == "none" else [f"{name}." for name in frozen] if isinstance(frozen, list) else None
    )
    for key, value in model.state_dict().items():
        if frozen_prefixes is None:  # backbone: all but the head
            is_frozen = not key.startswith(head_prefix)
        else:
            is_frozen = key.startswith(tuple(frozen_prefixes))
        changed = not torch.equal(value, before[key])
        if is_frozen:
            assert not changed, f"frozen {key} changed"  # weights, and BatchNorm statistics too
        elif key.endswith(("weight", "running_mean")):
            assert changed, f"trainable {key} did not change"


@pytest.mark.parametrize("arch", ["mobilenet_v2", "squeezenet1_1", "convnext_tiny", "vgg11"])
def test_fine_tuning_options_find_the_head_of_other_families(arch: str) -> None:
    """The head learns alone in epoch 1 and at the full rate; the pretrained layers join at a tenth."""
    cfg = replace(FINE_TUNING_CFG, epochs=2, precision="fp32", image_scale=1.0)
    model = build_model(arch, None, CLASSES, seed=1)
    head = f"{head_name(model)}."
    before = snapshot(model)
    after: dict[int, dict[str, torch.Tensor]] = {}
    groups: list[tuple[float, int]] = []
    hook = register_optimizer_step_pre_hook(
        lambda opt, *_: groups.extend((g["lr_scale"], len(g["params"])) for g in opt.param_groups)
    )
    try:
        fit(cfg, tiny_data(16), model, on_epoch=lambda m: after.setdefault(int(m["epoch"]), snapshot(model)))
    finally:
        hook.remove()
    head_params = sum(1 for n, _ in model.named_parameters() if n.startswith(head))
    assert groups[:2] == [(1.0, head_params), (0.1, len(list(model.parameters())) - head_params)]
    weights = [k for k in before if k.endswith("weight")]
    assert all(torch.equal(after[1][k], before[k]) != k.startswith(head) for k in weights)
    assert any(not torch.equal(after[2][k], after[1][k]) for k in weights if not k.startswith(head))


def test_head_mlp_has_the_configured_shape_and_survives_saving(tmp_path) -> None:
    model = build_model("resnet18", None, 5, head="mlp", hidden=64, dropout=0.25)
    assert isinstance(model.fc, Head)
    first, relu, drop, last = model.fc
    assert (first.in_features, first.out_features, last.out_features) == (512, 64, 5)
    assert isinstance(relu, nn.ReLU) and drop.p == 0.25
    assert head_name(model) == "fc"
    path = tmp_path / "best.pt"
    save_trained(model, path, arch="resnet18", classes=list("abcde"), head="mlp", hidden=64, dropout=0.25)
    loaded, _ = load_trained(path)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


@pytest.mark.parametrize(("arch", "head"), [("resnet152", "fc"), ("vgg11", "classifier.6")])
def test_mlp_head_and_frozen_backbone_on_the_other_tested_models(arch: str, head: str) -> None:
    model = build_model(arch, None, 5, head="mlp", hidden=32, dropout=0.0)
    assert head_name(model) == head
    frozen = freeze(model, "backbone")
    assert head not in frozen
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{head}.0.weight", f"{head}.0.bias", f"{head}.3.weight", f"{head}.3.bias"}
    train_mode(model, frozen)
    assert model.get_submodule(head).training
    backbone = [m for n, m in model.named_modules() if not n.startswith(head)]
    assert not any(m.training for m in backbone if isinstance(m, nn.BatchNorm2d | nn.Dropout))


def test_linear_head_with_dropout() -> None:
    model = build_model("resnet18", None, 4, dropout=0.5)
    assert isinstance(model.fc[0], nn.Dropout) and model.fc[1].out_features == 4
    assert head_name(model) == "fc"


def test_freezing_an_unknown_module_names_the_key() -> None:
    with pytest.raises(ConfigError, match="layer9") as info:
        freeze(build_model("resnet18", None, 3), ["layer1", "layer9"])
    assert info.value.key == "train.freeze"
    assert "layer4" in str(info.value)  # the message lists what there is


# --- schedules -------------------------------------------------------------------------------------


def test_learning_rate_schedules_per_step() -> None:
    base = plain_train(epochs=6, lr=0.1, step_size=2, gamma=0.5, min_lr=0.01, warmup_epochs=2)
    per_epoch, steps = 4, range(24)

    def lrs(scheduler: str) -> list[float]:
        cfg = replace(base, scheduler=scheduler)
        return [cfg.lr * lr_factor(cfg, s, per_epoch) for s in steps]

    assert lrs("none") == pytest.approx([0.1] * 24)
    assert lrs("step") == pytest.approx([0.1] * 8 + [0.05] * 8 + [0.025] * 8)
    assert lrs("cosine") == pytest.approx([0.01 + 0.09 * (1 + math.cos(math.pi * s / 24)) / 2 for s in steps])
    warm = [0.1 * (s + 1) / 8 for s in range(8)]
    cosine = [0.01 + 0.09 * (1 + math.cos(math.pi * s / 16)) / 2 for s in range(16)]
    assert lrs("warmup_cosine") == pytest.approx(warm + cosine)


def test_every_step_of_fit_takes_the_closed_form_rates() -> None:
    """Warm-up and cosine stepped per batch, the pretrained layers at a tenth of the head's rate."""
    cfg = plain_train(
        epochs=3,
        batch_size=8,
        lr=0.1,
        min_lr=0.01,
        scheduler="warmup_cosine",
        warmup_epochs=1,
        backbone_lr_factor=0.1,
        head_epochs=1,
        precision="fp32",
        device="cpu",
    )
    seen: list[list[float]] = []
    hook = register_optimizer_step_pre_hook(lambda opt, *_: seen.append([g["lr"] for g in opt.param_groups]))
    try:
        fit(cfg, tiny_data(20))  # 20 photos in batches of 8: 3 steps per epoch
    finally:
        hook.remove()
    head = [0.1 * (s + 1) / 3 for s in range(3)]
    head += [0.01 + 0.09 * (1 + math.cos(math.pi * s / 6)) / 2 for s in range(6)]
    assert [lr for lr, _ in seen] == pytest.approx(head)
    assert [lr for _, lr in seen] == pytest.approx([lr / 10 for lr in head])


def test_head_epochs_hold_the_backbone_as_loaded() -> None:
    cfg = plain_train(epochs=2, batch_size=8, lr=0.05, head_epochs=1, precision="fp32", device="cpu")
    model = build_model("resnet18", None, CLASSES)
    before = snapshot(model)
    after: dict[int, dict[str, torch.Tensor]] = {}
    fit(cfg, tiny_data(16), model, on_epoch=lambda m: after.setdefault(int(m["epoch"]), snapshot(model)))
    for key, value in before.items():
        # epoch 1: the head alone learns; BatchNorm statistics stay too
        assert torch.equal(after[1][key], value) != key.startswith("fc."), key
    backbone = [k for k in before if not k.startswith("fc.") and k.endswith(("weight", "running_mean"))]
    assert all(not torch.equal(after[2][k], after[1][k]) for k in backbone)  # epoch 2: every layer


@pytest.mark.parametrize(
    ("name", "kind"), [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)]
)
def test_optimizers_take_lr_and_weight_decay(name: str, kind: type) -> None:
    cfg = plain_train(optimizer=name, lr=0.02, momentum=0.8, weight_decay=0.001, backbone_lr_factor=0.25)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 2))
    optimizer = training.make_optimizer(model, cfg)
    head, backbone = optimizer.param_groups
    assert type(optimizer) is kind
    assert (head["lr"], head["weight_decay"], head["lr_scale"]) == (0.02, 0.001, 1.0)
    assert head["params"] == list(model[2].parameters())
    assert backbone["params"] == list(model[0].parameters()) and backbone["lr_scale"] == 0.25
    if name == "sgd":
        assert head["momentum"] == 0.8


def test_label_smoothing_raises_the_loss_of_confident_predictions() -> None:
    cfg = plain_train(epochs=1, batch_size=8, lr=1e-9, precision="fp32", device="cpu", augment=[])
    data = tiny_data(8)
    plain = fit(cfg, data, build_model("resnet18", None, CLASSES))[1].history[0]["train/loss"]
    smooth = fit(replace(cfg, label_smoothing=0.5), data, build_model("resnet18", None, CLASSES))[1]
    assert smooth.history[0]["train/loss"] != pytest.approx(plain)


def test_mixup_and_cutmix_mix_the_batches() -> None:
    assert training.make_mix(TrainConfig(), CLASSES) is None
    cfg = replace(RESUME_CFG, epochs=2, precision="fp32")
    data = tiny_data(16)
    plain = fit(cfg, data, build_model("resnet18", None, CLASSES))[1].history
    for mix in ({"mixup": 0.4}, {"cutmix": 1.0}, {"mixup": 0.4, "cutmix": 1.0}):
        mixed = [fit(replace(cfg, **mix), data, build_model("resnet18", None, CLASSES))[1] for _ in range(2)]
        assert without_timings(mixed[0].history) == without_timings(mixed[1].history), mix  # seeded
        assert mixed[0].history[0]["train/loss"] != pytest.approx(plain[0]["train/loss"]), mix


def test_moving_average_is_what_validation_keeps_and_changes_nothing_else() -> None:
    cfg = replace(RESUME_CFG, epochs=2, precision="fp32")
    data = tiny_data(16)  # 2 steps per epoch
    plain_model, plain = fit(cfg, data, build_model("resnet18", None, CLASSES))
    steps: list[dict[str, torch.Tensor]] = []
    decay = 0.6
    model = build_model("resnet18", None, CLASSES)
    hook = register_optimizer_step_post_hook(lambda *_: steps.append(snapshot(model)))
    try:
        ema_model, ema = fit(replace(cfg, ema_decay=decay), data, model)
    finally:
        hook.remove()
    # training itself is the same as without the average
    assert [h["train/loss"] for h in ema.history] == [h["train/loss"] for h in plain.history]
    for key, value in plain_model.state_dict().items():
        assert torch.equal(ema_model.state_dict()[key], value), key
    assert [h["val/loss"] for h in ema.history] != [h["val/loss"] for h in plain.history]
    # the kept weights are the average, over the steps up to the best epoch, of weights and statistics
    average = dict(steps[0])
    for state in steps[1 : 2 * ema.best_epoch]:
        average = {k: decay * average[k] + (1 - decay) * state[k] for k in state}
    for key, value in ema.best_state.items():
        if value.is_floating_point():  # not BatchNorm's batch counts
            torch.testing.assert_close(value, average[key], rtol=1e-5, atol=1e-6, msg=key)


def test_train_image_scale_crops_smaller_than_evaluation() -> None:
    cfg = plain_train(epochs=1, batch_size=8, image_scale=0.75, precision="fp32", device="cpu")
    model = build_model("resnet18", None, CLASSES)
    sizes: set[tuple[bool, int]] = set()
    model.conv1.register_forward_pre_hook(lambda m, args: sizes.add((m.training, int(args[0].shape[-1]))))
    fit(cfg, tiny_data(16), model)
    assert sizes == {(True, 24), (False, IMAGE_SIZE)}


def test_early_stopping_ends_the_run_and_keeps_the_best() -> None:
    # lr so small nothing changes: val accuracy never improves after epoch 1
    cfg = plain_train(epochs=10, batch_size=8, lr=1e-12, early_stopping=2, precision="fp32", device="cpu")
    _, result = fit(cfg)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert result.best_epoch == 1 and result.finished


# --- checkpoints, resume, determinism --------------------------------------------------------------

RESUME_CFG = plain_train(
    epochs=3,
    batch_size=8,
    optimizer="sgd",
    lr=0.05,
    scheduler="cosine",
    label_smoothing=0.1,
    device="cpu",
    augment=[{"RandomResizedCrop": {"scale": [0.5, 1.0]}}, {"RandomHorizontalFlip": {}}],
)


# every fine-tuning option on; stopped in the head-only first epoch, so resuming changes phase
FINE_TUNING_CFG = replace(
    RESUME_CFG,
    scheduler="warmup_cosine",
    warmup_epochs=1,
    backbone_lr_factor=0.1,
    head_epochs=1,
    ema_decay=0.9,
    mixup=0.2,
    cutmix=1.0,
    image_scale=0.75,  # 24 px crops of the 32 px images
)


@pytest.mark.parametrize(
    ("cfg", "stop"),
    [
        (RESUME_CFG, 2),
        (FINE_TUNING_CFG, 1),
        (replace(RESUME_CFG, class_balance="sampler"), 2),
        (replace(FINE_TUNING_CFG, class_balance="weights"), 1),
    ],
)
def test_killed_run_resumes_to_the_same_result(
    cfg: TrainConfig, stop: int, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tiny_data(20)
    whole_model, whole = fit(
        cfg, data, build_model("resnet18", None, CLASSES, head="mlp", dropout=0.2, hidden=8)
    )

    checkpoint = tmp_path / "checkpoint.pt"
    with pytest.raises(Stop):
        fit(
            cfg,
            data,
            build_model("resnet18", None, CLASSES, head="mlp", dropout=0.2, hidden=8),
            checkpoint=checkpoint,
            key="k",
            on_epoch=stop_after(stop),
        )
    assert torch.load(checkpoint, weights_only=True)["epoch"] == stop

    trained = count_epochs(monkeypatch)
    replayed: list[dict[str, float]] = []
    torch.manual_seed(99)  # whatever the global RNG holds in the new process
    model, resumed = fit(
        cfg,
        data,
        build_model("resnet18", None, CLASSES, head="mlp", dropout=0.2, hidden=8),
        checkpoint=checkpoint,
        key="k",
        on_epoch=replayed.append,
    )
    assert len(trained) == cfg.epochs - stop  # only the epochs after the stop ran again
    assert [m["epoch"] for m in replayed] == [1, 2, 3]  # the logger still sees every epoch
    assert without_timings(resumed.history) == without_timings(whole.history)
    assert resumed.best_epoch == whole.best_epoch
    for key, value in whole_model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    for key, value in whole.best_state.items():
        assert torch.equal(resumed.best_state[key], value), key


def test_finished_run_is_not_trained_again_but_other_params_are(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = tmp_path / "checkpoint.pt"
    cfg = replace(RESUME_CFG, epochs=2)
    _, first = fit(cfg, checkpoint=checkpoint, key="a")
    trained = count_epochs(monkeypatch)
    _, again = fit(cfg, checkpoint=checkpoint, key="a")
    assert trained == [] and again.finished
    assert without_timings(again.history) == without_timings(first.history)
    fit(cfg, checkpoint=checkpoint, key="b")  # another fingerprint: the old checkpoint is not used
    assert len(trained) == 2


@pytest.mark.parametrize(
    "kind", ["text", "empty", "cut_short", "pickle", "torch_pickle", "tensor", "partial"]
)
def test_a_file_that_is_no_checkpoint_is_one_clear_line(tmp_path, kind: str) -> None:
    """Every torch load failure, and a torch file of another shape, is one line naming the file;
    a pickle that would run code is refused without running it."""
    files, marker = hostile_torch_files(tmp_path / "files")
    checkpoint = tmp_path / "checkpoint.pt"
    if kind in files:
        shutil.copyfile(files[kind], checkpoint)
    elif kind == "tensor":
        torch.save(torch.zeros(3), checkpoint)
    else:
        torch.save({"fingerprint": "k", "epoch": 1}, checkpoint)
    with pytest.raises(FlowerpipeError) as info:
        fit(RESUME_CFG, checkpoint=checkpoint, key="k")
    message = str(info.value)
    assert message.startswith(f"{checkpoint}: not a flowerpipe checkpoint (") and "\n" not in message
    assert message.endswith("); delete it to start over") and "()" not in message
    assert not marker.exists()
    expected = {
        "empty": "empty, or cut short",
        "torch_pickle": "it holds code to run (getattr), which is never loaded",
        "tensor": "it holds a Tensor, not a mapping",
        "partial": "a mapping without model, optimizer",
    }
    assert expected.get(kind, "") in message


def test_fingerprint_follows_the_recipe_not_the_device() -> None:
    cfg = TrainConfig()
    assert training.fingerprint(cfg.recipe) == training.fingerprint(
        replace(cfg, device="cpu", precision="fp32", launcher="torchrun --nproc-per-node=2").recipe
    )
    assert training.fingerprint(cfg.recipe) != training.fingerprint(replace(cfg, lr=cfg.lr / 10).recipe)


@pytest.mark.parametrize("precision", ["fp32", "auto"])
def test_same_params_give_identical_runs(precision: str) -> None:
    cfg = replace(RESUME_CFG, epochs=2, precision=precision)
    model_a, a = fit(cfg, model=build_model("resnet18", None, CLASSES, seed=3))
    model_b, b = fit(cfg, model=build_model("resnet18", None, CLASSES, seed=3))
    assert without_timings(a.history) == without_timings(b.history)
    for key, value in model_a.state_dict().items():
        assert torch.equal(model_b.state_dict()[key], value), key
    _, c = fit(replace(cfg, seed=1), model=build_model("resnet18", None, CLASSES, seed=3))
    assert without_timings(c.history) != without_timings(a.history)


# --- frozen backbone: features once ----------------------------------------------------------------


def test_frozen_backbone_without_augmentation_computes_features_once() -> None:
    data = tiny_data(20, n_val=7)
    cfg = plain_train(
        epochs=4, batch_size=8, lr=0.05, freeze="backbone", precision="fp32", device="cpu", augment=[]
    )
    model = build_model("resnet18", None, CLASSES, head="mlp", hidden=16, seed=5)
    images_seen = []
    model.layer1.register_forward_hook(lambda _m, args, _out: images_seen.append(len(args[0])))
    _, cached = fit(cfg, data, model)
    # each train and val image went through the backbone once, and one more checked the head is last
    assert sum(images_seen) == 20 + 7 + 1

    # the same training on the whole frozen model (every backbone module named) gives the same head
    names = [n for n, _ in model.named_children() if n != "fc"]
    slow_model = build_model("resnet18", None, CLASSES, head="mlp", hidden=16, seed=5)
    _, slow = fit(replace(cfg, freeze=names), data, slow_model)
    assert sum(images_seen) == 28  # the hook is on the first model only
    for h_cached, h_slow in zip(cached.history, slow.history, strict=True):
        assert h_cached["val/accuracy"] == h_slow["val/accuracy"]
        assert h_cached["train/loss"] == pytest.approx(h_slow["train/loss"], rel=1e-4)
    for key, value in slow_model.fc.state_dict().items():
        torch.testing.assert_close(model.fc.state_dict()[key], value, rtol=1e-4, atol=1e-5)


def test_a_head_of_several_layers_trains_on_features_once(monkeypatch) -> None:
    """An mlp head, or dropout before the linear one: torch.fx inlines such a head when it folds the
    model, and the features are still those the head takes in."""
    computed = []
    compute = training.FeatureFeed.compute.__func__

    def recorded(cls, *args):
        feed = compute(cls, *args)
        computed.append(feed is not None)
        return feed

    monkeypatch.setattr(training.FeatureFeed, "compute", classmethod(recorded))
    cfg = TrainConfig(epochs=2, batch_size=8, freeze="backbone", precision="fp32", device="cpu", augment=[])
    for head, dropout in (("mlp", 0.0), ("linear", 0.2)):
        model = build_model("resnet18", None, CLASSES, head=head, hidden=16, dropout=dropout, seed=5)
        _, result = fit(cfg, tiny_data(16, n_val=6), model)
        assert len(result.history) == 2
    assert computed == [True, True]


def test_frozen_backbone_with_augmentation_trains_through_the_model(monkeypatch) -> None:
    cfg = plain_train(epochs=2, batch_size=8, lr=0.05, freeze="backbone", precision="fp32", device="cpu")
    model = build_model("resnet18", None, CLASSES)
    images_seen, folded = [], loop.folded_where_fixed

    def counted(net: nn.Module, fixed: list[str]) -> nn.Module:  # the steps run the backbone folded
        view = folded(net, fixed)
        view.layer1.register_forward_hook(lambda _m, args, _out: images_seen.append(len(args[0])))
        return view

    monkeypatch.setattr(loop, "folded_where_fixed", counted)
    fit(cfg, tiny_data(16, n_val=6), model)
    assert sum(images_seen) == 2 * 16  # augmented crops change every epoch: no feature cache


# --- precision -------------------------------------------------------------------------------------


def test_precision_choice() -> None:
    assert autocast_dtype(CPU, "fp32") is None
    assert autocast_dtype(CPU, "bf16") == torch.bfloat16
    caps = torch.cpu.get_capabilities()
    native = caps.get("avx512_bf16") or caps.get("amx_bf16")
    assert autocast_dtype(CPU, "auto") == (torch.bfloat16 if native else None)
    with pytest.raises(ConfigError) as info:
        autocast_dtype(CPU, "fp16")
    assert info.value.key == "train.precision"


def test_bf16_training_on_the_cpu_learns() -> None:
    cfg = plain_train(epochs=4, batch_size=8, lr=0.01, precision="bf16", device="cpu", augment=[])
    _, result = fit(cfg, tiny_data(24, n_val=9))
    assert all(math.isfinite(h["train/loss"]) for h in result.history)
    # it learns the train images (val, in eval mode, needs more steps for BatchNorm's running stats)
    assert min(h["train/loss"] for h in result.history) < result.history[0]["train/loss"] / 2
    assert max(h["train/accuracy"] for h in result.history) > 0.8


# --- where the train images come from ---------------------------------------------------------------


class CountedRows(np.ndarray):
    """A uint8 image array that records each read of rows from it, in a shared list."""

    def __getitem__(self, key):
        if isinstance(key, np.ndarray) and key.ndim == 1 and key.dtype.kind == "i":
            READ.append(key.tolist())
        return np.asarray(self)[key]


READ: list[list[int]] = []


@pytest.mark.parametrize("readers", [0, 2])
def test_streamed_batches_train_what_the_split_held_whole_does(
    readers: int, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """train.loader: stream reads each batch from the images as the epoch goes (in reader processes
    on a GPU: here 2 on the CPU); the same seed gives the same batches, augmentation and MixUp
    draws, and so the same weights, as the split copied whole (train.loader: device)."""
    monkeypatch.setattr(feeds, "_reader_processes", lambda device: readers)
    caplog.set_level(logging.INFO, logger="flowerpipe")
    images, labels, train_idx, val_idx = tiny_data(20)
    cfg = replace(RESUME_CFG, epochs=2, mixup=0.4, loader="device")
    whole_model, whole = fit(
        cfg, (images, labels, train_idx, val_idx), build_model("resnet18", None, CLASSES, seed=3)
    )
    assert "held on cpu (train.loader: device)" in caplog.text
    streamed_model, streamed = fit(
        replace(cfg, loader="stream"),
        (images, labels, train_idx, val_idx),
        build_model("resnet18", None, CLASSES, seed=3),
    )
    assert "read a batch at a time" in caplog.text
    assert without_timings(streamed.history) == without_timings(whole.history)
    for key, value in whole_model.state_dict().items():
        assert torch.equal(streamed_model.state_dict()[key], value), key


@pytest.mark.parametrize(("precision", "hint"), [("fp32", ""), ("bf16", ", or try train.precision: fp32 .*")])
def test_a_diverged_run_stops_and_says_so(precision: str, hint: str) -> None:
    diverged = rf"^epoch 1: the weights of \S+ are not finite .*: training diverged; lower train.lr{hint}$"
    with pytest.raises(TrainingError, match=diverged):
        fit(plain_train(epochs=1, batch_size=8, lr=1e6, augment=[], precision=precision))


def test_the_cpu_streams_unless_told(caplog: pytest.LogCaptureFixture) -> None:
    READ.clear()
    caplog.set_level(logging.INFO, logger="flowerpipe")
    images, labels, train_idx, val_idx = tiny_data(16)
    fit(replace(RESUME_CFG, epochs=1), (images.view(CountedRows), labels, train_idx, val_idx))
    assert "read a batch at a time by the training process (train.loader: auto, on the CPU)" in caplog.text
    assert max(len(rows) for rows in READ) == 8  # a batch at a time, each photo once
    assert sorted(itertools.chain.from_iterable(READ)) == sorted([*train_idx.tolist(), *val_idx.tolist()])
