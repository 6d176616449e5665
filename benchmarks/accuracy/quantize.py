"""Accuracy: each int8 option's agreement with fp32 and its test accuracy drop, paired.

int8 on real photos: for each quantization option, its divergence from fp32 on the search's
training photos (what the quantize stage's search ranks by), how often it answers like fp32 there
and on the val and test photos, its test accuracy and drop (with the paired standard error), and its
batch-1 latency against ONNX Runtime fp32 in the same process (what the stage's search chose is in
its results/export/int8.json). Prints the CPU's name and the instruction sets that decide int8 speed."""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/common.py
from common import arguments, model_arguments, model_of, prepared, report
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

from flowerpipe.data.cache import Rows
from flowerpipe.export.gate import Paired
from flowerpipe.export.latency import measure_latency
from flowerpipe.export.onnx import export_onnx, onnx_metadata
from flowerpipe.export.quantize import (
    EXCLUDED_STEPS,
    METHODS,
    MORE_CALIBRATION,
    SENSITIVITY_IMAGES,
    Setting,
    _Batches,
    calibration_indices,
    log_probabilities,
    mean_divergence,
    pre_process,
    predicted,
    quantize_int8,
    search_indices,
    sensitive_nodes,
)
from flowerpipe.runtime.predictor import Predictor
from flowerpipe.runtime.preprocess import resize_size


def symmetric_activations(fp32: Path, out: Path, calibration: Rows, folder: Path) -> None:
    """ONNX Runtime's own call with int8 activations symmetric about zero: not an option of the
    stage (it measured slower and less faithful), timed here for comparison."""
    prepared = pre_process(fp32, folder)
    with contextlib.redirect_stdout(io.StringIO()):
        quantize_static(
            prepared.path,
            out,
            _Batches(Predictor(fp32), calibration, 8),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": True},
        )


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    model_arguments(parser, "resnet18")
    parser.add_argument("--calibration-images", type=int, default=256)
    args = parser.parse_args()
    model, arch, size = model_of(args, "resnet18")
    resize = resize_size(size, 0.875)
    data = prepared(args.photos, args.work, resize)
    train, val, test = (data.indices(split) for split in ("train", "val", "test"))

    def crops(indices: np.ndarray) -> Rows:
        return Rows(data.images, indices, crop=size)

    def calibration(count: int) -> Rows:
        return crops(calibration_indices(train, count))

    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "model.onnx"
        export_onnx(model, fp32, size, onnx_metadata(data.classes, arch, size, resize))
        nodes = onnx.load(str(pre_process(fp32, Path(tmp)).path)).graph.node
        ends = (next(n.name for n in nodes if n.op_type == "Conv"),)
        ends += tuple(n.name for n in nodes if n.op_type in ("Gemm", "MatMul"))[-1:]
        settings = {"8-bit weights, MinMax (saturates without VNNI)": Setting(weight_bits=8)}
        settings |= {m: Setting(m) for m in METHODS}
        settings["MinMax, first conv and classifier in float"] = Setting(excluded_nodes=ends)
        files, sample = {"fp32": fp32}, calibration(args.calibration_images)
        for i, (name, setting) in enumerate(settings.items()):
            files[name] = Path(tmp) / f"{i}.onnx"
            quantize_int8(fp32, files[name], sample, setting)
        search = crops(search_indices(train, args.calibration_images))
        ranked = sensitive_nodes(
            fp32, pre_process(fp32, Path(tmp)), files["Percentile"], search[:SENSITIVITY_IMAGES]
        )
        for k in EXCLUDED_STEPS:
            name = f"Percentile, {k} most sensitive nodes in float"
            files[name] = Path(tmp) / f"floats{k}.onnx"
            quantize_int8(
                fp32, files[name], sample, Setting("Percentile", excluded_nodes=sum(ranked[:k], ()))
            )
        files[f"MinMax on {MORE_CALIBRATION}x the photos"] = Path(tmp) / "more.onnx"
        quantize_int8(fp32, files[f"MinMax on {MORE_CALIBRATION}x the photos"], calibration(4 * len(sample)))
        files["MinMax, symmetric int8 activations"] = Path(tmp) / "symmetric.onnx"
        symmetric_activations(fp32, files["MinMax, symmetric int8 activations"], sample, Path(tmp))
        latency = measure_latency(model, files, crops(test)[:32])
        answers = {split: predicted(fp32, crops(ix)) for split, ix in (("val", val), ("test", test))}
        reference, rows = log_probabilities(fp32, search), []
        for name, path in files.items():
            test_pair = Paired.of(data.labels[test], answers["test"], predicted(path, crops(test)))
            val_agree = int(np.sum(predicted(path, crops(val)) == answers["val"]))
            logp = log_probabilities(path, search)
            divergence = mean_divergence(reference, logp)
            search_agree = int(np.sum(logp.argmax(1) == reference.argmax(1)))
            ms = latency[f"onnxruntime_{name}"]["batch1_ms"]
            rows.append(
                {
                    "model": name,
                    "search divergence": f"{divergence:.5f}",
                    "search agreement": f"{search_agree}/{len(search)}",
                    "val agreement": f"{val_agree}/{len(val)}",
                    "test agreement": f"{test_pair.agree}/{test_pair.photos}",
                    "test accuracy": test_pair.accuracy["int8"],
                    "test drop (points)": f"{test_pair.drop_points:.2f} ± {test_pair.error_points:.2f}",
                    "batch-1 ms": ms,
                    "vs ORT fp32": round(latency["onnxruntime_fp32"]["batch1_ms"] / ms, 2),
                }
            )
    report(args.results, f"quantize-{arch}", rows, {"arch": arch, "size": size})


if __name__ == "__main__":
    main()
