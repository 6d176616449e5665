"""Speed: `dvc repro` stage by stage on the real photos, for a preset, one checkout against another.

Each checkout's pipeline (`--checkouts`: the one before a change, then this one) runs `dvc repro`
once, from nothing, in a throwaway git + DVC repo on the real photos and the shared weights, with
the preset's keys (this checkout's presets/) and --set over its params.yaml; each stage's minutes
are its own "done in" line.

    uv run python benchmarks/speed/stages.py --checkouts ../before . --set "train.freeze=backbone" \\
        "train.augment=[]"                                  # the offline command of docs/offline.md
    uv run python benchmarks/speed/stages.py --checkouts ../before . --preset mobilenet_v2-cpu-fast
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/common.py
from common import DVC, ROOT, arguments, nested, pipeline_repo, report, run

from flowerpipe.presets import leaves, preset_path, read_preset

RUNNING = re.compile(r"Running stage '([^']+)'")
DONE = re.compile(r"flowerpipe: done in ([\d.]+) s")


def stage_seconds(output: str) -> dict[str, float]:
    """Each stage `dvc repro` ran, in order, with the seconds its own "done in" line gives."""
    found, stage = {}, None
    for line in output.splitlines():
        if m := RUNNING.search(line):
            stage = m.group(1)
        elif (m := DONE.search(line)) and stage:
            found[stage] = float(m.group(1))
    return found


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument(
        "--checkouts", type=Path, nargs="+", default=[ROOT], help="whose pipeline runs, in turn"
    )
    parser.add_argument("--preset", help="a preset of presets/ (name or .yaml file)")
    parser.add_argument("--set", nargs="*", default=[], help="key=value (YAML) over the preset's params")
    parser.add_argument(
        "--weights",
        type=lambda w: None if w == "null" else str(Path(w).resolve()),
        default=str(ROOT.parent / "shared/weights/mobilenet_v2-imagenet.pth"),
        help="model.weights (default: ../shared/weights/mobilenet_v2-imagenet.pth; null: random)",
    )
    args = parser.parse_args()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    preset = leaves(read_preset(preset_path(args.preset, ROOT / "presets"), params)) if args.preset else {}
    extra = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    base = {"model.arch": "mobilenet_v2", **preset, **extra}
    base |= {"data.source": str(args.photos.resolve()), "model.weights": args.weights}
    rows = []
    for i, checkout in enumerate(args.checkouts):
        repo = args.work / f"stages-repo-{i}"
        pipeline_repo(repo, nested(base), checkout.resolve())
        start = time.perf_counter()
        done = subprocess.run(
            [*DVC, "repro"], cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        total = time.perf_counter() - start
        if done.returncode:
            sys.exit(f"dvc repro failed in {repo}:\n{done.stdout[-3000:]}")
        output = done.stdout  # stages' logs and DVC's lines in the order they came
        label = run(checkout, "git", "rev-parse", "--short", "HEAD")[1].strip()
        for stage, seconds in stage_seconds(output).items():
            rows.append({"checkout": label, "stage": stage, "minutes": seconds / 60})
        rows.append({"checkout": label, "stage": "dvc repro, in all", "minutes": total / 60})
        print(rows[-1], flush=True)
    name = f"stages-{Path(args.preset).stem if args.preset else 'set'}"
    report(args.results, name, rows, {"preset": args.preset, "set": extra})


if __name__ == "__main__":
    main()
