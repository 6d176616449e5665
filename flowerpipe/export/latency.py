"""Inference speed of the trained model as PyTorch eager and as ONNX Runtime files, timed the same
way in one process on the CPU, so that their ratios mean something."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from flowerpipe.runtime.predictor import Predictor
from flowerpipe.runtime.preprocess import to_model_input

BATCH = 32


def median_seconds(
    calls: Mapping[str, Callable[[], object]], warmup: int, runs: int, rounds: int = 5
) -> dict[str, float]:
    """Median wall time of each call over `runs` timed calls after `warmup` untimed ones. The calls
    take turns, `runs / rounds` at a time, so that a slow spell of a shared machine falls on all of
    them alike and their ratios hold."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for turn in range(rounds):
        for name, call in calls.items():
            for _ in range(runs * (turn + 1) // rounds - runs * turn // rounds):
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(spent) for name, spent in times.items()}


def measure_latency(
    model: nn.Module,
    onnx_models: Mapping[str, str | os.PathLike[str]],
    crops: np.ndarray,
    runs: int = 100,
    batch_runs: int = 10,
) -> dict[str, Any]:
    """Batch-1 latency (median ms over `runs`) and batch-32 throughput (images/s from the median of
    `batch_runs`) of `model` in PyTorch eager fp32 and of each named ONNX file in ONNX Runtime.

    `crops` are uint8 NHWC images of the model's input size; all engines use the same threads."""
    threads = torch.get_num_threads()
    batch = np.resize(crops, (BATCH, *crops.shape[1:]))  # repeats the crops if there are fewer
    model = model.eval().cpu()

    def eager(x: np.ndarray) -> object:
        with torch.inference_mode():
            return model(torch.from_numpy(to_model_input(x)))

    engines: dict[str, Callable[[np.ndarray], object]] = {"pytorch_eager": eager}
    for name, path in onnx_models.items():
        engines[f"onnxruntime_{name}"] = Predictor(path, threads=threads).logits
    one = median_seconds({name: lambda run=run: run(batch[:1]) for name, run in engines.items()}, 10, runs)
    many = median_seconds({name: lambda run=run: run(batch) for name, run in engines.items()}, 2, batch_runs)
    result: dict[str, Any] = {"threads": threads}
    for name in engines:
        result[name] = {
            "batch1_ms": round(1000 * one[name], 3),
            "batch32_images_per_second": round(BATCH / many[name], 1),
        }
    base = result["pytorch_eager"]
    for name in engines:
        result[name]["batch1_speedup"] = round(base["batch1_ms"] / result[name]["batch1_ms"], 2)
        result[name]["batch32_speedup"] = round(
            result[name]["batch32_images_per_second"] / base["batch32_images_per_second"], 2
        )
    return result
