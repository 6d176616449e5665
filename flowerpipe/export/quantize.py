"""Static int8 quantization of an exported model: QDQ, per-channel 7-bit weights, activations
calibrated on real images, and a search over ONNX Runtime's settings for the int8 model whose
class probabilities stray least from fp32's, for its speed.
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
from collections.abc import Callable, Collection, Iterator, Sequence
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
from onnxruntime.quantization.calibrate import HistogramCollector
from onnxruntime.quantization.qdq_loss_debug import (
    collect_activations,
    compute_activation_error,
    create_activation_matching,
    modify_model_output_intermediate_tensors,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from flowerpipe.core.console import log
from flowerpipe.core.errors import QuantizationError
from flowerpipe.data.cache import Rows
from flowerpipe.export.latency import median_seconds
from flowerpipe.runtime.predictor import Predictor
from flowerpipe.runtime.preprocess import to_model_input
from flowerpipe.runtime.scores import log_softmax

WEIGHT_LIMIT = 64  # the largest |weight| that VPMADDUBSW's 16-bit pair sums cannot saturate on
METHODS = ("MinMax", "Percentile", "Entropy")
MORE_CALIBRATION = 4  # the search's larger calibration sample, times export.calibration_images
# The search's calibrations by the names export.calibrations lists: method, and the sample as a
# multiple of export.calibration_images. More photos only widen MinMax's ranges (its sample holds
# the smaller one), which helps when the small sample missed real extremes; the histogram methods
# clip ranges instead, so a larger sample is offered for MinMax only.
SEARCH = {
    "MinMax": ("MinMax", 1),
    "Percentile": ("Percentile", 1),
    "Entropy": ("Entropy", 1),
    "MinMax-4x": ("MinMax", MORE_CALIBRATION),
}  # the names of flowerpipe.config.CALIBRATIONS (tested)
EXCLUDED_STEPS = (1, 2, 4, 8)  # how many of the most sensitive nodes the search leaves in float
FLOAT_GAIN = 0.1  # the share of the divergence from fp32 that more nodes in float must cut to be kept
SEARCH_PHOTOS = 512  # training photos outside every calibration sample that score the settings
SPEED_RUNS = 50  # timed batch-1 calls of fp32 and int8 each, to tell whether nodes in float still pay
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
    with (
        tempfile.TemporaryDirectory() as tmp,
        contextlib.redirect_stdout(io.StringIO()),
        equal_width_histograms(),
    ):
        prepared = prepared or pre_process(fp32_path, Path(tmp))
        score_nodes = score_only_nodes(prepared.path)
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
            nodes_to_exclude=[*setting.excluded_nodes, *score_nodes],
            extra_options={"CalibStridedMinMax": 1},  # one batch at a time, whatever the method
            calibration_cache_path=cache,
        )
    _set_metadata(int8_path, {**fp32.metadata, "quantization": setting.describe()}, float16_for=score_nodes)


@contextlib.contextmanager
def equal_width_histograms() -> Iterator[None]:
    """ONNX Runtime's Percentile calibration with the histograms counted in linear time.

    Its collector bins every batch after the first by an array of bin edges, for which NumPy sorts
    the batch's activations; the edges are equally spaced (the first batch's bins, extended by
    their width), so each value's bin follows from the width, checked against the edges. The
    counts, the ranges and the int8 file come out identical (tests/export/test_quantize.py); the
    Percentile try on the offline command's model took 101 s before, 50 s after (docs/int8.md)."""
    original = HistogramCollector.collect_absolute_value
    HistogramCollector.collect_absolute_value = _collect_absolute_value
    try:
        yield
    finally:
        HistogramCollector.collect_absolute_value = original


def _collect_absolute_value(self: HistogramCollector, name_to_arr: dict[str, Any]) -> None:
    """`HistogramCollector.collect_absolute_value` (onnxruntime 1.32), counting by bin width."""
    for tensor, arrays in name_to_arr.items():
        data = np.asarray(arrays).ravel()
        low, high = (np.nanmin(data), np.nanmax(data)) if data.size else (np.array(0, data.dtype),) * 2
        data = np.absolute(data)
        if tensor not in self.histogram_dict:
            hist, edges = np.histogram(data, bins=self.num_bins)
            self.histogram_dict[tensor] = (hist, edges.astype(data.dtype), low, high)
            continue
        old_hist, edges, old_low, old_high = self.histogram_dict[tensor]
        top = np.nanmax(data)
        if top > edges[-1]:  # more bins of the same width, as ONNX Runtime adds them
            width = edges[1] - edges[0]
            edges = np.hstack((edges, np.arange(edges[-1] + width, top + width, width)))
        hist = _counts(data, edges)
        hist[: len(old_hist)] += old_hist
        self.histogram_dict[tensor] = (hist, edges.astype(data.dtype), min(old_low, low), max(old_high, high))


def _counts(data: np.ndarray, edges: np.ndarray, block: int = 1 << 16) -> np.ndarray:
    """`np.histogram(data, bins=edges)[0]` for nearly equally spaced `edges`, `block` values at a
    time: each value's bin from the mean width, then moved until the edges hold it (bins are
    [e_i, e_i+1), the last one closed), where NumPy's sort would have placed it."""
    bins = len(edges) - 1
    scale = np.float32(bins / (float(edges[-1]) - float(edges[0])))
    counts = np.zeros(bins, np.intp)
    for start in range(0, len(data), block):
        part = data[start : start + block]
        part = part[(part >= edges[0]) & (part <= edges[-1])]
        at = np.clip(((part - edges[0]) * scale).astype(np.intp), 0, bins - 1)
        while True:  # float32 edges stray from the mean width by up to a few bins
            below, above = part < edges[at], (part >= edges[at + 1]) & (at < bins - 1)
            if not (below.any() or above.any()):
                break
            at += above.view(np.int8) - below.view(np.int8)
        counts += np.bincount(at, minlength=bins)
    return counts


def score_only_nodes(path: str | os.PathLike[str]) -> list[str]:
    """The nodes of the model at `path` that its logits (the first output) do not need: a knn
    score's, which stay in float, as int8 would round the training photos' features it holds."""
    graph = onnx.load(str(path), load_external_data=False).graph
    maker = {out: node for node in graph.node for out in node.output}
    needed, todo = set(), [graph.output[0].name]
    while todo:
        node = maker.get(todo.pop())
        if node is not None and node.name not in needed:
            needed.add(node.name)
            todo.extend(node.input)
    return [node.name for node in graph.node if node.name not in needed]


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


def _set_metadata(
    path: str | os.PathLike[str], props: dict[str, str], float16_for: Collection[str] = ()
) -> None:
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, props)
    _float16_constants(model.graph, set(float16_for))
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, str(path))


def _float16_constants(graph: onnx.GraphProto, nodes: set[str]) -> None:
    """Store in float16, read through a Cast, each float32 constant that only `nodes` read and
    that float16 holds exactly: the knn score's training features, which export keeps in float16
    and `pre_process` folds into float32, twice the size."""
    readers: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.name)
    for constant in graph.initializer:
        read_by = readers.get(constant.name)
        if constant.data_type != onnx.TensorProto.FLOAT or not read_by or not read_by <= nodes:
            continue
        values = onnx.numpy_helper.to_array(constant)
        if not np.array_equal(values.astype(np.float16).astype(np.float32), values):
            continue
        name = constant.name
        constant.CopyFrom(onnx.numpy_helper.from_array(values.astype(np.float16), f"{name}_float16"))
        cast = onnx.helper.make_node(
            "Cast", [constant.name], [name], f"{name}_cast", to=onnx.TensorProto.FLOAT
        )
        graph.node.insert(0, cast)


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
    divergence: float  # mean KL divergence of int8's class probabilities from fp32's (nats)
    differ: int  # photos whose top-1 class is not fp32's
    seconds: float
    speedup: float | None  # batch-1 speed over ONNX Runtime fp32; timed once nodes are in float
    path: Path = field(repr=False)

    def record(self) -> dict[str, Any]:
        found = asdict(self.setting) | {"excluded_nodes": list(self.setting.excluded_nodes)}
        return (
            found
            | {
                "divergence": round(self.divergence, 6),
                "agreement": round(1 - self.differ / max(self.photos, 1), 5),
                "photos_differing": self.differ,
                "seconds": round(self.seconds, 1),
            }
            | ({} if self.speedup is None else {"speedup_over_fp32": round(self.speedup, 2)})
        )


class _Search:
    """The settings the search has tried on one fp32 model, each scored by how far its class
    probabilities stray from fp32's on the search's photos."""

    def __init__(
        self,
        fp32_path: str | os.PathLike[str],
        folder: Path,
        photos: np.ndarray | Rows,
        speedup: Callable[[Path], float],
    ) -> None:
        self.fp32_path, self.folder, self.photos, self.speedup = fp32_path, folder, photos, speedup
        self.reference = log_probabilities(fp32_path, photos)
        self.prepared = pre_process(fp32_path, folder)  # once for every try
        self.tried: list[_Tried] = []
        self.failed: list[dict[str, Any]] = []  # calibrations ONNX Runtime could not make

    def attempt(self, setting: Setting, crops: np.ndarray | Rows) -> _Tried:
        setting = replace(setting, calibration_images=len(crops))
        path, start = self.folder / f"{len(self.tried)}.onnx", time.perf_counter()
        cache = self.folder / f"{setting.method}-{len(crops)}.json"  # ranges reused by later tries
        quantize_int8(self.fp32_path, path, crops, setting, cache=cache, prepared=self.prepared)
        logp = log_probabilities(path, self.photos)
        divergence = mean_divergence(self.reference, logp)
        differ = int(np.count_nonzero(logp.argmax(1) != self.reference.argmax(1)))
        speedup = self.speedup(path) if setting.excluded_nodes else None
        seconds = time.perf_counter() - start
        tried = _Tried(setting, len(self.photos), divergence, differ, seconds, speedup, path)
        self.tried.append(tried)
        speed = "" if speedup is None else f", {speedup:.2f}x fp32's speed at batch 1"
        log.info(
            "int8, %s: divergence from fp32 %.5f nats on %d search photos (%d answer another class)%s",
            setting.describe(),
            divergence,
            tried.photos,
            differ,
            speed,
        )
        return tried


def search_int8(
    fp32_path: str | os.PathLike[str],
    int8_path: str | os.PathLike[str],
    calibration: Callable[[int], np.ndarray | Rows],
    photos: np.ndarray | Rows,
    *,
    calibration_images: int,
    calibrations: Sequence[str],
    speedup: Callable[[str | os.PathLike[str], Path], float] | None = None,
) -> dict[str, Any]:
    """Write the int8 model whose class probabilities stray least from fp32's on `photos` (uint8
    crops; no labels needed) for its speed; return what was tried and chosen.

    `calibration(n)` gives the crops of up to n calibration photos. Each of `calibrations` (names
    of SEARCH) is tried in turn and the one of least divergence (mean KL, a continuous score: top-1
    agreement on a few hundred photos is too coarse to rank settings) is kept; they share one graph
    and so one speed.
    Then the 1, 2, 4 and 8 nodes whose output loses the most signal to quantization are left in
    float, each try timed against fp32 by `speedup(fp32, int8)` (default: batch-1 ONNX Runtime
    latency): a try is kept when it cuts the divergence by FLOAT_GAIN, and the search stops at
    the first that is not faster than fp32. Whether int8 is good enough is the gate's to say, on
    other photos."""
    timed = speedup or batch1_speedup
    with tempfile.TemporaryDirectory() as tmp:
        search = _Search(fp32_path, Path(tmp), photos, lambda path: timed(fp32_path, path))
        calibrated = _search_calibrations(search, calibration, calibration_images, calibrations)
        chosen = _search_floats(search, calibration, calibrated)
        shutil.copyfile(chosen.path, int8_path)
    record = {"chosen": chosen.record(), "search_photos": len(photos)}
    _set_metadata(
        int8_path, {**Predictor(int8_path).metadata, "quantization_settings": json.dumps(record["chosen"])}
    )
    return record | {"search": [t.record() for t in search.tried], "search_failed": search.failed}


def _search_calibrations(
    search: _Search,
    calibration: Callable[[int], np.ndarray | Rows],
    calibration_images: int,
    calibrations: Sequence[str],
) -> _Tried:
    """Of `calibrations`, the one of least divergence, the first of equals; the larger sample is
    skipped if it holds no more photos."""
    base, best = calibration(calibration_images), None
    for method, times in (SEARCH[name] for name in calibrations):
        crops = base if times == 1 else calibration(calibration_images * times)
        if times > 1 and len(crops) == len(base):
            continue
        try:
            tried = search.attempt(Setting(method), crops)
        except ValueError as exc:  # NumPy's histogram of an activation whose range is all but zero
            search.failed.append({"method": method, "calibration_images": len(crops), "error": str(exc)})
            log.warning("int8: %s calibration failed on this model, passed over: %s", method, exc)
            continue
        if best is None or tried.divergence < best.divergence:
            best = tried
    if best is None:
        raise QuantizationError(f"int8: every calibration failed: {search.failed}")
    return best


def _search_floats(search: _Search, calibration: Callable[[int], np.ndarray | Rows], start: _Tried) -> _Tried:
    """`start` with more and more of the most sensitive nodes left in float: the last try that cut
    the divergence of the one kept before it by FLOAT_GAIN, until a try is not faster than fp32."""
    ranked = sensitive_nodes(
        search.fp32_path, search.prepared, start.path, search.photos[:SENSITIVITY_IMAGES]
    )
    crops, best = calibration(start.setting.calibration_images), start
    for k in EXCLUDED_STEPS:
        if k > len(ranked):
            break
        tried = search.attempt(replace(start.setting, excluded_nodes=sum(ranked[:k], ())), crops)
        if tried.speedup is not None and tried.speedup <= 1:
            log.info("int8: %d nodes in float are not faster than fp32 on this CPU: no more are tried", k)
            break
        if tried.divergence <= (1 - FLOAT_GAIN) * best.divergence:
            best = tried
    return best


def batch1_speedup(fp32_path: str | os.PathLike[str], int8_path: str | os.PathLike[str]) -> float:
    """How many times faster `int8_path` answers one photo than `fp32_path` in ONNX Runtime, the
    two timed in turns (median of SPEED_RUNS each)."""
    fp32, int8 = Predictor(fp32_path), Predictor(int8_path)
    x = np.zeros((1, fp32.image_size, fp32.image_size, 3), np.uint8)
    spent = median_seconds({"fp32": lambda: fp32.logits(x), "int8": lambda: int8.logits(x)}, 5, SPEED_RUNS)
    return spent["fp32"] / spent["int8"]


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
    return log_probabilities(model_path, crops, batch_size).argmax(1)


def log_probabilities(
    model_path: str | os.PathLike[str], crops: np.ndarray | Rows, batch_size: int = 64
) -> np.ndarray:
    """An exported model's log class probabilities for the uint8 NHWC crops, a batch at a time."""
    predictor = Predictor(model_path)
    logits = np.concatenate(
        [predictor.logits(crops[i : i + batch_size]) for i in range(0, len(crops), batch_size)]
    ).astype(np.float64)
    return log_softmax(logits)


def mean_divergence(reference: np.ndarray, other: np.ndarray) -> float:
    """The mean KL divergence (nats) of the class probabilities `other` from `reference`, both
    given as log probabilities, one row per photo."""
    return float(np.mean(np.sum(np.exp(reference) * (reference - other), axis=1)))


def search_indices(indices: np.ndarray, calibration_images: int, count: int = SEARCH_PHOTOS) -> np.ndarray:
    """The search's photos: a seeded sample of up to `count` of `indices` outside every calibration
    sample the search draws (the calibration photos themselves, if none are left)."""
    calibrated = calibration_indices(indices, calibration_images * MORE_CALIBRATION)
    rest = np.setdiff1d(indices, calibrated)
    return calibration_indices(rest if len(rest) else indices, count, seed=1)


def calibration_indices(indices: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """A random (seeded) sample of up to `count` of `indices`, in their original order; a smaller
    count's sample is part of a larger one's."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(indices)[:count])
