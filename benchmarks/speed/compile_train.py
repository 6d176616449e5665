"""Speed: the training step eager, with fixed blocks folded, on ONNX Runtime, and torch.compile.

torch.compile for training on the CPU: the training step flowerpipe runs (channels_last, label
smoothing, SGD with momentum, some blocks frozen as a preset freezes them), eager with the frozen
blocks as they are, eager with their BatchNorm folded, folded and run by ONNX Runtime (what
flowerpipe runs on the CPU in fp32) and `torch.compile` (unless --no-compile), in one process,
rounds alternating. Prints images/s after warm-up, the seconds the first steps
took (compiling), whether two compiled runs from the same start give identical losses
(deterministic), and how far each mode's losses are from eager's.

    uv run python benchmarks/speed/compile_train.py --size 176 \
        --freeze features.0 features.1 features.2 features.3 features.4 features.5 features.6"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/common.py
from common import arguments, model_arguments, model_of, report
from torch import nn

from flowerpipe.model.build import num_outputs
from flowerpipe.model.inference import folded_where_fixed

FOLDED = "eager, frozen blocks folded"
ORT = "frozen blocks folded, on ONNX Runtime (flowerpipe)"


def steps(model: nn.Module, net: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> list[float]:
    """Train `net` (the model, or its compiled form) on `batches`; returns each step's loss."""
    torch.manual_seed(0)  # dropout's draws
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.003, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    losses = []
    for x, y in batches:
        loss = loss_fn(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def gap(losses: list[float], eager: list[float]) -> list[float]:
    """How far `losses` are from eager's: at the first step (rounding), and the most over all steps
    (training amplifies it). Compiled code draws dropout's masks its own way."""
    differences = [abs(a - b) for a, b in zip(losses, eager, strict=True)]
    return [differences[0], max(differences)]


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    model_arguments(parser, "mobilenet_v2")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before the rounds")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--freeze", nargs="*", default=[], help="modules that do not learn")
    parser.add_argument("--no-compile", action="store_true", help="leave torch.compile out")
    args = parser.parse_args()
    start, arch, size = model_of(args, "mobilenet_v2")
    start.train().to(memory_format=torch.channels_last)
    for name in args.freeze:
        start.get_submodule(name).requires_grad_(False).eval()
    generator = torch.Generator().manual_seed(0)
    classes = num_outputs(start)
    shape = (args.batch, 3, size, size)
    batches = [
        (
            torch.randn(shape, generator=generator).contiguous(memory_format=torch.channels_last),
            torch.randint(0, classes, (args.batch,), generator=generator),
        )
        for _ in range(args.warmup + args.steps)
    ]

    def fresh(mode: str) -> tuple[nn.Module, nn.Module]:
        model = copy.deepcopy(start)
        if mode == "compiled":
            return model, torch.compile(model)
        if mode in (FOLDED, ORT):
            return model, folded_where_fixed(model, args.freeze, onnx_runtime=mode == ORT)
        return model, model

    modes = ("eager", FOLDED, ORT) if args.no_compile else ("eager", FOLDED, ORT, "compiled")
    nets = {mode: fresh(mode) for mode in modes}
    t0 = time.perf_counter()
    first = {mode: steps(*nets[mode], batches) for mode in reversed(modes)}
    first_seconds = time.perf_counter() - t0
    again = None if args.no_compile else steps(*fresh("compiled"), batches)
    timed = {mode: [] for mode in nets}
    for _ in range(args.rounds):
        for mode, pair in nets.items():
            t0 = time.perf_counter()
            steps(*pair, batches[args.warmup :])
            timed[mode].append(args.batch * args.steps / (time.perf_counter() - t0))
    eager = max(timed["eager"])
    rows = [
        {"mode": mode, "img/s (best round)": max(r), "rounds": ", ".join(f"{v:.1f}" for v in r)}
        | {"vs eager": max(r) / eager}
        for mode, r in timed.items()
    ]
    extra = {
        "arch": arch,
        "size": size,
        "batch": args.batch,
        "frozen": args.freeze,
        "first_steps_seconds_all_modes": first_seconds,
        "compiled_deterministic": None if again is None else first["compiled"] == again,
        "loss_difference_vs_eager_first_and_largest": {
            mode: gap(first[mode], first["eager"]) for mode in modes[1:]
        },
    }
    report(args.results, f"compile-train-{arch}", rows, extra)
    print({k: v for k, v in extra.items() if k != "frozen"})


if __name__ == "__main__":
    main()
