"""Accuracy: every torchvision classifier through training, export and parity (the compatibility matrix).

Every torchvision classifier through flowerpipe's code paths: a compatibility matrix.

Each of `torchvision.models.list_models(module=torchvision.models)` runs, in a process of its own,
at the smallest input side flowerpipe accepts for it (`architectures.input_side`): params.yaml
validation; build with random weights and a new head; one training step with the default
augmentation; one with `freeze: backbone` and `augment: []` (its features computed once, or the
whole frozen model where the head is not the last step); save and reload as the stages do;
evaluation on the test split; ONNX export with the parity gate; int8 quantization with its search
and gate. The settings are params.yaml's, except: the model's smallest side for evaluation and
training crops alike (`image_scale: 1`), random weights, one epoch of one batch, and no
head-only first epoch, so that every layer learns in the step. The photos are synthetic: accuracy
is not the point, the steps' mechanics are. A model that validation refuses is not run. Where the
smallest side is above data.image_size's floor for the layers' sake (not RegNet's: see
`architectures.BF16_SIDES`), or the model takes one side only, the row also checks that the side is
exact: validation refuses one pixel less (32 more for a one-side model), and the model itself fails
there.

    uv run python benchmarks/accuracy/matrix.py                   # all 80, 52 min on 2 cores (docs/models.md)
    uv run python benchmarks/accuracy/matrix.py --models resnet18,vit_b_16
    uv run python benchmarks/accuracy/matrix.py --models mnasnet0_5 --update   # rerun one row of the table
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.models as tvm
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/common.py
from common import ROOT, arguments, prepared, report
from PIL import Image

from flowerpipe.config import config_from_dict
from flowerpipe.core.console import log
from flowerpipe.core.errors import ConfigError, QuantizationError
from flowerpipe.data.cache import Rows
from flowerpipe.export.gate import gate_int8
from flowerpipe.export.onnx import check_parity, export_onnx, onnx_metadata
from flowerpipe.export.quantize import calibration_indices, search_indices, search_int8
from flowerpipe.model.architectures import BF16_SIDES, SMALLEST_SIDE, input_side
from flowerpipe.model.build import build_model, load_trained, save_trained
from flowerpipe.model.checks import check_trainable
from flowerpipe.model.inference import predict_logits
from flowerpipe.report.metrics import classification_metrics
from flowerpipe.runtime.preprocess import resize_size
from flowerpipe.training.loop import fit

CLASSES = ("amber", "azure", "jade")
PER_CLASS = 10
STEPS = ("build", "train", "frozen", "evaluate", "export", "int8")
CPU = torch.device("cpu")


def make_photos(root: Path) -> Path:
    """Small JPEGs, `PER_CLASS` per class: noise with a block of the class's colour."""
    rng = np.random.default_rng(0)
    colours = {"amber": (230, 150, 20), "azure": (30, 120, 230), "jade": (20, 170, 90)}
    for label in CLASSES:
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(PER_CLASS):
            pixels = rng.integers(0, 160, (60, 80, 3), dtype=np.uint8)
            top, left = rng.integers(0, 30), rng.integers(0, 40)
            pixels[top : top + 30, left : left + 40] = colours[label]
            Image.fromarray(pixels).save(root / label / f"{i:02d}.jpg", quality=90)
    return root


def timed(row: dict[str, Any], step: str, call: Callable[[], Any]) -> Any:
    """Run one step, recording its seconds (or its error) in `row`; an error ends the model's run."""
    start = time.perf_counter()
    try:
        result = call()
    except Exception as exc:
        row[step] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        row["traceback"] = traceback.format_exc()
        raise
    row[step] = round(time.perf_counter() - start, 1)
    return result


def run_one(arch: str, photos: Path, work: Path) -> dict[str, Any]:
    """The matrix row of one model (see the module's docstring)."""
    side, fixed = input_side(arch, None)
    row: dict[str, Any] = {"model": arch, "side": side, "fixed": fixed}
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["image_size"] = side
    params["model"].update(arch=arch, weights=None)
    # training crops of the smallest side too; every layer learns in the one step
    params["train"].update(image_scale=1.0, head_epochs=0)
    try:
        cfg = check_trainable(config_from_dict(params))
    except ConfigError as exc:
        row["refused"] = str(exc)
        return row
    data = prepared(photos, work, resize_size(side, cfg.data.crop_ratio))
    train, val, test = (data.indices(s) for s in ("train", "val", "test"))
    one_step = replace(cfg.train, epochs=1, batch_size=len(train))
    classes = len(data.classes)

    def trained(train_cfg: Any, model: torch.nn.Module | None = None) -> torch.nn.Module:
        model = model or build_model(arch, None, classes)
        result = fit(
            model,
            train_cfg,
            images=data.images,
            labels=data.labels,
            train_idx=train,
            val_idx=val,
            image_size=side,
            device=CPU,
        )
        model.load_state_dict(result.best_state)
        return model

    try:
        model = timed(row, "build", lambda: build_model(arch, None, classes))
        row["params_m"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 2)
        if (side > SMALLEST_SIDE or fixed) and not arch.startswith(BF16_SIDES):
            row["side_exact"] = _exact(arch, side, fixed, model)
        model = timed(row, "train", lambda: trained(one_step, model))
        fallback = Messages("the head is not the model's last step")
        timed(row, "frozen", lambda: trained(replace(one_step, freeze="backbone", augment=[])))
        row["frozen_path"] = "whole model" if fallback.seen else "features once"
        with tempfile.TemporaryDirectory() as tmp:
            best = Path(tmp) / "best.pt"
            save_trained(model, best, arch=arch, classes=data.classes, image_size=side)
            model, _ = load_trained(best)
            logits = timed(
                row,
                "evaluate",
                lambda: predict_logits(model, Rows(data.images, test), side, cfg.evaluate.batch_size, CPU),
            )
            row["test_accuracy"] = classification_metrics(logits, data.labels[test], data.classes)[0][
                "accuracy"
            ]
            fp32, int8 = Path(tmp) / "model.onnx", Path(tmp) / "model.int8.onnx"
            metadata = onnx_metadata(data.classes, arch, side, resize_size(side, cfg.data.crop_ratio))
            e = cfg.export

            def export() -> dict[str, Any]:
                export_onnx(model, fp32, side, metadata, opset=e.opset)
                return check_parity(model, fp32, Rows(data.images, val), side, e)

            row["max_abs_diff"] = float(f"{timed(row, 'export', export)['max_abs_diff']:.2g}")
            row["onnx_mb"] = round(fp32.stat().st_size / 1e6, 1)

            def quantize() -> None:
                def crops(indices: np.ndarray) -> Rows:
                    return Rows(data.images, indices, crop=side)

                try:
                    search_int8(
                        fp32,
                        int8,
                        lambda n: crops(calibration_indices(train, n)),
                        crops(search_indices(train, e.calibration_images)),
                        calibration_images=e.calibration_images,
                        calibrations=e.calibrations,
                    )
                    judged = {
                        name: (crops(ix), data.labels[ix]) for name, ix in (("val", val), ("test", test))
                    }
                    gate_int8(fp32, int8, judged, max_drop_points=e.max_accuracy_drop)
                    row["int8_gate"] = "passed"
                except QuantizationError as exc:  # the gate's verdict on a random model: it did its job
                    row["int8_gate"] = f"refused: {str(exc).partition(': ')[2]}"

            timed(row, "int8", quantize)
    except Exception:
        pass  # the failing step holds its error
    return row


class Messages(logging.Handler):
    """Whether flowerpipe logged a message containing `text` since this was made."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text, self.seen = text, False
        log.addHandler(self)
        log.setLevel(logging.INFO)

    def emit(self, record: logging.LogRecord) -> None:
        self.seen |= self.text in record.getMessage()


def _exact(arch: str, side: int, fixed: bool, model: torch.nn.Module) -> bool:
    """Whether validation refuses one pixel less than `side` (a side 32 px larger for a model that
    takes one side only) and the model fails there too."""
    wrong = side + 32 if fixed else side - 1
    try:
        check_trainable(
            config_from_dict({"data": {"image_size": wrong}, "model": {"arch": arch, "weights": None}})
        )
        return False
    except ConfigError:
        pass
    try:
        with torch.inference_mode():
            model.eval()(torch.zeros(2, 3, wrong, wrong))
        return False
    except Exception:  # each model fails in its own way
        return True


def markdown(rows: list[dict[str, Any]]) -> str:
    """The matrix as docs/models.md shows it: each step's seconds, or its error."""
    steps = ("build", "train step", "frozen backbone", "evaluate", "export + parity", "int8 + gate")
    lines = [
        f"| model | params | side | {' | '.join(steps)} |",
        "| --- | ---: | --- |" + " ---: |" * len(steps),
    ]
    for row in rows:
        least, fixed = input_side(row["model"], None)
        side = f"{least} only" if fixed else f">= {least}"
        if "refused" in row or "crashed" in row:
            why = (
                f"refused: {row['refused'].partition(': ')[2]}"
                if "refused" in row
                else f"**crashed: {row['crashed'][-200:]}**"
            )
            lines.append(f"| {row['model']} | | {side} | {why} | | | | | |")
            continue
        cells = [_seconds(row.get(step)) for step in STEPS]
        if isinstance(row.get("frozen"), float):
            cells[2] += f" ({row['frozen_path']})"
        if row.get("int8_gate", "").startswith("refused"):
            cells[5] += " (gate refused)"
        lines.append(f"| {row['model']} | {row['params_m']:.1f} M | {side} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def _seconds(value: Any) -> str:
    return f"{value:.1f} s" if isinstance(value, float) else "not run" if value is None else f"**{value}**"


def _ended(returncode: int) -> str:
    """How a process that printed nothing ended: a signal (SIGKILL: most often the kernel, for memory)."""
    return f"killed by {signal.Signals(-returncode).name}" if returncode < 0 else f"exit code {returncode}"


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--models", help="comma-separated names (default: all of list_models)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per model")
    parser.add_argument("--one", help="run one model in this process and print its row")
    parser.add_argument(
        "--update", action="store_true", help="keep the other models' rows of the results' matrix.json"
    )
    args = parser.parse_args()
    work = args.work / "matrix"
    photos = work / "photos"
    if args.one:
        row = run_one(args.one, photos, work)
        print(json.dumps(row))
        return
    if not photos.exists():
        make_photos(photos)
    models = args.models.split(",") if args.models else tvm.list_models(module=tvm)
    rows = []
    for arch in models:
        began = time.perf_counter()
        try:
            done = subprocess.run(
                [sys.executable, __file__, "--one", arch, "--work", str(args.work)],
                capture_output=True,
                text=True,
                timeout=args.timeout,
                cwd=ROOT,
            )
            lines = done.stdout.strip().splitlines()
            row = (
                json.loads(lines[-1])
                if done.returncode == 0 and lines
                else {"model": arch, "crashed": done.stderr[-2000:] or _ended(done.returncode)}
            )
        except subprocess.TimeoutExpired:
            row = {"model": arch, "crashed": f"over {args.timeout} s"}
        row["total_s"] = round(time.perf_counter() - began, 1)
        (work / "logs").mkdir(exist_ok=True)
        (work / "logs" / f"{arch}.json").write_text(json.dumps(row, indent=2))
        row.pop("traceback", None)
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(f"{len(rows)} models in {sum(row['total_s'] for row in rows) / 60:.1f} min")
    if args.update:
        ran = {row["model"]: row for row in rows}
        kept = json.loads((args.results / "matrix.json").read_text())["rows"]
        rows = [ran.pop(row["model"], row) for row in kept] + list(ran.values())
    minutes = sum(row["total_s"] for row in rows) / 60
    report(args.results, "matrix", rows, {"minutes": minutes})
    table = args.results / "matrix.md"
    table.write_text(markdown(rows))
    print(f"written: {table}")


if __name__ == "__main__":
    main()
