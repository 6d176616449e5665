"""Accuracy: (preset, seed) runs through the real pipeline, each recorded as a CSV row as it ends.

Accuracy study: (preset, seed) runs through the real pipeline, one at a time, each recorded as
a row of a CSV file the moment it ends, so a sweep that stops (a session's end) loses nothing and
the next start skips what is there. `--summary` prints the CSV as a table of seeds' means;
`--paired` each run against the preset's own run of the same seed (its --set `{}`, with the
same engine for the fixed weights; the preset's own run on ONNX Runtime against the one in
PyTorch), on the same val and test photos, from the kept models.

    nohup uv run python benchmarks/accuracy/sweep.py --preset mobilenet_v2-cpu-fast --seeds 0 1 2 \\
        --set train.epochs=8 --results benchmarks/results/cpu_fast.csv &

Each run applies the preset and --set over params.yaml in a throwaway git + DVC repo on the real
photos and the real weights, then times `dvc repro train` and `dvc repro evaluate` (prepare runs
once per repo, outside the timing). A row: the preset, --set, the seed, the CPU's model name and
instruction sets, ATEN_CPU_CAPABILITY (set it to `avx2` with ONEDNN_MAX_CPU_ISA=AVX2 to stand in
for a CPU without AVX512), the precision the run used, the train and evaluate stages' minutes, val
and test accuracy with their photo counts, and the checkout's commit. A row with the same preset,
--set, seed, CPU and capability is not run again. Each run's models/best.pt is kept in
WORK/sweep-models/ (for benchmarks/accuracy/evaluation_size.py)."""

from __future__ import annotations

import csv
import datetime
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/common.py
from common import DVC, ROOT, arguments, machine, nested, pipeline_repo, run

from flowerpipe.data.cache import Rows
from flowerpipe.data.prepared import load_prepared
from flowerpipe.export.gate import Paired
from flowerpipe.model.build import load_trained
from flowerpipe.model.devices import autocast_dtype, resolve_device
from flowerpipe.model.engine import fixed_weights_engine
from flowerpipe.model.inference import predict_logits
from flowerpipe.presets import leaves, preset_path, read_preset

FIELDS = [
    "preset", "set", "seed", "cpu", "cpu_flags", "capability", "precision", "fixed_weights", "train_min",
    "evaluate_min", "val_accuracy", "val_photos", "test_accuracy", "test_photos", "commit", "date",
]  # fmt: skip


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--preset", help="a preset of presets/ (name or .yaml file)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="train.seed of each run")
    parser.add_argument("--set", nargs="*", default=[], help="key=value (YAML) over the preset's params")
    parser.add_argument(
        "--weights",
        type=lambda w: None if w == "null" else w,
        default=str(ROOT.parent / "shared/weights/mobilenet_v2-imagenet.pth"),
        help="model.weights (default: ../shared/weights/mobilenet_v2-imagenet.pth; null: random)",
    )
    parser.add_argument("--csv", type=Path, default=ROOT / "benchmarks/results/cpu_fast.csv")
    parser.add_argument("--summary", action="store_true", help="print the CSV's runs as a table, run none")
    parser.add_argument("--paired", action="store_true", help="print each run's paired gain on the preset's")
    args = parser.parse_args()
    if args.summary:
        print(summary(read_rows(args.csv)))
        return
    if args.paired:
        print(paired(read_rows(args.csv), args.work / "sweep-models", args.work / "sweep-repo/data/prepared"))
        return
    if args.preset is None:
        parser.error("--preset is required to run")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    changes = leaves(read_preset(preset_path(args.preset, ROOT / "presets"), params))
    extra = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    found, capability = machine(), os.environ.get("ATEN_CPU_CAPABILITY", "native")
    head = {"preset": Path(args.preset).stem, "set": json.dumps(extra, separators=(",", ":"))}
    head |= {"cpu": found["cpu"], "cpu_flags": " ".join(found["cpu_flags"]), "capability": capability}
    precision, device = (
        {**changes, **extra}.get("train.precision", params["train"]["precision"]),
        resolve_device("auto"),
    )
    head["fixed_weights"] = fixed_weights_engine(device, autocast_dtype(device, precision))
    keys = ("preset", "set", "cpu", "capability", "fixed_weights")
    done = {(r["seed"], *(r[k] for k in keys)) for r in read_rows(args.csv)}
    todo = [s for s in args.seeds if (str(s), *(head[k] for k in keys)) not in done]
    if not todo:
        print(f"every run is in {args.csv} already")
        return
    base = {**changes, **extra, "data.source": str(args.photos.resolve()), "model.weights": args.weights}
    repo = args.work / "sweep-repo"
    pipeline_repo(repo, nested(base))
    run(repo, *DVC, "repro", "prepare")
    kept = args.work / "sweep-models"  # each run's best.pt, for the levers that need no training
    kept.mkdir(parents=True, exist_ok=True)
    for seed in todo:
        append_row(args.csv, {**head, "seed": seed, **one_run(repo, seed)})
        name = kept_name(head["preset"], head["set"], seed, capability, head["fixed_weights"])
        shutil.copy(repo / "models/best.pt", kept / name)
        print(f"seed {seed}: written to {args.csv}, its model to {kept / name}", flush=True)


def kept_name(
    preset: str, changes: str, seed: int | str, capability: str = "native", fixed: str = "pytorch"
) -> str:
    """The file a run's models/best.pt is kept as: the preset, a hash of its --set, the seed, the
    instruction set PyTorch was held to, if it was, and what ran its fixed weights if not PyTorch."""
    held = "" if capability == "native" else f"-{capability}"
    engine = "" if fixed == "pytorch" else f"-{fixed}"
    return f"{preset}-{hashlib.sha256(changes.encode()).hexdigest()[:8]}-seed{seed}{held}{engine}.pt"


def paired(rows: list[dict[str, str]], kept: Path, prepared: Path) -> str:
    """Markdown lines: each kept run's accuracy gain over its preset's own run of the same seed
    (--set `{}`; the same engine for its fixed weights, or PyTorch for the preset's own run on
    ONNX Runtime), paired on the same val and test photos of the sweep's prepared split."""
    data, device = load_prepared(prepared), resolve_device("auto")
    batch = yaml.safe_load((prepared.parents[1] / "params.yaml").read_text())["evaluate"]["batch_size"]

    @functools.cache
    def answers(path: Path, split: str) -> np.ndarray:  # as the evaluate stage scored it
        model, meta = load_trained(path)
        images = Rows(data.images, data.indices(split))
        return predict_logits(model, images, meta["image_size"], batch, device).argmax(1)

    lines = [
        "| preset | --set | fixed weights | seed | val gain (points) | test gain (points) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        # a variant against the preset's run on the same engine; the preset on ONNX Runtime against
        # the preset in PyTorch
        engine = "pytorch" if row["set"] == "{}" else row["fixed_weights"]
        base = kept / kept_name(row["preset"], "{}", row["seed"], row["capability"], engine)
        other = kept / kept_name(
            row["preset"], row["set"], row["seed"], row["capability"], row["fixed_weights"]
        )
        if other == base or not (base.exists() and other.exists()):
            continue
        gains = []
        for split in ("val", "test"):
            labels = data.labels[data.indices(split)]
            pair = Paired.of(labels, answers(base, split), answers(other, split))
            gains.append(f"{0.0 - pair.drop_points:+.2f} ± {pair.error_points:.2f} ({len(labels)} photos)")
        named = f"| {row['preset']} | {row['set']} | {row['fixed_weights']} | {row['seed']} |"
        lines.append(f"{named} {gains[0]} | {gains[1]} |")
    return "\n".join(lines)


def one_run(repo: Path, seed: int) -> dict[str, Any]:
    """Train and evaluate with train.seed = `seed` in `repo`; the row's measured fields."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["seed"] = seed
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    train_s, _ = run(repo, *DVC, "repro", "train")
    evaluate_s, _ = run(repo, *DVC, "repro", "evaluate")
    metrics = json.loads((repo / "results/evaluate/metrics.json").read_text())
    record = json.loads((repo / "results/train/run.json").read_text())
    checkout = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    return {
        "precision": record.get("precision", ""),
        "fixed_weights": record.get("fixed_weights", "pytorch"),
        "train_min": round(train_s / 60, 2),
        "evaluate_min": round(evaluate_s / 60, 2),
        **{
            f"{split}_{k}": metrics[split][m]
            for split in ("val", "test")
            for k, m in (("accuracy", "accuracy"), ("photos", "images"))
        },
        "commit": checkout.stdout.strip(),
        "date": datetime.date.today().isoformat(),
    }


def summary(rows: list[dict[str, str]]) -> str:
    """The runs as a markdown table: one line per preset, --set, CPU, capability, precision and
    engine of the fixed-weight passes, with the
    seeds' mean ± sd of the train stage's minutes and of val and test accuracy."""
    groups: dict[tuple[str, ...], list[dict[str, str]]] = {}
    for row in rows:
        key = tuple(
            row[k] for k in ("preset", "set", "cpu", "cpu_flags", "capability", "precision", "fixed_weights")
        )
        groups.setdefault(key, []).append(row)
    lines = [
        "| preset | --set | CPU; flags | capability | precision | fixed weights | seeds "
        "| train stage (min) | val | test |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (preset, changes, cpu, flags, capability, precision, fixed), runs in groups.items():
        seeds = ", ".join(r["seed"] for r in runs)
        photos = {split: "/".join(sorted({r[f"{split}_photos"] for r in runs})) for split in ("val", "test")}
        val = spread([100 * float(r["val_accuracy"]) for r in runs])
        test = spread([100 * float(r["test_accuracy"]) for r in runs])
        minutes = spread([float(r["train_min"]) for r in runs])
        lines.append(
            f"| {preset} | {changes} | {cpu}; {flags} | {capability} | {precision} | {fixed} | {seeds} "
            f"| {minutes} "
            f"| {val} % ({photos['val']}) | {test} % ({photos['test']}) |"
        )
    return "\n".join(lines)


def spread(values: list[float]) -> str:
    """mean ± sd (sd over the values, n - 1; a lone value has none)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return f"{mean:.2f}"
    sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return f"{mean:.2f} ± {sd:.2f}"


def read_rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def append_row(path: Path, row: dict[str, Any]) -> None:
    """One more row, the header first in a new file; each row is flushed as it is written."""
    new = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(row)


if __name__ == "__main__":
    main()
