"""int8 static quantization: QDQ with 7-bit per-channel weights, calibrated, searched over ONNX Runtime's
settings for the one closest to fp32, and refused by the gate when it loses accuracy."""

from __future__ import annotations

import copy
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers.photos import CLASSES, IMAGE_SIZE, RESIZE, noisy_squares
from onnx import numpy_helper
from onnxruntime.quantization.qdq_loss_debug import modify_model_output_intermediate_tensors

from flowerpipe.config import CALIBRATIONS, ExportConfig
from flowerpipe.core.errors import QuantizationError
from flowerpipe.export import onnx as export
from flowerpipe.export import quantize
from flowerpipe.export.gate import gate_int8
from flowerpipe.export.quantize import (
    BATCH,
    METHODS,
    MORE_CALIBRATION,
    SEARCH,
    SEARCH_PHOTOS,
    WEIGHT_LIMIT,
    Setting,
    _Batches,
    activation_bytes,
    calibration_indices,
    largest_int8_weight,
    photos_held,
    pre_process,
    predicted,
    quantize_int8,
    search_indices,
    search_int8,
)
from flowerpipe.runtime.predictor import Predictor
from flowerpipe.runtime.preprocess import center_crop


@pytest.fixture(scope="module")
def test_set(onnx_model: Path) -> tuple[np.ndarray, np.ndarray]:
    """Crops the calibration never saw, labelled with the fp32 model's answers (its accuracy: 100 %)."""
    crops = center_crop(noisy_squares(300, seed=2), IMAGE_SIZE)
    return crops, Predictor(onnx_model).logits(crops).argmax(1)


def accuracy(model: Path, crops: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(predicted(model, crops) == labels))


def quantized(onnx_model: Path, folder: Path, calibration: np.ndarray) -> Path:
    path = folder / "model.int8.onnx"
    quantize_int8(onnx_model, path, calibration)
    return path


@pytest.fixture(scope="module")
def int8_model(onnx_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    calibration = center_crop(noisy_squares(64, seed=3), IMAGE_SIZE)
    return quantized(onnx_model, tmp_path_factory.mktemp("int8"), calibration)


def test_int8_model_is_static_qdq_with_per_channel_weights(onnx_model: Path, int8_model: Path) -> None:
    model = onnx.load(str(int8_model))
    onnx.checker.check_model(model, full_check=True)
    ops = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    assert not ops & {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"}  # never dynamic
    inits = {t.name: t for t in model.graph.initializer}
    conv_weights = [n.input[1] for n in model.graph.node if n.op_type == "Conv"]
    producers = {n.output[0]: n for n in model.graph.node}
    for name in conv_weights:
        dq = producers[name]
        assert dq.op_type == "DequantizeLinear"
        weight, scale = inits[dq.input[0]], numpy_helper.to_array(inits[dq.input[1]])
        assert weight.data_type == onnx.TensorProto.INT8
        assert scale.shape == (weight.dims[0],)  # one scale per output channel
    assert int8_model.stat().st_size < 0.35 * onnx_model.stat().st_size


def test_int8_model_keeps_the_metadata(onnx_model: Path, int8_model: Path) -> None:
    fp32, int8 = Predictor(onnx_model), Predictor(int8_model)
    assert int8.classes == fp32.classes and int8.image_size == fp32.image_size
    assert {k: v for k, v in int8.metadata.items() if k != "quantization"} == fp32.metadata
    assert "MinMax calibration on 64 images" in int8.metadata["quantization"]


def test_int8_weights_cannot_saturate_16_bit_pair_sums(
    onnx_model: Path, int8_model: Path, tmp_path: Path
) -> None:
    """Read from the file, so it holds wherever the model runs: CPUs without VNNI sum two u8 x s8
    products in 16 bits, which 7-bit weights cannot overflow (2 * 255 * 64 < 2**15)."""
    assert 2 * 255 * WEIGHT_LIMIT < 2**15
    assert largest_int8_weight(int8_model) == WEIGHT_LIMIT  # the full 7-bit range, no more
    eight_bit = tmp_path / "8bit.onnx"
    quantize_int8(
        onnx_model, eight_bit, center_crop(noisy_squares(16, seed=3), IMAGE_SIZE), Setting(weight_bits=8)
    )
    assert largest_int8_weight(eight_bit) == 127


def test_calibrated_int8_keeps_the_accuracy(
    onnx_model: Path,
    int8_model: Path,
    test_set: tuple[np.ndarray, np.ndarray],
    caplog: pytest.LogCaptureFixture,
) -> None:
    crops, labels = test_set
    assert len(set(labels.tolist())) == 3  # the fp32 answers are not one class
    assert accuracy(int8_model, crops, labels) >= 0.97
    caplog.set_level(logging.INFO, logger="flowerpipe")
    judged = gate_int8(onnx_model, int8_model, {"val": test_set}, max_drop_points=3.0)  # passes: no error
    agreement = judged["paired"]["val"]["agreement"]
    assert judged["gate"]["refused"] is False and agreement >= 0.97
    assert f"int8 gave fp32's class on {agreement:.1%} of the 300 val photos;" in caplog.text


def test_miscalibrated_int8_is_refused(
    onnx_model: Path, tmp_path: Path, test_set: tuple[np.ndarray, np.ndarray]
) -> None:
    """Calibrated on flat grey images, the activation ranges are far too narrow for real ones."""
    grey = np.full((16, IMAGE_SIZE, IMAGE_SIZE, 3), 128, np.uint8)
    path = quantized(onnx_model, tmp_path, grey)
    crops, labels = test_set
    int8 = accuracy(path, crops, labels)
    assert int8 < 0.9
    with pytest.raises(QuantizationError) as info:
        splits = {"val": (crops[:100], labels[:100]), "test": (crops[100:], labels[100:])}
        gate_int8(onnx_model, path, splits, max_drop_points=1.0, shown_as="models/model.int8.onnx")
    message = str(info.value)
    assert message.startswith("models/model.int8.onnx: int8 is ")
    assert f"{100 * (1 - int8):.2f} ± " in message and "fp32 100.00% on the 300 photos the search" in message
    assert "did not see (val + test;" in message
    assert message.endswith("standard errors, still above export.max_accuracy_drop 1")


def test_weights_that_can_saturate_without_vnni_are_refused_on_any_cpu(
    onnx_model: Path, tmp_path: Path, test_set: tuple[np.ndarray, np.ndarray]
) -> None:
    """8-bit weights score well where VNNI or AMX sum the products in 32 bits, and lose points on
    AVX2-only CPUs: the gate reads the weights from the file, so it refuses them on every CPU."""
    path = tmp_path / "8bit.onnx"
    quantize_int8(onnx_model, path, calibrated_on(64), Setting(weight_bits=8))
    with pytest.raises(
        QuantizationError, match=r"^m.onnx: int8 weights reach 127, above 64: on x86 CPUs without VNNI"
    ):
        gate_int8(onnx_model, path, {"test": test_set}, max_drop_points=100.0, shown_as="m.onnx")


def test_calibration_sample_is_seeded_and_from_the_given_indices() -> None:
    train = np.arange(0, 1000, 3)
    sample = calibration_indices(train, 50)
    assert len(sample) == 50 and set(sample) <= set(train)
    assert np.all(np.diff(sample) > 0)  # in order, no repeats
    assert np.array_equal(sample, calibration_indices(train, 50))
    assert np.array_equal(calibration_indices(train, 10_000), train)  # fewer photos than asked: all


def calibrated_on(count: int) -> np.ndarray:
    return center_crop(noisy_squares(count, seed=3), IMAGE_SIZE)


def fast(fp32: Path, int8: Path) -> float:
    """A stand-in for timing: int8 twice as fast as fp32, whatever this CPU does."""
    return 2.0


def divergence(fp32: Path, int8: Path, crops: np.ndarray) -> float:
    """The mean KL divergence of int8's softmax from fp32's, by torch."""
    p, q = (torch.from_numpy(Predictor(m).logits(crops)).double() for m in (fp32, int8))
    return float(
        torch.nn.functional.kl_div(q.log_softmax(1), p.log_softmax(1), log_target=True, reduction="batchmean")
    )


def test_search_indices_are_training_photos_no_calibration_sample_holds() -> None:
    train = np.arange(1000, 4000, 3)
    photos = search_indices(train, 100)
    assert len(photos) == SEARCH_PHOTOS and np.isin(photos, train).all()
    assert not np.isin(photos, calibration_indices(train, 100 * MORE_CALIBRATION)).any()
    assert np.array_equal(photos, search_indices(train, 100))  # seeded
    assert np.array_equal(search_indices(train[:50], 100), train[:50])  # none left: the calibration's


@pytest.fixture(scope="module")
def swapped_model(classifier: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`classifier` with its first two classes' outputs swapped: another answer for every photo
    that either of them wins."""
    net = copy.deepcopy(classifier)
    with torch.no_grad():
        net.fc.weight[[0, 1]] = net.fc.weight[[1, 0]].clone()
        net.fc.bias[[0, 1]] = net.fc.bias[[1, 0]].clone()
    path = tmp_path_factory.mktemp("swapped") / "model.onnx"
    export.export_onnx(
        net, path, IMAGE_SIZE, export.onnx_metadata(list(CLASSES), "resnet18", IMAGE_SIZE, RESIZE)
    )
    return path


def as_if_quantized(monkeypatch: pytest.MonkeyPatch, answers: dict[tuple[str, int], Path]) -> list[str]:
    """The 'int8 model' of each calibration method and count of nodes in float is the file `answers`
    names: outcomes the test forces, whatever int8 kernels this CPU has. The ranking of nodes is
    n0, n1, ... Returns the settings as they are tried."""
    tried = []

    def fake(fp32: Path, int8: Path, calibration: np.ndarray, setting: Setting, **kwargs: object) -> None:
        tried.append(f"{setting.method} {len(calibration)} {len(setting.excluded_nodes)}")
        shutil.copyfile(answers[setting.method, len(setting.excluded_nodes)], int8)

    monkeypatch.setattr(quantize, "quantize_int8", fake)
    monkeypatch.setattr(quantize, "sensitive_nodes", lambda *args: [(f"n{i}",) for i in range(8)])
    return tried


ALL = ["MinMax", "Entropy", "Percentile", "MinMax-4x"]  # every calibration, in this order


def closest_is(method: str, onnx_model: Path, swapped_model: Path) -> dict[tuple[str, int], Path]:
    """`as_if_quantized`'s answers: `method` without nodes in float answers as fp32, every other
    setting as the swapped model."""
    answers = {(m, k): swapped_model for m in METHODS for k in (0, 1, 2, 4, 8)}
    return answers | {(method, 0): onnx_model}


def test_the_search_offers_the_calibrations_the_config_names() -> None:
    assert tuple(SEARCH) == CALIBRATIONS
    assert set(ExportConfig().calibrations) < set(CALIBRATIONS)


def test_search_tries_the_calibrations_listed_in_their_order(
    onnx_model: Path, swapped_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    crops = center_crop(noisy_squares(200, seed=2), IMAGE_SIZE)
    tried = as_if_quantized(monkeypatch, closest_is("Percentile", onnx_model, swapped_model))
    for listed in (["MinMax", "Percentile"], ["MinMax-4x", "Percentile"]):
        tried.clear()
        found = search_int8(
            onnx_model,
            tmp_path / "int8.onnx",
            calibrated_on,
            crops,
            calibration_images=64,
            calibrations=listed,
            speedup=fast,
        )
        first = "MinMax 64 0" if listed[0] == "MinMax" else "MinMax 256 0"
        assert tried[:2] == [first, "Percentile 64 0"] and found["chosen"]["method"] == "Percentile"


def test_search_tries_every_calibration_and_keeps_the_one_closest_to_fp32(
    onnx_model: Path, swapped_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    crops = center_crop(noisy_squares(200, seed=2), IMAGE_SIZE)
    tried = as_if_quantized(monkeypatch, closest_is("Entropy", onnx_model, swapped_model))
    path = tmp_path / "model.int8.onnx"
    found = search_int8(
        onnx_model, path, calibrated_on, crops, calibration_images=64, calibrations=ALL, speedup=fast
    )
    calibrations = ["MinMax 64 0", "Entropy 64 0", "Percentile 64 0", "MinMax 256 0"]
    assert tried == [*calibrations, "Entropy 64 1", "Entropy 64 2", "Entropy 64 4", "Entropy 64 8"]
    first, chosen = found["search"][0], found["search"][1]
    assert first["divergence"] == pytest.approx(divergence(onnx_model, swapped_model, crops), rel=1e-4)
    differ = np.count_nonzero(predicted(swapped_model, crops) != predicted(onnx_model, crops))
    assert first["photos_differing"] == differ > 0 and first["agreement"] == round(1 - differ / 200, 5)
    assert found["chosen"] == chosen and (chosen["method"], chosen["divergence"]) == ("Entropy", 0)
    assert found["search_photos"] == 200 and "speedup_over_fp32" not in chosen
    assert found["search"][-1]["speedup_over_fp32"] == 2.0  # nodes in float are timed
    assert json.loads(Predictor(path).metadata["quantization_settings"]) == chosen


def test_a_calibration_onnx_runtime_cannot_make_is_passed_over(
    onnx_model: Path, swapped_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ONNX Runtime's histogram methods raise on an activation of an all but zero range (a barely
    trained MobileNetV3 at 32 px): the search goes on without that method and says so."""
    crops = center_crop(noisy_squares(200, seed=2), IMAGE_SIZE)
    tried = as_if_quantized(monkeypatch, closest_is("Entropy", onnx_model, swapped_model))
    fake = quantize.quantize_int8

    def no_percentile(
        fp32: Path, int8: Path, calibration: np.ndarray, setting: Setting, **kwargs: object
    ) -> None:
        if setting.method == "Percentile":
            raise ValueError("Too many bins for data range. Cannot create 2048 finite-sized bins.")
        fake(fp32, int8, calibration, setting, **kwargs)

    monkeypatch.setattr(quantize, "quantize_int8", no_percentile)
    found = search_int8(
        onnx_model,
        tmp_path / "int8.onnx",
        calibrated_on,
        crops,
        calibration_images=64,
        calibrations=ALL,
        speedup=fast,
    )
    assert found["search_failed"] == [
        {
            "method": "Percentile",
            "calibration_images": 64,
            "error": "Too many bins for data range. Cannot create 2048 finite-sized bins.",
        }
    ]
    assert [t["method"] for t in found["search"][:3]] == ["MinMax", "Entropy", "MinMax"]
    assert found["chosen"]["method"] == "Entropy" and "Percentile 64 0" not in tried


def test_nodes_in_float_are_kept_when_they_pay_and_tried_while_faster_than_fp32(
    onnx_model: Path, swapped_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1 node in float changes nothing (not kept), 2 answer as fp32 (kept), 4 are slower than fp32:
    the search stops there, and 8 are never tried."""
    crops = center_crop(noisy_squares(200, seed=2), IMAGE_SIZE)
    answers = {(m, k): swapped_model for m in METHODS for k in (0, 1, 4, 8)}
    tried = as_if_quantized(monkeypatch, answers | {("MinMax", 2): onnx_model})
    speeds = iter([1.5, 1.2, 0.9])
    found = search_int8(
        onnx_model,
        tmp_path / "int8.onnx",
        calibrated_on,
        crops,
        calibration_images=64,
        calibrations=ALL,
        speedup=lambda *_: next(speeds),
    )
    assert tried[4:] == ["MinMax 64 1", "MinMax 64 2", "MinMax 64 4"]
    assert [t.get("speedup_over_fp32") for t in found["search"][4:]] == [1.5, 1.2, 0.9]
    assert found["chosen"] == found["search"][5] and found["chosen"]["excluded_nodes"] == ["n0", "n1"]


def test_the_larger_calibration_is_passed_over_when_it_holds_no_more_photos(
    onnx_model: Path, swapped_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only 64 calibration photos: the larger MinMax sample would repeat the first try, so the search
    goes from the three methods to nodes in float, on the closest method's photos."""
    crops = center_crop(noisy_squares(100, seed=2), IMAGE_SIZE)
    answers = {(m, k): swapped_model for m in METHODS for k in (0, 1, 2, 4, 8)}
    tried = as_if_quantized(monkeypatch, answers | {("Percentile", 0): onnx_model})
    few = calibrated_on(64)
    found = search_int8(
        onnx_model,
        tmp_path / "int8.onnx",
        lambda n: few[:n],
        crops,
        calibration_images=64,
        calibrations=ALL,
        speedup=fast,
    )
    floats = [f"Percentile 64 {k}" for k in (1, 2, 4, 8)]
    assert tried == ["MinMax 64 0", "Entropy 64 0", "Percentile 64 0", *floats]
    assert found["chosen"]["method"] == "Percentile" and found["chosen"]["excluded_nodes"] == []


@pytest.fixture(scope="module")
def outlier_model(classifier: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`classifier` with one channel between layer1.0's convolutions scaled up 1000 times and scaled
    back down by the next convolution: the same function, but that tensor's int8 range is so wide
    that its other channels round to a step or two (the outlier channels of real networks)."""
    net = copy.deepcopy(classifier)
    with torch.no_grad():
        block = net.layer1[0]
        block.bn1.weight[0] *= 1000
        block.bn1.bias[0] *= 1000
        block.conv2.weight[:, 0] /= 1000
    path = tmp_path_factory.mktemp("outlier") / "model.onnx"
    export.export_onnx(
        net, path, IMAGE_SIZE, export.onnx_metadata(list(CLASSES), "resnet18", IMAGE_SIZE, RESIZE)
    )
    return path


def test_search_leaves_the_nodes_an_outlier_breaks_in_float(outlier_model: Path, tmp_path: Path) -> None:
    crops = center_crop(noisy_squares(150, seed=2), IMAGE_SIZE)
    path = tmp_path / "model.int8.onnx"
    found = search_int8(
        outlier_model, path, calibrated_on, crops, calibration_images=64, calibrations=ALL, speedup=fast
    )
    calibrations = [(t["method"], t["calibration_images"]) for t in found["search"][:4]]
    assert calibrations == [("MinMax", 64), ("Entropy", 64), ("Percentile", 64), ("MinMax", 256)]
    assert all(t["agreement"] < 0.7 for t in found["search"][:4])  # no calibration copes
    conv2 = next(
        n.name for n in onnx.load(str(outlier_model)).graph.node if "layer1.0.conv2.weight" in n.input
    )
    excluded = found["chosen"]["excluded_nodes"]
    assert excluded[0] == conv2 and found["chosen"]["agreement"] >= 0.99 and len(found["search"]) == 8
    assert f"{len(excluded)} nodes left in float" in Predictor(path).metadata["quantization"]
    labels = predicted(outlier_model, crops)
    first = tmp_path / "first.onnx"  # the first calibration alone, as the gate sees it
    quantize_int8(outlier_model, first, calibrated_on(64))
    with pytest.raises(QuantizationError, match="points below fp32"):
        gate_int8(outlier_model, first, {"test": (crops, labels)}, max_drop_points=1.0)
    assert (
        gate_int8(outlier_model, path, {"test": (crops, labels)}, max_drop_points=1.0)["gate"]["refused"]
        is False
    )


def test_search_on_a_grey_calibration_is_refused_by_the_gate(
    onnx_model: Path,
    tmp_path: Path,
    test_set: tuple[np.ndarray, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Calibrated on grey, every setting answers one class; the prepared graph's activations are
    counted once for all the settings and the ranking."""
    crops, _ = test_set
    path = tmp_path / "model.int8.onnx"
    grey = np.full((256, IMAGE_SIZE, IMAGE_SIZE, 3), 128, np.uint8)
    counted = []
    monkeypatch.setattr(quantize, "activation_bytes", lambda p: counted.append(p) or activation_bytes(p))
    found = search_int8(
        onnx_model, path, lambda n: grey[:n], crops, calibration_images=16, calibrations=ALL, speedup=fast
    )
    assert len(found["search"]) == len(METHODS) + 1 + 4
    assert max(t["agreement"] for t in found["search"]) < 0.5 and len(counted) == 1
    with pytest.raises(
        QuantizationError,
        match=r"points below fp32 100\.00% on the 300 photos the search did not see \(test;",
    ):
        gate_int8(onnx_model, path, {"test": test_set}, max_drop_points=1.0)


def test_calibration_holds_a_bounded_share_of_activations(
    onnx_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The activation count is what ONNX Runtime's calibration keeps of one photo, and a model whose
    photos pass the budget calibrates fewer at a time (ViT-L/16 at 224 px made 24 GiB of batch 8)."""
    prepared = pre_process(onnx_model, tmp_path)
    augmented = tmp_path / "all_outputs.onnx"
    modify_model_output_intermediate_tensors(str(prepared.path), str(augmented))
    photo = np.zeros((1, 3, IMAGE_SIZE, IMAGE_SIZE), np.float32)
    outputs = ort.InferenceSession(str(augmented)).run(None, {export.INPUT_NAME: photo})
    kept = sum(o.nbytes for o in outputs if o.dtype == np.float32)
    per_photo = prepared.per_photo
    assert per_photo == activation_bytes(prepared.path) and 0.9 * kept <= per_photo <= 1.1 * kept
    assert photos_held(per_photo, BATCH) == BATCH
    monkeypatch.setattr(quantize, "ACTIVATION_BYTES", 3 * kept)
    assert (photos_held(per_photo, BATCH), photos_held(per_photo, BATCH, copies=3)) == (3, 1)
    seen = []
    monkeypatch.setattr(quantize, "_Batches", lambda *args: seen.append(args[2]) or _Batches(*args))
    quantize_int8(onnx_model, tmp_path / "int8.onnx", calibrated_on(8))
    assert seen == [3]


def test_pre_process_falls_back_to_onnx_shape_inference(
    onnx_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ONNX Runtime's symbolic shape inference raises on some graphs (Swin V2's Expand): ONNX's own
    shape inference sizes the tensors instead, and calibration goes on."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    sized = pre_process(onnx_model, tmp_path).per_photo
    (tmp_path / "fallback").mkdir()

    def fails(*args: object, **kwargs: object) -> None:
        raise TypeError("object of type 'NoneType' has no len()")

    monkeypatch.setattr(SymbolicShapeInference, "infer_shapes", fails)
    fallback = pre_process(onnx_model, tmp_path / "fallback")
    assert fallback.per_photo >= sized  # ONNX's inference sizes at least the same tensors
    quantize_int8(onnx_model, tmp_path / "int8.onnx", calibrated_on(8), prepared=fallback)
    assert largest_int8_weight(tmp_path / "int8.onnx") <= WEIGHT_LIMIT


def test_equal_width_histograms_count_what_onnx_runtime_counts() -> None:
    """The Percentile calibration's histograms, counted by bin width, equal ONNX Runtime's own,
    bin for bin, over batches whose range grows (new bins) and shrinks, and so do its ranges."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    rng = np.random.default_rng(0)
    batches = [
        {
            "signed": [rng.normal(0, scale, (8, 3, 16, 16)).astype(np.float32)],
            "relu": [np.maximum(rng.normal(0, scale, (8, 32)), 0).astype(np.float32)],
        }
        for scale in (1.0, 0.5, 3.0, 2.0, 10.0, 0.1)
    ]
    theirs, ours = (HistogramCollector("percentile", True, 2048, 2048, 99.999, "same") for _ in range(2))
    for batch in batches:
        theirs.collect(batch)
        with quantize.equal_width_histograms():
            ours.collect(batch)
    assert HistogramCollector.collect_absolute_value is not quantize._collect_absolute_value  # restored
    for tensor, (hist, edges, low, high) in theirs.histogram_dict.items():
        our_hist, our_edges, our_low, our_high = ours.histogram_dict[tensor]
        assert len(edges) > 2049  # the range grew: ONNX Runtime added bins
        assert np.array_equal(our_hist, hist) and np.array_equal(our_edges, edges)
        assert (our_low, our_high) == (low, high)
    assert ours.compute_collection_result() == theirs.compute_collection_result()
