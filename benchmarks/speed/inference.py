"""Speed: PyTorch eager against ONNX Runtime fp32 and int8 at batch 1 and 32.

Inference: PyTorch eager against ONNX Runtime fp32 and int8 at batch 1 and 32, measured by the
export stage's own code (`flowerpipe.export.latency`), on real photos."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/common.py
from common import arguments, model_arguments, model_of, prepared, report

from flowerpipe.export.latency import measure_latency
from flowerpipe.export.onnx import export_onnx, onnx_metadata
from flowerpipe.export.quantize import calibration_indices, quantize_int8
from flowerpipe.runtime.preprocess import center_crop, resize_size


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    model_arguments(parser, "resnet18")
    args = parser.parse_args()
    model, arch, size = model_of(args, "resnet18")
    data = prepared(args.photos, args.work, resize_size(size, 0.875))
    calibration = center_crop(np.asarray(data.images[calibration_indices(data.indices("train"), 256)]), size)
    crops = center_crop(np.asarray(data.images[data.indices("test")[:32]]), size)
    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = Path(tmp) / "model.onnx", Path(tmp) / "model.int8.onnx"
        export_onnx(model, fp32, size, onnx_metadata(data.classes, arch, size, resize_size(size, 0.875)))
        quantize_int8(fp32, int8, calibration)
        latency = measure_latency(model, {"fp32": fp32, "int8": int8}, crops)
    eager = latency["pytorch_eager"]
    rows = []
    for engine in ("pytorch_eager", "onnxruntime_fp32", "onnxruntime_int8"):
        stats = latency[engine]
        rows.append(
            {
                "engine": engine,
                "batch-1 ms": stats["batch1_ms"],
                "vs eager": stats["batch1_ms"] / eager["batch1_ms"],
                "vs ORT fp32": stats["batch1_ms"] / latency["onnxruntime_fp32"]["batch1_ms"],
                "batch-32 img/s": stats["batch32_images_per_second"],
            }
        )
    report(args.results, "inference", rows, {"size": size, "threads": latency["threads"]})


if __name__ == "__main__":
    main()
