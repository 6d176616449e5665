"""What each torchvision classifier accepts, known before any model is built: the input sides it
takes, and whether its ONNX file fits in one file. `check_architecture` turns a params combination
that would fail in a later stage into one line naming the key and the reason.

Every rule is proven against all of `torchvision.models.list_models` by benchmarks/accuracy/matrix.py."""

from __future__ import annotations

import torchvision.models as tvm

from flowerpipe.core.errors import ConfigError

SMALLEST_SIDE = 16  # data.image_size's own floor
# Models that need a larger input: their pooling and strided layers leave no pixel under this
# side (measured; torchvision's weights metadata states the same `min_size` for each).
MIN_SIDES = {
    "alexnet": 63,
    "convnext_": 32,
    "densenet": 29,
    "inception_v3": 75,
    "regnet_": 17,  # see BF16_SIDES
    "squeezenet1_0": 21,
    "squeezenet1_1": 17,
    "vgg": 32,
}
# Sides above what the layers need: at 16 px RegNet's last stage runs its strided grouped
# convolution on a 1 x 1 map, whose bf16 backward on the CPU (PyTorch 2.15, AVX512-BF16/AMX) gives
# NaN gradients in some runs; at 17 px that map is 2 x 2. fp32 runs at 16 px.
BF16_SIDES = ("regnet_",)
# Modules whose models are built for one input side (a position embedding, or attention windows
# laid out for it): the side their weights' metadata states.
FIXED_SIDE_MODULES = ("torchvision.models.vision_transformer", "torchvision.models.maxvit")
ONNX_LIMIT_BYTES = 2**31  # protobuf's limit on one serialized message: a single-file model


def input_side(arch: str, weights: str | None) -> tuple[int, bool]:
    """The smallest input side `arch` takes with `weights`, and whether it takes that side only."""
    if tvm.get_model_builder(arch).__module__ in FIXED_SIDE_MODULES:
        enum = tvm.get_model_weights(arch)
        if weights == "DEFAULT":
            chosen = enum.DEFAULT
        elif weights in enum.__members__:
            chosen = enum[weights]
        else:  # random or a file: the builder's own side, the smallest of its weights'
            chosen = min(enum, key=lambda w: w.meta["min_size"][0])
        return int(chosen.meta["min_size"][0]), True
    found = [side for prefix, side in MIN_SIDES.items() if arch.startswith(prefix)]
    return max([SMALLEST_SIDE, *found]), False


def parameters(arch: str) -> int:
    """The parameter count of `arch` with its ImageNet head, from torchvision's weights metadata."""
    return int(tvm.get_model_weights(arch).DEFAULT.meta["num_params"])


def check_architecture(arch: str, weights: str | None, image_size: int, train_crop: int) -> None:
    """Raise ConfigError naming the key if `arch` cannot be trained on `train_crop` px crops,
    evaluated at `image_size` px, or exported to one ONNX file."""
    known = tvm.list_models(module=tvm)  # classification models only
    if arch not in known:
        close = [m for m in known if m.startswith(arch[:4])][:5]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError("model.arch", f"unknown torchvision classification model {arch!r}{hint}")
    count = parameters(arch)
    if 4 * count >= ONNX_LIMIT_BYTES:
        raise ConfigError(
            "model.arch",
            f"{arch} has {count / 1e6:.0f} M parameters ({4 * count / 2**30:.1f} GiB as float32), past "
            "the 2 GiB limit of one ONNX file, and export writes one self-contained file; choose a model "
            f"under {ONNX_LIMIT_BYTES // 4 // 10**6} M parameters",
        )
    side, fixed = input_side(arch, weights)
    if fixed and (image_size, train_crop) != (side, side):
        needs = [f"data.image_size {side}"] if image_size != side else []
        needs += ["train.image_scale 1"] if train_crop != image_size else []
        raise ConfigError(
            "model.arch",
            f"{arch} takes only {side} px inputs: it needs {' and '.join(needs)} "
            f"(got {image_size} px, training crops {train_crop} px)",
        )
    if image_size < side:
        raise ConfigError("model.arch", f"{arch} needs data.image_size >= {side} (got {image_size})")
    if train_crop < side:
        raise ConfigError(
            "model.arch",
            f"{arch} needs training crops >= {side} px "
            f"(data.image_size x train.image_scale gives {train_crop})",
        )
