"""The experiment presets (presets/*.yaml) and `flowerpipe preset`: the params each sets over
params.yaml, checked against the config, and the `dvc exp run` command it makes."""

from __future__ import annotations

import copy
import itertools
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import REPO

from flowerpipe.config import Config, config_from_dict
from flowerpipe.core.errors import ConfigError
from flowerpipe.model.build import build_model, freeze
from flowerpipe.model.checks import check_trainable
from flowerpipe.presets import leaves, preset_path, read_preset, set_flags

PRESETS = sorted((REPO / "presets").glob("*.yaml"))
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())


def preset_command(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    code = f"from flowerpipe.cli import main; main({['preset', *args]!r})"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd)


def applied(argv: list[str]) -> Config:
    """params.yaml with every `-S key=value` of a `dvc exp run` command applied in order (values
    are YAML, as DVC reads them)."""
    params: dict[str, Any] = copy.deepcopy(PARAMS)
    for flag, assignment in itertools.pairwise(argv):
        if flag == "-S":
            key, _, value = assignment.partition("=")
            *parents, leaf = key.split(".")
            section = params
            for name in parents:
                section = section[name]
            assert leaf in section, f"{key} is not a key of params.yaml"
            section[leaf] = yaml.safe_load(value)
    return check_trainable(config_from_dict(params))


def preset_config(name: str, *options: str) -> Config:
    """The config `flowerpipe preset --print NAME OPTIONS` would run."""
    done = preset_command("--print", name, *options)
    assert done.returncode == 0, done.stderr
    argv = shlex.split(done.stdout)
    assert argv[:3] == ["dvc", "exp", "run"] and "-n" not in argv  # DVC names each run: no conflict
    return applied(argv)


def test_there_are_the_reference_recipes_and_the_cpu_fast_path() -> None:
    stems = [p.stem for p in PRESETS]
    assert stems == ["mobilenet_v2-cpu-fast", "resnet152-reference", "resnet18-reference"]


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_preset_holds_only_keys_that_differ_from_params(preset: Path) -> None:
    params = leaves(PARAMS)
    for key, value in leaves(read_preset(preset, PARAMS)).items():
        assert params[key] != value, f"{preset.name}: {key} is params.yaml's value"


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_options_after_the_preset_win(preset: Path) -> None:
    cfg = preset_config(preset.stem, "--queue", "-S", "train.epochs=5", "-S", "train.seed=1")
    assert (cfg.train.epochs, cfg.train.seed, cfg.model.weights) == (5, 1, "DEFAULT")
    assert preset_command("--print", preset.stem, "--queue").stdout.split()[-1] == "--queue"


def test_a_bad_preset_stops_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "typo.yaml"
    bad.write_text("train:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: train.lrr: not a key of params.yaml"):
        read_preset(bad, PARAMS)
    done = preset_command("no-such-preset")
    assert done.returncode == 1 and done.stderr.strip().count("\n") == 0
    assert "presets/no-such-preset.yaml: no such preset (presets here: mobilenet_v2-cpu-fast," in done.stderr
    assert preset_path(str(bad)) == bad  # a file by its path


def test_values_pass_to_dvc_as_yaml() -> None:
    flags = set_flags({"train": {"freeze": ["layer1", "layer2"], "lr": 0.0001, "mixup": 0.0}})
    assert flags == ["-S", "train.freeze=[layer1, layer2]", "-S", "train.lr=0.0001", "-S", "train.mixup=0.0"]
    augment = [{"RandomResizedCrop": {"scale": [0.5, 1.0]}}, {"RandomHorizontalFlip": {}}]
    [_, flag] = set_flags({"train": {"augment": augment}})
    assert yaml.safe_load(flag.partition("=")[2]) == augment


@pytest.mark.parametrize("name", ["resnet18-reference", "resnet152-reference"])
def test_reference_recipe_takes_no_fine_tuning_default(name: str) -> None:
    cfg = preset_config(name)
    # params.yaml's fine-tuning defaults do not reach the reference recipes
    fine_tuning = ("backbone_lr_factor", "head_epochs", "ema_decay", "mixup", "cutmix", "image_scale")
    assert [getattr(cfg.train, k) for k in fine_tuning] == [1.0, 0, 0.0, 0.0, 0.0, 1.0]
    assert cfg.train.label_smoothing == 0.0


def test_resnet18_reference_recipe() -> None:
    cfg = preset_config("resnet18-reference")
    assert (cfg.model.arch, cfg.model.head, cfg.train.freeze) == ("resnet18", "linear", "none")
    assert (cfg.train.optimizer, cfg.train.lr, cfg.train.momentum) == ("sgd", 0.001, 0.9)
    assert (cfg.train.batch_size, cfg.train.epochs, cfg.train.scheduler) == (32, 50, "none")
    assert len(cfg.train.augment) == 5


def test_resnet152_reference_recipe() -> None:
    cfg = preset_config("resnet152-reference")
    assert (cfg.model.arch, cfg.model.head, cfg.model.hidden, cfg.model.dropout) == (
        "resnet152",
        "mlp",
        512,
        0.3,
    )
    assert cfg.train.freeze == ["layer1", "layer2"]
    assert (cfg.train.optimizer, cfg.train.scheduler, cfg.train.lr) == ("adam", "warmup_cosine", 0.0001)
    assert cfg.train.warmup_epochs == 3
    assert "RandomErasing" in [next(iter(step)) for step in cfg.train.augment]


def test_cpu_fast_path_recipe() -> None:
    """The measured recipe: the first seven blocks frozen (real modules of MobileNetV2), 176 px
    training crops for evaluation at 224, 6 epochs of which the first trains the head, in fp32."""
    cfg = preset_config("mobilenet_v2-cpu-fast")
    assert (cfg.model.arch, cfg.data.image_size, cfg.train.train_size(cfg.data.image_size)) == (
        "mobilenet_v2",
        224,
        176,
    )
    assert cfg.train.freeze == [f"features.{i}" for i in range(7)]
    assert (cfg.train.epochs, cfg.train.head_epochs, cfg.train.precision) == (6, 1, "fp32")
    model = build_model("mobilenet_v2", None, 5)
    assert freeze(model, cfg.train.freeze) == cfg.train.freeze
    assert not any(p.requires_grad for p in model.features[:7].parameters())
    assert all(p.requires_grad for p in model.features[7:].parameters())
