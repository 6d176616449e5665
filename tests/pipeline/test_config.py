"""params.yaml -> Config: defaults (the values params.yaml ships), coercion, and one ConfigError
naming the key for each bad value."""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torchvision.transforms import v2

from flowerpipe.config import FLOWER_PHOTOS_URL, Config, config_from_dict, load_config
from flowerpipe.core.errors import ConfigError
from flowerpipe.model.checks import check_trainable
from flowerpipe.model.transforms import augment_batch, build_augment
from flowerpipe.runtime.preprocess import resize_size

REPO = Path(__file__).resolve().parents[2]


def test_empty_mapping_gives_defaults() -> None:
    cfg = config_from_dict({})
    assert cfg == Config()
    assert cfg.data.source == FLOWER_PHOTOS_URL
    assert cfg.data.sha256 is None
    assert cfg.model.arch == "resnet18"
    assert cfg.model.weights == "DEFAULT"
    assert cfg.train.epochs == 10
    assert cfg.train.lr == pytest.approx(0.01)
    assert cfg.train.device == "auto"
    assert cfg.split.val + cfg.split.test < 1
    assert [next(iter(step)) for step in cfg.train.augment] == ["RandomResizedCrop", "RandomHorizontalFlip"]


def test_empty_sections_take_defaults() -> None:
    assert config_from_dict({"data": None, "train": {}}) == Config()


def test_repository_params_file_loads() -> None:
    cfg = load_config(REPO / "params.yaml")
    assert isinstance(cfg, Config)
    assert cfg.data.image_size >= 16


def test_values_are_taken_and_coerced() -> None:
    cfg = config_from_dict(
        {
            "data": {"source": "/photos", "image_size": 64, "sha256": "AB" * 32},
            "split": {"val": 0.2, "test": 0.1, "seed": 7},
            "model": {"arch": "vgg11", "weights": None},
            "train": {"epochs": 3, "lr": 1, "device": "cpu", "augment": []},
        }
    )
    assert cfg.data.source == "/photos"
    assert cfg.data.image_size == 64
    assert cfg.split.seed == 7
    assert cfg.model.arch == "vgg11"
    assert cfg.model.weights is None
    assert cfg.train.epochs == 3
    assert cfg.train.lr == 1.0
    assert isinstance(cfg.train.lr, float)
    assert cfg.train.augment == []


@pytest.mark.parametrize("launcher", ["python", "torchrun --standalone --nproc-per-node=2", "torchrun"])
def test_launcher_is_python_or_a_torchrun_command(launcher: str) -> None:
    assert config_from_dict({"train": {"launcher": launcher}}).train.launcher == launcher


@pytest.mark.parametrize("freeze", ["none", "backbone", ["layer1", "layer2"]])
def test_freeze_takes_a_word_or_a_list_of_modules(freeze) -> None:
    assert config_from_dict({"train": {"freeze": freeze}}).train.freeze == freeze


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"model": {"arch": "resnet19"}}, "model.arch"),
        ({"model": {"arch": "not_a_model"}}, "model.arch"),
        ({"model": {"weights": "  "}}, "model.weights"),
        ({"train": {"lr": -0.1}}, "train.lr"),
        ({"train": {"lr": 0}}, "train.lr"),
        ({"train": {"lr": "fast"}}, "train.lr"),
        ({"train": {"lr": True}}, "train.lr"),
        ({"split": {"val": 0.5, "test": 0.5}}, "split"),
        ({"split": {"val": 0.7, "test": 0.4}}, "split"),
        ({"split": {"val": 0}}, "split.val"),
        ({"split": {"test": 1.5}}, "split.test"),
        ({"data": {"source": None}}, "data.source"),
        ({"data": {"source": ""}}, "data.source"),
        ({"data": {"source": "   "}}, "data.source"),
        ({"data": {"sha256": "abc"}}, "data.sha256"),
        ({"data": {"image_size": 8}}, "data.image_size"),
        ({"data": {"crop_ratio": 0.2}}, "data.crop_ratio"),
        ({"train": {"lrr": 0.1}}, "train.lrr"),
        ({"trian": {"lr": 0.1}}, "trian"),
        ({"train": {"epochs": "ten"}}, "train.epochs"),
        ({"train": {"epochs": 2.5}}, "train.epochs"),
        ({"train": {"epochs": 0}}, "train.epochs"),
        ({"train": {"batch_size": True}}, "train.batch_size"),
        ({"train": {"device": "gpu"}}, "train.device"),
        ({"train": {"device": "CUDA"}}, "train.device"),
        ({"train": {"launcher": "mpirun -n 2"}}, "train.launcher"),
        ({"train": {"launcher": "torchrun-2"}}, "train.launcher"),
        ({"train": {"launcher": ""}}, "train.launcher"),
        ({"train": {"momentum": 1.0}}, "train.momentum"),
        ({"train": {"augment": {"RandomHorizontalFlip": {}}}}, "train.augment"),
        ({"train": {"augment": ["RandomHorizontalFlip"]}}, "train.augment[0]"),
        ({"train": {"augment": [{}, {"A": {}, "B": {}}]}}, "train.augment[0]"),
        ({"train": {"augment": [{"RandomHorizontalFlip": 5}]}}, "train.augment[0].RandomHorizontalFlip"),
        ({"train": 5}, "train"),
        ({"model": {"head": "deep"}}, "model.head"),
        ({"model": {"hidden": 0}}, "model.hidden"),
        ({"model": {"dropout": 1.0}}, "model.dropout"),
        ({"train": {"optimizer": "rmsprop"}}, "train.optimizer"),
        ({"train": {"scheduler": "cosine_warmup"}}, "train.scheduler"),
        ({"train": {"scheduler": "warmup_cosine", "warmup_epochs": 0}}, "train.warmup_epochs"),
        ({"train": {"warmup_epochs": -1}}, "train.warmup_epochs"),
        ({"train": {"step_size": 0}}, "train.step_size"),
        ({"train": {"gamma": 0}}, "train.gamma"),
        ({"train": {"min_lr": 0.01}}, "train.min_lr"),
        ({"train": {"label_smoothing": 1.0}}, "train.label_smoothing"),
        ({"train": {"early_stopping": -1}}, "train.early_stopping"),
        ({"train": {"freeze": "layer1"}}, "train.freeze"),
        ({"train": {"freeze": []}}, "train.freeze"),
        ({"train": {"freeze": ["layer1", 2]}}, "train.freeze"),
        ({"train": {"freeze": 3}}, "train.freeze"),
        ({"train": {"precision": "fp8"}}, "train.precision"),
        ({"train": {"backbone_lr_factor": 0}}, "train.backbone_lr_factor"),
        ({"train": {"backbone_lr_factor": 1.5}}, "train.backbone_lr_factor"),
        ({"train": {"backbone_lr_factor": "low"}}, "train.backbone_lr_factor"),
        ({"train": {"head_epochs": -1}}, "train.head_epochs"),
        ({"train": {"ema_decay": 1.0}}, "train.ema_decay"),
        ({"train": {"ema_decay": -0.1}}, "train.ema_decay"),
        ({"train": {"mixup": -0.2}}, "train.mixup"),
        ({"train": {"cutmix": -1}}, "train.cutmix"),
        ({"train": {"cutmix": "on"}}, "train.cutmix"),
        ({"train": {"image_scale": 0.1}}, "train.image_scale"),
        ({"train": {"image_scale": 1.2}}, "train.image_scale"),
        ({"train": {"image_scale": "small"}}, "train.image_scale"),
        ({"evaluate": {"batch_size": 0}}, "evaluate.batch_size"),
        ({"evaluate": {"keep_known": 0}}, "evaluate.keep_known"),
        ({"evaluate": {"keep_known": 1.01}}, "evaluate.keep_known"),
        ({"evaluate": {"keep_known": -0.5}}, "evaluate.keep_known"),
        ({"evaluate": {"keep_known": "most"}}, "evaluate.keep_known"),
        ({"evaluate": {"keep_known": True}}, "evaluate.keep_known"),
        ({"evaluate": {"keep_known": [0.9]}}, "evaluate.keep_known"),
        ({"plot": {"dpi": 10}}, "plot.dpi"),
        ({"export": {"opset": 11}}, "export.opset"),
        ({"export": {"min_top1_agreement": 1.5}}, "export.min_top1_agreement"),
        ({"export": {"quantize": "int8"}}, "export.quantize"),
        ({"export": {"quantize": ["int4"]}}, "export.quantize"),
        ({"export": {"quantize": ["int8", "int8"]}}, "export.quantize"),
        ({"export": {"max_accuracy_drop": -1}}, "export.max_accuracy_drop"),
        ({"export": {"calibration_images": 0}}, "export.calibration_images"),
        ({"export": {"calibrations": []}}, "export.calibrations"),
        ({"export": {"calibrations": ["KL"]}}, "export.calibrations"),
        ({"export": {"calibrations": ["MinMax", "MinMax"]}}, "export.calibrations"),
    ],
)
def test_bad_value_names_its_key(raw: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_trainable(config_from_dict(raw))  # model.arch and train.augment: where torch is
    assert info.value.key == key
    assert f": {key}: " in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("value", "expected"), [(None, None), (1, 1.0), (0.5, 0.5), ("0.99", 0.99)])
def test_keep_known_is_null_or_a_share(value: Any, expected: float | None) -> None:
    assert config_from_dict({"evaluate": {"keep_known": value}}).evaluate.keep_known == expected


def test_unknown_key_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"train\.lrr: unknown key") as info:
        config_from_dict({"train": {"lrr": 0.1}})
    assert "lr" in str(info.value).split("known:")[1]


def test_unknown_arch_suggests_close_names() -> None:
    with pytest.raises(ConfigError, match="resnet18") as info:
        check_trainable(config_from_dict({"model": {"arch": "resnet19"}}))
    assert info.value.key == "model.arch"


@pytest.mark.parametrize("text", ["1e-5", "1E-5", "5e-4"])
def test_exponent_without_dot_is_a_float(tmp_path: Path, text: str) -> None:
    # PyYAML (YAML 1.1) reads 1e-5 as the string "1e-5"
    assert isinstance(yaml.safe_load(f"lr: {text}")["lr"], str)
    path = tmp_path / "params.yaml"
    path.write_text(f"train:\n  lr: {text}\n  weight_decay: {text}\n")
    cfg = load_config(path)
    assert cfg.train.lr == pytest.approx(float(text))
    assert isinstance(cfg.train.lr, float)
    assert cfg.train.weight_decay == pytest.approx(float(text))


def test_quoted_exponent_string_is_a_float() -> None:
    assert config_from_dict({"train": {"lr": "1e-5"}}).train.lr == pytest.approx(1e-5)


def test_load_config_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("data:\n  source: /somewhere/flower_photos\nmodel:\n  weights: null\n")
    cfg = load_config(path)
    assert cfg.data.source == "/somewhere/flower_photos"
    assert cfg.model.weights is None
    assert cfg.train == Config().train


def test_empty_params_file_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("# nothing set\n")
    assert load_config(path) == Config()


def test_bad_value_in_file_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  epochs: ten\n")
    with pytest.raises(ConfigError, match=r"train\.epochs") as info:
        load_config(path)
    assert info.value.key == "train.epochs"


def test_missing_params_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "params.yaml"
    with pytest.raises(ConfigError, match="not found") as info:
        load_config(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("text", ["train: [unclosed\n", "data:\n  source: a\n   bad: indent\n", "a: b: c\n"])
def test_invalid_yaml_names_the_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def _float_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every key of the config tree whose value is, or may be, a float."""
    keys, hints = [], typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            keys += _float_keys(hint, f"{prefix}{f.name}.")
        elif hint is float or float in typing.get_args(hint):
            keys.append(f"{prefix}{f.name}")
    return keys


@pytest.mark.parametrize("key", _float_keys())
@pytest.mark.parametrize("text", [".inf", "-.inf", ".nan", "'inf'", "1e999"])
def test_a_number_that_is_not_finite_is_refused_for_every_key(tmp_path: Path, key: str, text: str) -> None:
    section, name = key.split(".")
    (tmp_path / "params.yaml").write_text(f"{section}:\n  {name}: {text}\n")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "params.yaml")
    assert str(info.value).startswith(f"params.yaml: {key}: must be a finite number, got ")


HOSTILE_ARGUMENTS = (-1, 0, 1e6, [1.0, 0.5], [0.5], "x", [])


def _augment_corpus() -> list[dict[str, Any]]:
    """Each torchvision.transforms.v2 class with no arguments, and with each of its arguments set
    to each of HOSTILE_ARGUMENTS in turn."""
    cases = []
    for name in sorted(dir(v2)):
        cls = getattr(v2, name)
        if not (inspect.isclass(cls) and issubclass(cls, v2.Transform)):
            continue
        cases.append({name: {}})
        for arg in inspect.signature(cls).parameters:
            cases += [{name: {arg: value}} for value in HOSTILE_ARGUMENTS if arg not in ("args", "kwargs")]
    return cases


def test_every_augment_that_params_yaml_accepts_runs_on_training_images() -> None:
    """A generated corpus: every v2 class, every argument, a hostile value. Either the step is
    refused when params.yaml is read, in one line naming it, or training can apply it."""
    size, square = 32, resize_size(32, 0.875)
    accepted, refused = 0, 0
    torch.manual_seed(0)
    for step in _augment_corpus():
        # training crops of `size`, the size build_augment makes below
        params = {"data": {"image_size": size}, "train": {"image_scale": 1.0, "augment": [step]}}
        try:
            check_trainable(config_from_dict(params))
        except ConfigError as exc:
            assert str(exc).startswith("params.yaml: train.augment") and "\n" not in str(exc), step
            refused += 1
            continue
        augment = build_augment([step], size)
        for _ in range(3):  # random steps draw anew each time
            out = augment_batch(torch.randint(0, 256, (4, 3, square, square), dtype=torch.uint8), augment)
            assert out.dtype == torch.uint8 and out.shape == (4, 3, size, size), step
        accepted += 1
    assert accepted > 50 and refused > 200  # both sides of the corpus are exercised


# --- one source of defaults --------------------------------------------------------------------------


def _leaves(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Every key of a nested mapping, dotted (`train.lr`), with its value; a list is one value."""
    leaves = {}
    for name, value in mapping.items():
        if isinstance(value, dict):
            leaves |= _leaves(value, f"{prefix}{name}.")
        else:
            leaves[f"{prefix}{name}"] = value
    return leaves


# every key params.yaml sets, nested sections included
SHIPPED = sorted(_leaves(yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))))


def _keys_of(path: Path) -> dict[str, Any]:
    return _leaves(dataclasses.asdict(load_config(path)))


@pytest.fixture(scope="module")
def shipped() -> dict[str, Any]:
    """Every key of the config loaded from params.yaml (values as the loader reads them: 1e-5 too)."""
    return _keys_of(REPO / "params.yaml")


@pytest.fixture(scope="module")
def left_out(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every key of the config loaded from a params file that sets none."""
    path = tmp_path_factory.mktemp("empty") / "params.yaml"
    path.write_text("# every key left out\n")
    return _keys_of(path)


@pytest.mark.parametrize("key", SHIPPED)
def test_a_key_left_out_of_params_yaml_takes_the_value_it_ships(
    key: str, shipped: dict[str, Any], left_out: dict[str, Any]
) -> None:
    """Deleting a key from params.yaml keeps the recipe: the config has one set of defaults."""
    assert key in left_out, f"{key} is in params.yaml but no field of the config"
    assert left_out[key] == shipped[key], (
        f"{key}: default {left_out[key]!r}, params.yaml ships {shipped[key]!r}"
    )


def test_every_config_field_is_in_params_yaml(left_out: dict[str, Any]) -> None:
    """No hidden key: each setting of the config is one params.yaml shows and a user can change."""
    assert sorted(set(left_out) - set(SHIPPED)) == []
    assert config_from_dict({}) == Config() == load_config(REPO / "params.yaml")


def test_reading_the_config_imports_no_torch_and_the_train_stage_stops_a_typo_first(tmp_path: Path) -> None:
    read = "import sys, flowerpipe.config as c; c.load_config(sys.argv[1]); print('torch' in sys.modules)"
    for key, value in (("model", {"arch": "resnet81"}), ("train", {"augment": [{"RandomCrp": {}}]})):
        (tmp_path / "params.yaml").write_text(yaml.safe_dump({key: value}))
        done = subprocess.run(
            [sys.executable, "-c", read, "params.yaml"], capture_output=True, text=True, cwd=tmp_path
        )
        assert done.stdout.strip() == "False", done.stderr  # read, and no torch imported
        # the train stage checks the model and augmentation before it reads the prepared data (there is
        # none here) or builds a model
        train = subprocess.run(
            [sys.executable, REPO / "stages/train.py"], capture_output=True, text=True, cwd=tmp_path
        )
        assert train.returncode == 1 and train.stderr.count("\n") == 1, train.stderr
        assert train.stderr.startswith(f"error: params.yaml: {key}."), train.stderr
