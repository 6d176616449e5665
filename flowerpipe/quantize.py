"""Static int8 quantization of an exported model: QDQ, per-channel 7-bit weights, activations
calibrated on real images, and a search over ONNX Runtime's settings until the accuracy holds.
Dynamic quantization is never used: for CNNs it is slower than fp32.

Weights keep to [-64, 64] (7 bits, `reduce_range`): x86 CPUs without VNNI multiply u8 activations
by s8 weights with VPMADDUBSW, which sums two products in 16 bits, and 2 * 255 * 64 = 32,640 cannot
saturate, so the file scores the same on every x86 CPU, whichever built it."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.qdq_loss_debug import (
    collect_activations,
    compute_activation_error,
    create_activation_matching,
    modify_model_output_intermediate_tensors,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from .cache import Rows
from .console import log
from .errors import QuantizationError
from .predict import Predictor
from .preprocess import to_model_input

WEIGHT_LIMIT = 64  # the largest |weight| that VPMADDUBSW's 16-bit pair sums cannot saturate on
METHODS = ("MinMax", "Percentile", "Entropy")
MORE_CALIBRATION = 4  # the search's larger calibration sample, times export.calibration_images
# The search's calibrations in order: method, and the sample as a multiple of
# export.calibration_images. More photos only widen MinMax's ranges (its sample holds the smaller
# one), which helps when the small sample missed real extremes, and MinMax's usual fault is ranges
# too wide for the bulk of the values, which Percentile and Entropy clip: so it comes last.
SEARCH = (("MinMax", 1), ("Percentile", 1), ("Entropy", 1), ("MinMax", MORE_CALIBRATION))
EXCLUDED_STEPS = (1, 2, 4, 8)  # how many of the most sensitive nodes the search leaves in float
WEIGHTED = ("Conv", "Gemm", "MatMul")
SENSITIVITY_IMAGES = 32  # val photos whose activations rank the nodes
BATCH = 8  # photos per calibration run: histogram methods hold every activation of one batch
# The most bytes of activations calibration, or the sensitivity ranking, holds at once: a model
# whose photos make more calibrates fewer at a time (ViT-L/16 at 224 px, 8 at a time, passed 24 GiB).
ACTIVATION_BYTES = 2 * 2**30


@dataclass(frozen=True)
class Setting:
    """One way to quantize: the calibration method and sample, and the nodes left in float."""

    method: str = "MinMax"
    calibration_images: int = 256
    excluded_nodes: tuple[str, ...] = ()
    weight_bits: int = 7  # 8 saturates on CPUs without VNNI: only for comparisons

    def describe(self) -> str:
        floats = f", {len(self.excluded_nodes)} nodes left in float" if self.excluded_nodes else ""
        return (
            f"static int8, QDQ, {self.weight_bits}-bit per-channel weights, {self.method} calibration "
            f"on {self.calibration_images} images{floats}"
        )


class _Batches(CalibrationDataReader):
    """The crops as model inputs, `batch_size` at a time; ONNX Runtime calibrates one batch per
    `set_range`, so that histogram methods hold one batch's activations, not the sample's."""

    def __init__(self, predictor: Predictor, crops: np.ndarray | Rows, batch_size: int) -> None:
        self.predictor, self.crops, self.batch_size = predictor, crops, batch_size
        self.set_range(0, len(self))

    def __len__(self) -> int:
        return math.ceil(len(self.crops) / self.batch_size)

    def set_range(self, start_index: int, end_index: int) -> None:
        p, size = self.predictor, self.batch_size
        self.batches = (
            {p.input_name: to_model_input(self.crops[i * size : (i + 1) * size], p.mean, p.std)}
            for i in range(start_index, min(end_index, len(self)))
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def quantize_int8(
    fp32_path: str | os.PathLike[str],
    int8_path: str | os.PathLike[str],
    calibration: np.ndarray | Rows,
    setting: Setting | None = None,
    cache: Path | None = None,
    prepared: PreparedModel | None = None,
) -> None:
    """Write the int8 version of the flowerpipe model at `fp32_path`, calibrated on `calibration`
    (uint8 NHWC crops of the model's input size) as `setting` says, with the fp32 model's metadata.
    `cache` keeps the calibrated ranges for the next call with the same method and crops;
    `prepared` is the model `pre_process` made of `fp32_path`, when the caller has it."""
    setting = replace(setting or Setting(), calibration_images=len(calibration))
    fp32 = Predictor(fp32_path)
    # ONNX Runtime prints a line per calibration batch
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        prepared = prepared or pre_process(fp32_path, Path(tmp))
        quantize_static(
            prepared.path,
            int8_path,
            _Batches(fp32, calibration, photos_held(prepared.per_photo, BATCH)),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=setting.weight_bits == 7,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod[setting.method],
            nodes_to_exclude=list(setting.excluded_nodes),
            extra_options={"CalibStridedMinMax": 1},  # one batch at a time, whatever the method
            calibration_cache_path=cache,
        )
    _set_metadata(int8_path, {**fp32.metadata, "quantization": setting.describe()})


@dataclass(frozen=True)
class PreparedModel:
    """A model `pre_process` made, and the bytes of float activations one photo makes in it
    (`activation_bytes`), read once however many calibrations use it."""

    path: Path
    per_photo: int


def pre_process(fp32_path: str | os.PathLike[str], folder: Path) -> PreparedModel:
    """The model at `fp32_path` folded and shape-inferred for quantization, written in `folder`."""
    prepared = folder / "prepared.onnx"
    try:
        quant_pre_process(str(fp32_path), str(prepared))
    except Exception as exc:  # ONNX Runtime's symbolic shape inference fails on some graphs (Swin V2's)
        log.info("symbolic shape inference failed (%s: %s): ONNX's own instead", type(exc).__name__, exc)
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
    return PreparedModel(prepared, activation_bytes(prepared))


def activation_bytes(prepared: str | os.PathLike[str]) -> int:
    """The bytes of float activations one photo makes in a model that `pre_process` made: every
    tensor shape inference sized, as ONNX Runtime's calibration and debugging tools keep them."""
    float32 = onnx.TensorProto.FLOAT
    return sum(
        4 * math.prod(d.dim_value or 1 for d in v.type.tensor_type.shape.dim[1:])
        for v in onnx.load(str(prepared)).graph.value_info
        if v.type.tensor_type.elem_type == float32
    )


def photos_held(per_photo: int, most: int, copies: int = 1) -> int:
    """How many photos' activations (`per_photo` bytes, `copies` of them each) fit in
    ACTIVATION_BYTES: 1 to `most`."""
    return max(1, min(most, ACTIVATION_BYTES // max(1, copies * per_photo)))


def _set_metadata(path: str | os.PathLike[str], props: dict[str, str]) -> None:
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, props)
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, str(path))


def largest_int8_weight(path: str | os.PathLike[str]) -> int:
    """The largest |value| among the int8 weights that the model's DequantizeLinear nodes read."""
    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    weights = [
        inits[node.input[0]]
        for node in model.graph.node
        if node.op_type == "DequantizeLinear" and node.input[0] in inits
    ]
    int8 = [onnx.numpy_helper.to_array(w) for w in weights if w.data_type == onnx.TensorProto.INT8]
    return max((int(np.abs(w.astype(np.int16)).max()) for w in int8 if w.size), default=0)


@dataclass
class _Tried:
    setting: Setting
    val_accuracy: float
    val_drop_points: float
    val_drop_error_points: float
    seconds: float
    path: Path = field(repr=False)

    def record(self) -> dict[str, Any]:
        found = asdict(self.setting) | {"excluded_nodes": list(self.setting.excluded_nodes)}
        return found | {
            "val_accuracy": self.val_accuracy,
            "val_drop_points": round(self.val_drop_points, 3),
            "val_drop_error_points": round(self.val_drop_error_points, 3),
            "seconds": round(self.seconds, 1),
        }


def search_int8(
    fp32_path: str | os.PathLike[str],
    int8_path: str | os.PathLike[str],
    calibration: Callable[[int], np.ndarray | Rows],
    val_crops: np.ndarray | Rows,
    val_labels: np.ndarray,
    max_drop_points: float,
    calibration_images: int,
    shown_as: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Write the fastest int8 model found whose val accuracy is within `max_drop_points` of fp32's
    by a margin, and return what was tried and chosen; raise QuantizationError, with the best
    reached and naming the file `shown_as` (default `int8_path`), if none is within them at all.

    The margin is the drop's standard error (`drop_error_points`): the test split, which the
    stage's gate judges, is another sample, and a model just inside on val lands outside on test
    about as often as not. `calibration(n)` gives the crops of up to n calibration photos. In
    order, each tried only while none passed: the calibrations of SEARCH; then the best of them
    with the 1, 2, 4 and 8 nodes whose output loses the most signal to quantization left in float.
    The calibrations share one graph and so one speed; each node left in float slows the model, so
    the first to pass is the fastest. If none passes with its margin, the one with the best val
    accuracy is kept if it is within `max_drop_points` without one."""
    fp32_right = correct(fp32_path, val_crops, val_labels)
    fp32_val = float(fp32_right.mean())
    tried: list[_Tried] = []
    with tempfile.TemporaryDirectory() as tmp:
        prepared = pre_process(fp32_path, Path(tmp))  # once for every try

        def passes(setting: Setting, crops: np.ndarray | Rows) -> bool:
            setting = replace(setting, calibration_images=len(crops))
            path, start = Path(tmp) / f"{len(tried)}.onnx", time.perf_counter()
            cache = Path(tmp) / f"{setting.method}-{len(crops)}.json"  # ranges reused by later tries
            quantize_int8(fp32_path, path, crops, setting, cache=cache, prepared=prepared)
            right = correct(path, val_crops, val_labels)
            val, error = float(right.mean()), drop_error_points(fp32_right, right)
            drop = drop_points(fp32_val, val)
            tried.append(_Tried(setting, val, drop, error, time.perf_counter() - start, path))
            shown = (setting.describe(), 100 * val, drop, error)
            log.info("int8, %s: val %.2f%%, %.2f ± %.2f points below fp32", *shown)
            return drop + error <= max_drop_points

        def best() -> _Tried:
            return min(tried, key=lambda t: t.val_drop_points)

        @functools.cache  # cropped when first tried: the search mostly stops before the larger one
        def sample(times: int) -> np.ndarray | Rows:
            return calibration(calibration_images * times)

        tries = ((m, t) for m, t in SEARCH if t == 1 or len(sample(t)) > len(sample(1)))
        found = any(passes(Setting(method), sample(t)) for method, t in tries)  # stops at a pass
        if not found:
            start = best()
            ranked = sensitive_nodes(fp32_path, prepared, start.path, val_crops[:SENSITIVITY_IMAGES])
            small = len(sample(1)) == start.setting.calibration_images
            crops = sample(1) if small else sample(MORE_CALIBRATION)
            floats = [sum(ranked[:k], ()) for k in EXCLUDED_STEPS if k <= len(ranked)]
            found = any(passes(replace(start.setting, excluded_nodes=f), crops) for f in floats)
        chosen = tried[-1] if found else best()
        if chosen.val_drop_points > max_drop_points:
            raise QuantizationError(
                f"{shown_as or int8_path}: no int8 model kept the val accuracy within "
                f"{max_drop_points:g} points of fp32 {fp32_val:.2%} (export.max_accuracy_drop) in "
                f"{len(tried)} settings; the best, "
                f"{chosen.setting.describe()}, lost {chosen.val_drop_points:.2f}"
            )
        if not found:
            log.warning(
                "int8: no setting kept val within %g points of fp32 by its standard error; kept the "
                "best, %s, %.2f ± %.2f points below: the test split decides",
                max_drop_points,
                chosen.setting.describe(),
                chosen.val_drop_points,
                chosen.val_drop_error_points,
            )
        shutil.copyfile(chosen.path, int8_path)
    record = {"chosen": chosen.record(), "val_accuracy": {"fp32": fp32_val, "int8": chosen.val_accuracy}}
    _set_metadata(
        int8_path, {**Predictor(int8_path).metadata, "quantization_settings": json.dumps(record["chosen"])}
    )
    return record | {"search": [t.record() for t in tried]}


def sensitive_nodes(
    fp32_path: str | os.PathLike[str],
    prepared: PreparedModel,
    int8_path: str | os.PathLike[str],
    crops: np.ndarray,
) -> list[tuple[str, ...]]:
    """The weighted nodes (Conv, Gemm, MatMul) of the fp32 model (`prepared`: as `pre_process` made
    it), the one whose output loses the most signal to quantization first: the fall of the
    signal-to-quantization-noise ratio (dB, int8 against fp32 activations on `crops`) from the
    node's input to its output. Each comes with the nodes that make its input, through activations
    (Relu, Clip) up to the weighted node before: for the input to stay in float, its producers
    must too."""
    fp32 = Predictor(fp32_path)
    crops = crops[: photos_held(prepared.per_photo, len(crops), copies=3)]  # fp32's, and int8's, QDQ too
    batch = photos_held(prepared.per_photo, BATCH)
    with tempfile.TemporaryDirectory() as tmp:
        float_aug, int8_aug = str(Path(tmp) / "f.onnx"), str(Path(tmp) / "q.onnx")
        modify_model_output_intermediate_tensors(str(prepared.path), float_aug)
        modify_model_output_intermediate_tensors(str(int8_path), int8_aug)
        float_acts = collect_activations(float_aug, _Batches(fp32, crops, batch))
        int8_acts = collect_activations(int8_aug, _Batches(fp32, crops, batch))
        nodes = onnx.load(str(prepared.path)).graph.node
    errors = compute_activation_error(create_activation_matching(int8_acts, float_acts))
    sqnr = {name: e["xmodel_err"] for name, e in errors.items()}
    clean = max(sqnr.values())  # the graph's input carries no quantization noise of its own
    producers = {n.output[0]: n for n in nodes}
    fall, feeds = {}, {}
    for n in nodes:
        if n.op_type in WEIGHTED and n.output[0] in sqnr:
            fall[n.name], feeds[n.name] = sqnr.get(n.input[0], clean) - sqnr[n.output[0]], []
            feeder = producers.get(n.input[0])
            while feeder is not None and feeder.op_type in ("Relu", "Clip"):
                feeds[n.name].append(feeder.name)
                feeder = producers.get(feeder.input[0])
            if feeder is not None and feeder.op_type in WEIGHTED:
                feeds[n.name].append(feeder.name)
    return [(name, *feeds[name]) for name in sorted(fall, key=lambda name: -fall[name])]


def correct(
    model_path: str | os.PathLike[str], crops: np.ndarray | Rows, labels: np.ndarray, batch_size: int = 64
) -> np.ndarray:
    """Whether an exported model's top-1 class is the label, per photo of uint8 NHWC crops read a
    batch at a time."""
    predictor = Predictor(model_path)
    predicted = np.concatenate(
        [predictor.logits(crops[i : i + batch_size]).argmax(1) for i in range(0, len(crops), batch_size)]
    )
    return predicted == labels


def accuracy(model_path: str | os.PathLike[str], crops: np.ndarray | Rows, labels: np.ndarray) -> float:
    """Top-1 accuracy of an exported model on uint8 NHWC crops."""
    return float(correct(model_path, crops, labels).mean())


def drop_points(fp32: float, int8: float) -> float:
    """How many percentage points int8 is below fp32 (0.90 - 0.89 is one point, not a hair more)."""
    return round(100 * (fp32 - int8), 9)


def drop_error_points(fp32_right: np.ndarray, int8_right: np.ndarray) -> float:
    """The standard error, in points, of int8's accuracy drop measured on these photos: only the
    photos one model gets right and the other wrong carry it (a paired difference); an upper bound."""
    return 100 * math.sqrt(np.count_nonzero(fp32_right != int8_right)) / len(fp32_right)


def check_accuracy_drop(
    fp32: float, int8: float, max_drop_points: float, path: str | os.PathLike[str]
) -> None:
    """Refuse an int8 model whose accuracy is more than `max_drop_points` percentage points lower."""
    drop = drop_points(fp32, int8)
    if drop > max_drop_points:
        raise QuantizationError(
            f"{path}: int8 test accuracy {int8:.2%} is {drop:.2f} points below fp32 {fp32:.2%} "
            f"(export.max_accuracy_drop allows {max_drop_points:g})"
        )


def calibration_indices(indices: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """A random (seeded) sample of up to `count` of `indices`, in their original order; a smaller
    count's sample is part of a larger one's."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(indices)[:count])
