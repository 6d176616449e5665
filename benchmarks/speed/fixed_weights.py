"""Speed: the passes with fixed weights (eval mode) in each engine, and their logits' distance.

Passes with fixed weights (the features-once pass, validation, evaluate): images/s of one model
in eval mode at batch 32 (224 px without --weights), each engine in turn in one process, and how
far its logits are from PyTorch eager fp32. Engines: eager (as validation and evaluate ran),
BatchNorm folded into the convolutions (torch.fx, `evaluation.for_inference`), TorchScript frozen,
fp32 and bf16 autocast, and ONNX Runtime. Then each pass as flowerpipe runs it (`for_inference`:
ONNX Runtime on the CPU in float32) against its folded eager copy: the features-once pass (the
model without its head), the frozen blocks of --freeze on --train-size crops (a training step's
fixed part) and the whole model (validation, evaluate), with the seconds its first batch takes
(export in memory and the check against PyTorch)."""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/common.py
from common import arguments, model_arguments, model_of, report

from flowerpipe.export.onnx import export_onnx, onnx_metadata
from flowerpipe.model.build import headless
from flowerpipe.model.inference import for_inference
from flowerpipe.runtime.predictor import Predictor
from flowerpipe.runtime.preprocess import to_model_input


def _timed(
    run: Callable[[np.ndarray], np.ndarray], batch: np.ndarray, rounds: int
) -> tuple[float, np.ndarray]:
    """Images per second (the best of `rounds` passes after one warm-up) and the logits."""
    logits = run(batch)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        run(batch)
        best = min(best, time.perf_counter() - start)
    return len(batch) / best, logits


def _torch_engine(model: torch.nn.Module, bf16: bool) -> Callable[[np.ndarray], np.ndarray]:
    def run(batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(to_model_input(batch)).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            return model(x).float().detach().numpy()

    return run


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    model_arguments(parser, "mobilenet_v2")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--freeze", nargs="+", default=[f"features.{i}" for i in range(7)], help="the frozen blocks"
    )
    parser.add_argument("--train-size", type=int, default=176, help="the side of the training crops")
    args = parser.parse_args()
    model, arch, size = model_of(args, "mobilenet_v2")
    model = model.to(memory_format=torch.channels_last)
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (32, size, size, 3), dtype=np.uint8)  # uint8 NHWC crops
    folded = for_inference(model).folded  # what validation, evaluate and the features pass ran before
    with torch.inference_mode():
        example = torch.from_numpy(to_model_input(batch[:2])).contiguous(memory_format=torch.channels_last)
        scripted = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, example)))
    engines = {
        "eager (as validation and evaluate ran before)": _torch_engine(model, bf16=False),
        "BatchNorm folded (torch.fx)": _torch_engine(folded, bf16=False),
        "TorchScript frozen, optimize_for_inference": _torch_engine(scripted, bf16=False),
        "eager, bf16 autocast": _torch_engine(model, bf16=True),
        "BatchNorm folded, bf16 autocast": _torch_engine(folded, bf16=True),
    }
    with tempfile.TemporaryDirectory() as tmp:
        onnx = Path(tmp) / "model.onnx"
        export_onnx(model, onnx, size, onnx_metadata([str(i) for i in range(5)], arch, size, size))
        engines["ONNX Runtime fp32"] = Predictor(onnx, threads=torch.get_num_threads()).logits
        reference, rows = None, []
        for name, engine in engines.items():
            speed, logits = _timed(engine, batch, args.rounds)
            reference = logits if reference is None else reference
            rows.append(
                {
                    "engine": name,
                    "img/s": round(speed, 1),
                    "vs eager": round(speed / rows[0]["img/s"], 2) if rows else 1.0,
                    "max |logit - eager fp32|": float(np.abs(logits - reference).max()),
                }
            )
    passes = _passes(model, args.freeze, args.train_size, size, args.rounds)
    report(args.results, f"fixed-weights-{arch}", rows + passes, {"batch": 32, "size": size})


def _passes(model: torch.nn.Module, freeze: list[str], train_size: int, size: int, rounds: int) -> list[dict]:
    """Each pass with fixed weights, folded eager against `for_inference` (ONNX Runtime), at batch 32."""
    frozen = torch.nn.Sequential(*(model.get_submodule(name) for name in freeze))
    cases = {
        f"features once: the model without its head, {size} px": (headless(model), size),
        f"a step's frozen blocks ({freeze[0]}-{freeze[-1]}), {train_size} px": (frozen, train_size),
        f"validation, evaluate: the whole model, {size} px": (model, size),
    }
    rows = []
    for name, (net, side) in cases.items():
        x = torch.randn(32, 3, side, side).contiguous(memory_format=torch.channels_last)
        engine = for_inference(net)
        with torch.inference_mode():
            start = time.perf_counter()
            ours = engine(x)  # the first batch of a shape: export and check
            first = time.perf_counter() - start
            eager = engine.folded(x)
            speeds = [_timed(lambda b, f=f: f(b), x, rounds)[0] for f in (engine.folded, engine)]
        rows.append(
            {
                "engine": f"{name}: for_inference",
                "img/s": round(speeds[1], 1),
                "vs eager": round(speeds[1] / speeds[0], 2),
                "folded eager img/s": round(speeds[0], 1),
                "max |logit - eager fp32|": float((ours - eager).abs().max()),
                "first batch s": round(first, 2),
            }
        )
    return rows


if __name__ == "__main__":
    main()
