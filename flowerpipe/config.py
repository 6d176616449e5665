"""One typed, validated configuration built from params.yaml; every error names its key.

Each field's default is the value params.yaml ships (tests/pipeline/test_config.py checks every key), so a
key left out of params.yaml gives the shipped recipe, and code that builds a config without the
file (an installed package, the benchmarks) gets that recipe too."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from flowerpipe.core.errors import ConfigError
from flowerpipe.runtime.metadata import REJECT_SCORES

FLOWER_PHOTOS_URL = "https://storage.googleapis.com/download.tensorflow.org/example_images/flower_photos.tgz"
DEVICES = ("auto", "cpu", "cuda", "mps")
LOADERS = ("auto", "device", "stream")
CLASS_BALANCES = ("none", "weights", "sampler")  # docs: Training, unequal classes
HEADS = ("linear", "mlp")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("none", "step", "cosine", "warmup_cosine")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
QUANTIZATIONS = ("int8",)
# The int8 search's calibrations: ONNX Runtime's methods on export.calibration_images photos, and
# MinMax on 4x as many (docs: int8).
CALIBRATIONS = ("MinMax", "Percentile", "Entropy", "MinMax-4x")
LABEL_CONFLICTS = ("keep", "drop")
MAX_NEAR_DUPLICATES = 16  # of the difference hash's 64 bits: beyond, unrelated photos match


def _default_augment() -> list[dict[str, dict[str, Any]]]:
    return [{"RandomResizedCrop": {"scale": [0.5, 1.0]}}, {"RandomHorizontalFlip": {}}]


@dataclass(frozen=True)
class DataConfig:
    source: str = FLOWER_PHOTOS_URL
    sha256: str | None = None
    image_size: int = 256
    crop_ratio: float = 0.875
    label_conflicts: str = "keep"
    exclude: str = "data/exclude.txt"

    def __post_init__(self) -> None:
        _check(bool(self.source.strip()), "data.source", "must name a URL, an archive or a folder")
        _check(bool(self.exclude.strip()), "data.exclude", "must name a file (an empty one excludes nothing)")
        if self.sha256 is not None:
            ok = len(self.sha256) == 64 and all(c in "0123456789abcdef" for c in self.sha256.lower())
            _check(ok, "data.sha256", "must be 64 hex digits or null")
        _check(16 <= self.image_size <= 1024, "data.image_size", "must be between 16 and 1024")
        _check(0.5 <= self.crop_ratio <= 1.0, "data.crop_ratio", "must be between 0.5 and 1.0")
        _check(
            self.label_conflicts in LABEL_CONFLICTS,
            "data.label_conflicts",
            f"must be one of {LABEL_CONFLICTS}",
        )


@dataclass(frozen=True)
class SplitConfig:
    val: float = 0.15
    test: float = 0.15
    seed: int = 42
    near_duplicates: int | None = 4

    def __post_init__(self) -> None:
        ok = self.near_duplicates is None or 0 <= self.near_duplicates <= MAX_NEAR_DUPLICATES
        _check(ok, "split.near_duplicates", f"must be between 0 and {MAX_NEAR_DUPLICATES} bits, or null")
        _check(0 < self.val < 1, "split.val", "must be between 0 and 1")
        _check(0 < self.test < 1, "split.test", "must be between 0 and 1")
        total = self.val + self.test
        _check(total < 1, "split", f"val + test must be < 1 to leave training images (got {total:g})")


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "resnet18"
    weights: str | None = "DEFAULT"
    head: str = "linear"
    hidden: int = 512
    dropout: float = 0.0

    def __post_init__(self) -> None:
        # model.arch is checked against torchvision's models where torch is: model.checks
        _check(self.weights is None or bool(self.weights.strip()), "model.weights", "must not be empty")
        _check(self.head in HEADS, "model.head", f"must be one of {', '.join(HEADS)}")
        _check(self.hidden >= 1, "model.hidden", "must be >= 1")
        _check(0 <= self.dropout < 1, "model.dropout", "must be in [0, 1)")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    scheduler: str = "warmup_cosine"
    warmup_epochs: int = 1
    step_size: int = 10
    gamma: float = 0.1
    min_lr: float = 0.0
    label_smoothing: float = 0.1
    early_stopping: int = 0
    backbone_lr_factor: float = 0.3
    head_epochs: int = 1
    ema_decay: float = 0.99
    mixup: float = 0.0
    cutmix: float = 0.0
    image_scale: float = 0.875
    freeze: str | list[str] = "none"
    precision: str = "auto"
    device: str = "auto"
    launcher: str = "python"
    loader: str = "auto"
    seed: int = 0
    class_balance: str = "none"
    augment: list[dict[str, dict[str, Any]]] = field(default_factory=_default_augment)

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "train.epochs", "must be >= 1")
        _check(self.batch_size >= 1, "train.batch_size", "must be >= 1")
        _check(self.optimizer in OPTIMIZERS, "train.optimizer", f"must be one of {', '.join(OPTIMIZERS)}")
        _check(self.lr > 0, "train.lr", f"must be > 0 (got {self.lr:g})")
        _check(0 <= self.momentum < 1, "train.momentum", "must be in [0, 1)")
        _check(self.weight_decay >= 0, "train.weight_decay", "must be >= 0")
        _check(self.scheduler in SCHEDULERS, "train.scheduler", f"must be one of {', '.join(SCHEDULERS)}")
        _check(self.warmup_epochs >= 0, "train.warmup_epochs", "must be >= 0")
        if self.scheduler == "warmup_cosine":
            _check(self.warmup_epochs >= 1, "train.warmup_epochs", "must be >= 1 for warmup_cosine")
        _check(self.step_size >= 1, "train.step_size", "must be >= 1")
        _check(0 < self.gamma <= 1, "train.gamma", "must be in (0, 1]")
        _check(0 <= self.min_lr < self.lr, "train.min_lr", "must be in [0, train.lr)")
        _check(0 <= self.label_smoothing < 1, "train.label_smoothing", "must be in [0, 1)")
        _check(self.early_stopping >= 0, "train.early_stopping", "must be >= 0 (0 turns it off)")
        _check(0 < self.backbone_lr_factor <= 1, "train.backbone_lr_factor", "must be in (0, 1]")
        _check(self.head_epochs >= 0, "train.head_epochs", "must be >= 0")
        _check(0 <= self.ema_decay < 1, "train.ema_decay", "must be in [0, 1) (0 turns it off)")
        _check(self.mixup >= 0, "train.mixup", "must be >= 0 (0 turns it off)")
        _check(self.cutmix >= 0, "train.cutmix", "must be >= 0 (0 turns it off)")
        _check(0.25 <= self.image_scale <= 1, "train.image_scale", "must be between 0.25 and 1")
        if isinstance(self.freeze, str):
            ok = self.freeze in ("none", "backbone")
            _check(ok, "train.freeze", "must be none, backbone, or a list of module names")
        else:
            ok = bool(self.freeze) and all(isinstance(n, str) and n for n in self.freeze)
            _check(ok, "train.freeze", "a list must name at least one module, e.g. [layer1, layer2]")
        _check(self.precision in PRECISIONS, "train.precision", f"must be one of {', '.join(PRECISIONS)}")
        _check(self.device in DEVICES, "train.device", f"must be one of {', '.join(DEVICES)}")
        _check(self.loader in LOADERS, "train.loader", f"must be one of {', '.join(LOADERS)}")
        balances = ", ".join(CLASS_BALANCES)
        _check(self.class_balance in CLASS_BALANCES, "train.class_balance", f"must be one of {balances}")
        ok = self.launcher == "python" or self.launcher.split()[:1] == ["torchrun"]
        _check(ok, "train.launcher", "must be python or a torchrun command, e.g. torchrun --nproc-per-node=2")
        for i, step in enumerate(self.augment):
            key = f"train.augment[{i}]"
            _check(isinstance(step, dict) and len(step) == 1, key, "must be {TransformName: {args}}")
            ((name, args),) = step.items()
            _check(isinstance(args, dict | type(None)), f"{key}.{name}", "arguments must be a mapping")

    def train_size(self, image_size: int) -> int:
        """The side of the augmented training crops: `image_scale` of the evaluation size (FixRes)."""
        return round(image_size * self.image_scale)

    @property
    def recipe(self) -> dict[str, Any]:
        """Every setting that changes what is learnt; `device`, `precision`, `launcher` and
        `loader` only say how fast."""
        how = ("device", "precision", "launcher", "loader")
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in how}


@dataclass(frozen=True)
class EvaluateConfig:
    batch_size: int = 64
    keep_known: float | None = 0.95
    reject_score: str = "knn"

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, "evaluate.batch_size", "must be >= 1")
        rules = ", ".join(REJECT_SCORES)
        _check(self.reject_score in REJECT_SCORES, "evaluate.reject_score", f"must be one of {rules}")
        keep = self.keep_known
        _check(keep is None or 0 < keep <= 1, "evaluate.keep_known", "must be null or a number in (0, 1]")


@dataclass(frozen=True)
class AuditConfig:
    folds: int = 5

    def __post_init__(self) -> None:
        _check(2 <= self.folds <= 20, "audit.folds", "must be between 2 and 20")


@dataclass(frozen=True)
class PlotConfig:
    dpi: int = 120
    suspects: int = 30

    def __post_init__(self) -> None:
        _check(50 <= self.dpi <= 600, "plot.dpi", "must be between 50 and 600")
        _check(self.suspects >= 0, "plot.suspects", "must be >= 0 (0: no photos in the gallery)")


@dataclass(frozen=True)
class ExportConfig:
    opset: int = 18
    rtol: float = 1e-3
    atol: float = 1e-5
    min_top1_agreement: float = 1.0
    quantize: list[str] = field(default_factory=lambda: ["int8"])
    max_accuracy_drop: float = 1.0
    calibration_images: int = 256
    calibrations: list[str] = field(default_factory=lambda: ["MinMax", "Percentile"])

    def __post_init__(self) -> None:
        _check(self.opset >= 17, "export.opset", "must be >= 17")
        _check(self.rtol >= 0, "export.rtol", "must be >= 0")
        _check(self.atol >= 0, "export.atol", "must be >= 0")
        _check(0 <= self.min_top1_agreement <= 1, "export.min_top1_agreement", "must be in [0, 1]")
        for kind in self.quantize:
            _check(kind in QUANTIZATIONS, "export.quantize", f"{kind!r} is not one of {list(QUANTIZATIONS)}")
        _check(len(set(self.quantize)) == len(self.quantize), "export.quantize", "lists a kind twice")
        _check(self.max_accuracy_drop >= 0, "export.max_accuracy_drop", "must be >= 0 (percentage points)")
        _check(self.calibration_images >= 1, "export.calibration_images", "must be >= 1")
        _check(bool(self.calibrations), "export.calibrations", f"lists none of {list(CALIBRATIONS)}")
        for name in self.calibrations:
            _check(
                name in CALIBRATIONS, "export.calibrations", f"{name!r} is not one of {list(CALIBRATIONS)}"
            )
        _check(
            len(set(self.calibrations)) == len(self.calibrations), "export.calibrations", "lists one twice"
        )


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    plot: PlotConfig = field(default_factory=PlotConfig)
    export: ExportConfig = field(default_factory=ExportConfig)


def load_config(path: str | Path = "params.yaml") -> Config:
    """Read and validate params.yaml; a bad or unknown key raises ConfigError naming it."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("", "file not found", file=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("", f"cannot be read ({exc})", file=str(path)) from None
    except yaml.YAMLError as exc:
        raise ConfigError("", f"not valid YAML: {exc}".replace("\n", " "), file=str(path)) from None
    return config_from_dict(raw or {})


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Build the Config from a params mapping (missing keys take their defaults)."""
    return _build(Config, raw, "")


def _check(ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise ConfigError(key, problem)


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(prefix.rstrip(".") or "params", f"must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}", f"unknown key (known: {', '.join(sorted(names))})")
    values = {}
    for name, value in raw.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, {} if value is None else value, f"{prefix}{name}.")
        else:
            values[name] = _coerce(value, hint, f"{prefix}{name}")
    return cls(**values)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        kinds = [t for t in options if t is not type(None)]
        for kind in kinds[:-1]:
            try:
                return _coerce(value, kind, key)
            except ConfigError:
                pass
        hint = kinds[-1]
        origin = typing.get_origin(hint)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(key, f"must be a list, got {value!r}")
        return value
    if hint is float and isinstance(value, int | float | str) and not isinstance(value, bool):
        try:  # PyYAML reads `1e-5` (no dot) as a string
            number = float(value)
        except ValueError:
            number = None
        if number is not None and not math.isfinite(number):
            raise ConfigError(key, f"must be a finite number, got {value!r}")
        if number is not None:
            return number
    if hint in (int, str, bool) and type(value) is hint:
        return value
    raise ConfigError(key, f"must be {hint.__name__}, got {value!r}")
