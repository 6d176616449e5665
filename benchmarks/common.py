"""What the benchmarks share: their arguments, the real photos prepared once, the table and JSON
they write. Run a benchmark from the repository root: `uv run python benchmarks/speed/train.py`."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the flowerpipe package of this checkout
sys.path.insert(0, str(ROOT / "tests"))  # the throwaway DVC repo the tests run in

from helpers.repo import DvcRepo  # noqa: E402

from flowerpipe.config import SplitConfig  # noqa: E402
from flowerpipe.data.prepared import Prepared, load_prepared  # noqa: E402
from flowerpipe.model.build import build_model, load_trained  # noqa: E402
from flowerpipe.prepare.scan import prepare  # noqa: E402
from flowerpipe.runtime.preprocess import resize_size  # noqa: E402


def arguments(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--photos",
        type=Path,
        default=Path(os.environ.get("FLOWERPIPE_REAL_DATA", ROOT.parent / "shared/data/flower_photos")),
        help="the flower_photos folder (default: $FLOWERPIPE_REAL_DATA or ../shared/data/flower_photos)",
    )
    parser.add_argument(
        "--work", type=Path, default=ROOT / ".bench", help="where prepared caches and scratch files go"
    )
    parser.add_argument(
        "--results", type=Path, default=ROOT / "benchmarks" / "results", help="where NAME.json is written"
    )
    return parser


def recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """--prepared, --arch, --weights, --size and --set: what a benchmark that fine-tunes with
    params.yaml's recipe takes."""
    parser.add_argument("--prepared", type=Path, help="a prepared folder to use instead of --photos")
    parser.add_argument("--arch", default="mobilenet_v2")
    parser.add_argument(
        "--weights",
        type=lambda w: None if w == "null" else w,
        default=str(ROOT.parent / "shared/weights/mobilenet_v2-imagenet.pth"),
        help="model.weights: a state_dict file, a torchvision weights name, or null",
    )
    parser.add_argument(
        "--size", type=int, help="data.image_size, the evaluation crop (default: params.yaml's)"
    )
    parser.add_argument("--set", nargs="*", default=[], help="train key=value (YAML) over params.yaml's")


def recipe_data(args: argparse.Namespace) -> tuple[dict[str, Any], Prepared, int, dict[str, Any]]:
    """params.yaml, the photos prepared at the resize of `args.size` (params.yaml's where unset,
    written back to args), that resize, and the train keys of --set."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    args.size = args.size or params["data"]["image_size"]
    resize = resize_size(args.size, params["data"]["crop_ratio"])
    data = load_prepared(args.prepared) if args.prepared else prepared(args.photos, args.work, resize)
    changes = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    return params, data, resize, changes


def model_arguments(parser: argparse.ArgumentParser, arch: str) -> None:
    """--weights (a trained model to measure) and --size (the input side of `arch`, random weights,
    without one)."""
    parser.add_argument("--weights", type=Path, help=f"a models/best.pt (default: {arch}, random weights)")
    parser.add_argument("--size", type=int, default=224, help="the input size without --weights")


def model_of(args: argparse.Namespace, arch: str) -> tuple[torch.nn.Module, str, int]:
    """The model `model_arguments` asked for, in eval mode, with its arch and input side."""
    if args.weights:
        model, meta = load_trained(args.weights)
        return model, meta["arch"], meta["image_size"]
    return build_model(arch, None, 5, seed=0).eval(), arch, args.size


# Runs a command and prints the largest resident memory of any process it started, in KiB.
PEAK_RSS = (
    "import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
    "print('peak_rss_kib', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
    "sys.exit(code)"
)
DVC = (sys.executable, "-m", "dvc")


def run(repo: Path, *args: str) -> tuple[float, str]:
    """Seconds and output of a command in `repo`; stops the benchmark if it fails."""
    start = time.perf_counter()
    done = subprocess.run(args, cwd=repo, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return seconds, done.stdout + done.stderr


def run_measured(repo: Path, *args: str) -> tuple[float, float, str]:
    """Seconds, peak RSS (GiB, of the largest process) and output of a command in `repo`."""
    seconds, output = run(repo, sys.executable, "-c", PEAK_RSS, *args)
    return seconds, int(re.search(r"peak_rss_kib (\d+)", output).group(1)) / 2**20, output


def pipeline_repo(folder: Path, changes: dict[str, dict[str, Any]], checkout: Path = ROOT) -> dict[str, Any]:
    """A new git + DVC repo in `folder` (tests/helpers/repo.py's, which the tests run in) holding
    the pipeline of `checkout` with `changes` made to its params (section by section); this
    process's commands then run with its environment. Returns the params."""
    shutil.rmtree(folder, ignore_errors=True)
    repo = DvcRepo(folder, checkout=checkout)
    repo.set_params(changes)
    repo.commit("params")
    os.environ.update(repo.env)  # the stages import the repo's copy of the package (see environment)
    return yaml.safe_load((folder / "params.yaml").read_text())


def nested(flat: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Dotted keys (section.key) as params sections."""
    sections: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        section, _, name = key.partition(".")
        sections.setdefault(section, {})[name] = value
    return sections


def commit(repo: Path, message: str) -> None:
    """Commit everything in a `pipeline_repo`."""
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", message, "--allow-empty")


def prepared(photos: Path, work: Path, resize: int) -> Prepared:
    """The photos decoded into flowerpipe's cache at `resize`, made once per work folder."""
    folder = work / f"prepared-{resize}"
    if not (folder / "manifest.csv").exists():
        split = SplitConfig(val=0.15, test=0.15, seed=42)
        prepare(photos, folder, split, resize=resize, workers=os.cpu_count() or 1)
    return load_prepared(folder)


# How the reference training loop steps, as TrainConfig keys over the shipped recipe: the reference
# recipe of presets/ without its epochs and augmentation (one constant rate for every layer from the
# first step, full-size crops, no moving average of the weights).
LIKE_THE_REFERENCE = {
    key: value
    for key, value in yaml.safe_load((ROOT / "presets/resnet18-reference.yaml").read_text())["train"].items()
    if key not in ("epochs", "augment")
}

# The CPU features that decide bf16 training speed and int8 kernels (VNNI, AMX), from lscpu's list.
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def _cpuinfo(field: str) -> str | None:
    """The first value of `field` in /proc/cpuinfo (None where there is none)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith(field)), None)


def cpu_flags() -> list[str]:
    """Which of ISA_FLAGS this CPU has."""
    flags = (_cpuinfo("flags") or "").split()
    return [flag for flag in ISA_FLAGS if flag in flags]


def machine() -> dict[str, Any]:
    cpu = _cpuinfo("model name") or platform.processor() or platform.machine()
    return {
        "cpu": cpu,
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
    }


def report(
    results: Path, name: str, rows: Sequence[dict[str, Any]], extra: dict[str, Any] | None = None
) -> None:
    """Print `rows` as a table and the CPU's name and instruction sets beside it, and write them,
    with the machine, to `results`/NAME.json."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    cells = [[_cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
    found = machine()
    flags = " ".join(found["cpu_flags"]) or "none of " + ", ".join(ISA_FLAGS)
    print(f"cpu: {found['cpu']} ({flags}); gpu: {found['gpu']}")
    out = results / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": found, "rows": list(rows), **(extra or {})}, indent=2) + "\n")
    print(f"written: {out}")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)
