"""Static int8 quantization of an exported model: QDQ, per-channel 7-bit weights, activations
calibrated on real images, and a search over ONNX Runtime's settings until int8 answers like fp32.
Dynamic quantization is never used: for CNNs it is slower than fp32.

Weights keep to [-64, 64] (7 bits, `reduce_range`): x86 CPUs without VNNI multiply u8 activations
by s8 weights with VPMADDUBSW, which sums two products in 16 bits, and 2 * 255 * 64 = 32,640 cannot
saturate, so the file scores the same on every x86 CPU, whichever built it."""

from __future__ import annotations

import contextlib
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
from .predict import Predictor
from .preprocess import to_model_input

WEIGHT_LIMIT = 64  # the largest |weight| that VPMADDUBSW's 16-bit pair sums cannot saturate on
METHODS = ("MinMax", "Percentile", "Entropy")
MORE_CALIBRATION = 4  # the search's larger calibration sample, times export.calibration_images
# The search's calibrations in order: method, and the sample as a multiple of
# export.calibration_images. Entropy comes before Percentile: on MobileNetV2 it answered like fp32
# as often or more and calibrated 4x faster (README: int8). More photos only widen MinMax's ranges
# (its sample holds the smaller one), which helps when the small sample missed real extremes, and
# MinMax's usual fault is ranges too wide for the bulk of the values, which the other two clip: so
# it comes last.
SEARCH = (("MinMax", 1), ("Entropy", 1), ("Percentile", 1), ("MinMax", MORE_CALIBRATION))
EXCLUDED_STEPS = (1, 2, 4, 8)  # how many of the most sensitive nodes the search leaves in float
WEIGHTED = ("Conv", "Gemm", "MatMul")
SENSITIVITY_IMAGES = 32  # search photos whose activations rank the nodes
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
    photos: int
    differ: int  # photos whose top-1 class is not fp32's
    seconds: float
    path: Path = field(repr=False)

    @property
    def agreement(self) -> float:
        return 1 - self.differ / max(self.photos, 1)

    def record(self) -> dict[str, Any]:
        found = asdict(self.setting) | {"excluded_nodes": list(self.setting.excluded_nodes)}
        return found | {
            "agreement": round(self.agreement, 5),
            "photos_differing": self.differ,
            "seconds": round(self.seconds, 1),
        }


class _Search:
    """The settings the search has tried on one fp32 model, each scored by how many of the search's
    photos it answers with another class than fp32."""

    def __init__(self, fp32_path: str | os.PathLike[str], folder: Path, photos: np.ndarray | Rows) -> None:
        self.fp32_path, self.folder, self.photos = fp32_path, folder, photos
        self.reference = predicted(fp32_path, photos)
        self.prepared = pre_process(fp32_path, folder)  # once for every try
        self.tried: list[_Tried] = []

    def attempt(self, setting: Setting, crops: np.ndarray | Rows) -> _Tried:
        setting = replace(setting, calibration_images=len(crops))
        path, start = self.folder / f"{len(self.tried)}.onnx", time.perf_counter()
        cache = self.folder / f"{setting.method}-{len(crops)}.json"  # ranges reused by later tries
        quantize_int8(self.fp32_path, path, crops, setting, cache=cache, prepared=self.prepared)
        differ = int(np.count_nonzero(predicted(path, self.photos) != self.reference))
        tried = _Tried(setting, len(self.photos), differ, time.perf_counter() - start, path)
        self.tried.append(tried)
        log.info(
            "int8, %s: the same class as fp32 on %.2f%% of %d search photos (%d differ)",
            setting.describe(),
            100 * tried.agreement,
            tried.photos,
            differ,
        )
        return tried

    def best(self) -> _Tried:
        """The setting that differs from fp32 on the fewest photos, the first (fastest) of equals."""
        return min(self.tried, key=lambda t: t.differ)


def search_int8(
    fp32_path: str | os.PathLike[str],
    int8_path: str | os.PathLike[str],
    calibration: Callable[[int], np.ndarray | Rows],
    photos: np.ndarray | Rows,
    target_agreement: float,
    calibration_images: int,
) -> dict[str, Any]:
    """Write the fastest int8 model found whose top-1 class is fp32's on `target_agreement` of
    `photos` (uint8 crops; no labels needed), or, if none is, the one that agrees most; return what
    was tried and chosen.

    `calibration(n)` gives the crops of up to n calibration photos. In order, each tried only while
    none reached the target: the calibrations of SEARCH; then the best of them with the 1, 2, 4 and
    8 nodes whose output loses the most signal to quantization left in float. The calibrations share
    one graph and so one speed; each node left in float slows the model, so the first to reach the
    target is the fastest. Whether int8 is good enough is the gate's to say, on other photos."""
    with tempfile.TemporaryDirectory() as tmp:
        search = _Search(fp32_path, Path(tmp), photos)
        found = _search_calibrations(search, calibration, calibration_images, target_agreement)
        if found is None:
            found = _search_floats(search, calibration, target_agreement)
        chosen = found or search.best()
        if found is None:
            log.warning(
                "int8: no setting answered like fp32 on %g of the search photos "
                "(export.int8_agreement); kept the closest, %s, at %.2f%%: the gate decides",
                target_agreement,
                chosen.setting.describe(),
                100 * chosen.agreement,
            )
        shutil.copyfile(chosen.path, int8_path)
    record = {"chosen": chosen.record(), "search_photos": len(photos)}
    _set_metadata(
        int8_path, {**Predictor(int8_path).metadata, "quantization_settings": json.dumps(record["chosen"])}
    )
    return record | {"search": [t.record() for t in search.tried]}


def _search_calibrations(
    search: _Search,
    calibration: Callable[[int], np.ndarray | Rows],
    calibration_images: int,
    target: float,
) -> _Tried | None:
    """The first calibration of SEARCH that reaches the target, or None; the larger sample is read
    only when it is reached, and skipped if it holds no more photos."""
    base = calibration(calibration_images)
    for method, times in SEARCH:
        crops = base if times == 1 else calibration(calibration_images * times)
        if times > 1 and len(crops) == len(base):
            continue
        tried = search.attempt(Setting(method), crops)
        if tried.agreement >= target:
            return tried
    return None


def _search_floats(
    search: _Search, calibration: Callable[[int], np.ndarray | Rows], target: float
) -> _Tried | None:
    """The best calibration with more and more of the most sensitive nodes left in float: the first
    to reach the target, or None."""
    start = search.best()
    ranked = sensitive_nodes(
        search.fp32_path, search.prepared, start.path, search.photos[:SENSITIVITY_IMAGES]
    )
    crops = calibration(start.setting.calibration_images)
    for k in EXCLUDED_STEPS:
        if k > len(ranked):
            break
        tried = search.attempt(replace(start.setting, excluded_nodes=sum(ranked[:k], ())), crops)
        if tried.agreement >= target:
            return tried
    return None


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


def predicted(
    model_path: str | os.PathLike[str], crops: np.ndarray | Rows, batch_size: int = 64
) -> np.ndarray:
    """An exported model's top-1 class for each of the uint8 NHWC crops, read a batch at a time."""
    predictor = Predictor(model_path)
    return np.concatenate(
        [predictor.logits(crops[i : i + batch_size]).argmax(1) for i in range(0, len(crops), batch_size)]
    )


def calibration_indices(indices: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """A random (seeded) sample of up to `count` of `indices`, in their original order; a smaller
    count's sample is part of a larger one's."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(indices)[:count])
