"""measure_latency times PyTorch eager and each ONNX file alike and reports ratios to eager."""

from __future__ import annotations

from pathlib import Path

import torch
from helpers.photos import IMAGE_SIZE, noisy_squares

from flowerpipe.export.latency import measure_latency, median_seconds
from flowerpipe.runtime.preprocess import center_crop


def test_latency_of_every_engine(classifier: torch.nn.Module, onnx_model: Path) -> None:
    crops = center_crop(noisy_squares(5), IMAGE_SIZE)  # fewer than a batch: repeated to 32
    result = measure_latency(
        classifier, {"fp32": onnx_model, "copy": onnx_model}, crops, runs=5, batch_runs=2
    )
    assert result["threads"] == torch.get_num_threads()
    assert set(result) == {"threads", "pytorch_eager", "onnxruntime_fp32", "onnxruntime_copy"}
    assert result["pytorch_eager"]["batch1_speedup"] == result["pytorch_eager"]["batch32_speedup"] == 1.0
    for name in ("onnxruntime_fp32", "onnxruntime_copy"):
        stats = result[name]
        assert stats["batch1_ms"] > 0 and stats["batch32_images_per_second"] > 0
        ratio = result["pytorch_eager"]["batch1_ms"] / stats["batch1_ms"]
        assert abs(stats["batch1_speedup"] - ratio) <= 0.01
        ratio = stats["batch32_images_per_second"] / result["pytorch_eager"]["batch32_images_per_second"]
        assert abs(stats["batch32_speedup"] - ratio) <= 0.01


def test_engines_take_turns_so_a_slow_spell_falls_on_all() -> None:
    order: list[str] = []
    calls = {name: lambda name=name: order.append(name) for name in ("a", "b")}
    seconds = median_seconds(calls, warmup=1, runs=7, rounds=3)
    assert set(seconds) == {"a", "b"} and all(s >= 0 for s in seconds.values())
    assert order == ["a", "b"] + ["a"] * 2 + ["b"] * 2 + ["a"] * 2 + ["b"] * 2 + ["a"] * 3 + ["b"] * 3
