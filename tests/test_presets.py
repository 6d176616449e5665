"""The experiment presets: what each passes to `dvc exp run`, checked against the config."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from flowerpipe.config import Config, config_from_dict
from flowerpipe.model.build import build_model, freeze

PRESETS = sorted((REPO / "presets").glob("*.sh"))


def preset_argv(preset: Path, tmp_path: Path, *extra: str) -> list[str]:
    """The arguments the preset hands to `dvc` (a stand-in `dvc` on PATH records them)."""
    fake = tmp_path / "bin" / "dvc"
    fake.parent.mkdir()
    fake.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["sh", str(preset), *extra], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def apply_set_params(argv: list[str]) -> Config:
    """params.yaml with every `-S key=value` applied in order (values are YAML, as DVC reads them)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for flag, assignment in itertools.pairwise(argv):
        if flag == "-S":
            key, _, value = assignment.partition("=")
            *parents, leaf = key.split(".")
            section = params
            for name in parents:
                section = section[name]
            assert leaf in section, f"{key} is not a key of params.yaml"
            section[leaf] = yaml.safe_load(value)
    return config_from_dict(params)


REFERENCES = [p for p in PRESETS if p.stem.endswith("-reference")]


def test_there_are_the_reference_recipes_and_the_cpu_fast_path() -> None:
    stems = [p.stem for p in PRESETS]
    assert stems == ["mobilenet_v2-cpu-fast", "resnet152-reference", "resnet18-reference"]


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_preset_is_a_named_experiment_with_valid_params(preset: Path, tmp_path: Path) -> None:
    argv = preset_argv(preset, tmp_path, "--queue", "-S", "train.epochs=5")
    assert argv[:4] == ["exp", "run", "-n", preset.stem]
    assert argv[-3:] == ["--queue", "-S", "train.epochs=5"]  # the caller's options come last, and win
    cfg = apply_set_params(argv)
    assert cfg.train.epochs == 5
    assert cfg.model.weights == "DEFAULT"


@pytest.mark.parametrize("preset", REFERENCES, ids=lambda p: p.stem)
def test_reference_recipe_takes_no_fine_tuning_default(preset: Path, tmp_path: Path) -> None:
    cfg = apply_set_params(preset_argv(preset, tmp_path))
    # params.yaml's fine-tuning defaults do not leak into the reference recipes
    fine_tuning = ("backbone_lr_factor", "head_epochs", "ema_decay", "mixup", "cutmix", "image_scale")
    assert [getattr(cfg.train, k) for k in fine_tuning] == [1.0, 0, 0.0, 0.0, 0.0, 1.0]


def test_resnet18_reference_recipe(tmp_path: Path) -> None:
    cfg = apply_set_params(preset_argv(REPO / "presets/resnet18-reference.sh", tmp_path))
    assert (cfg.model.arch, cfg.model.head, cfg.train.freeze) == ("resnet18", "linear", "none")
    assert (cfg.train.optimizer, cfg.train.lr, cfg.train.momentum) == ("sgd", 0.001, 0.9)
    assert (cfg.train.batch_size, cfg.train.epochs, cfg.train.scheduler) == (32, 50, "none")
    assert len(cfg.train.augment) == 5


def test_resnet152_reference_recipe(tmp_path: Path) -> None:
    cfg = apply_set_params(preset_argv(REPO / "presets/resnet152-reference.sh", tmp_path))
    assert (cfg.model.arch, cfg.model.head) == ("resnet152", "mlp")
    assert cfg.train.freeze == ["layer1", "layer2"]
    assert (cfg.train.optimizer, cfg.train.scheduler) == ("adam", "warmup_cosine")
    assert cfg.train.warmup_epochs >= 1
    assert "RandomErasing" in [next(iter(step)) for step in cfg.train.augment]


def test_cpu_fast_path_recipe(tmp_path: Path) -> None:
    """The measured recipe: the first seven blocks frozen (real modules of MobileNetV2), 176 px
    training crops for evaluation at 224, 6 epochs of which the first trains the head, in fp32."""
    cfg = apply_set_params(preset_argv(REPO / "presets/mobilenet_v2-cpu-fast.sh", tmp_path))
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
