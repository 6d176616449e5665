"""Speed: the time, memory and disk of every stage on many photos.

Memory and time of every stage on many photos: `dvc repro`, stage by stage, in a throwaway git +
DVC repo, recording each stage's wall time, peak RSS (of its largest process) and the disk used.

The photos are made at run time from the real ones (`--count N`): each is a random crop of one of
them (from half to nine tenths of each side), re-encoded at a random JPEG quality, so that no two
are identical while their sizes and content stay real. `--count 0` takes the real photos as they
are. The defaults are the issue's: 128 px, one epoch of a frozen backbone, MobileNetV2 from the
shared ImageNet weights. `--checkout` runs another checkout's pipeline (the same run before a
change).

    uv run python benchmarks/speed/scale.py --count 100000
"""

from __future__ import annotations

import os
import random
import re
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/common.py
from common import DVC, ROOT, arguments, pipeline_repo, report, run_measured
from PIL import Image

STAGES = ("prepare", "train", "evaluate", "plot", "export", "quantize@int8")
CHUNK = 500  # photos made per task


def make_photos(source: Path, out: Path, count: int) -> Path:
    """`count` distinct photos in class folders under `out`, re-cropped from those under `source`
    (made once: a folder that holds them is reused)."""
    done = out.parent / f"{out.name}.{count}.done"  # beside the photos: prepare would list it
    if done.exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    originals = sorted(p.relative_to(source) for p in source.glob("*/*.jpg"))
    jobs = [(source, out, originals, start, min(start + CHUNK, count)) for start in range(0, count, CHUNK)]
    with ProcessPoolExecutor() as pool:
        list(pool.map(_make_chunk, jobs))
    done.touch()
    return out


def _make_chunk(job: tuple[Path, Path, list[Path], int, int]) -> None:
    source, out, originals, start, stop = job
    for i in range(start, stop):
        rng = random.Random(i)
        original = originals[i % len(originals)]
        with Image.open(source / original) as photo:
            photo = photo.convert("RGB")
            w, h = photo.size
            cw, ch = round(w * rng.uniform(0.5, 0.9)), round(h * rng.uniform(0.5, 0.9))
            left, top = rng.randrange(w - cw + 1), rng.randrange(h - ch + 1)
            crop = photo.crop((left, top, left + cw, top + ch))
        target = out / original.parent / f"{i:06d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        crop.save(target, quality=rng.randrange(75, 96))


def disk_gb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink()) / 1e9


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000, help="photos to make (0: the real ones)")
    parser.add_argument("--size", type=int, default=128, help="data.image_size")
    parser.add_argument("--arch", default="mobilenet_v2")
    shared = ROOT.parent / "shared/weights/mobilenet_v2-imagenet.pth"
    parser.add_argument(
        "--weights",
        default=os.environ.get("FLOWERPIPE_REAL_WEIGHTS", str(shared)),
        help="model.weights (default: $FLOWERPIPE_REAL_WEIGHTS or the shared weights); null: random",
    )
    parser.add_argument("--checkout", type=Path, default=ROOT, help="whose dvc.yaml, stages and package run")
    args = parser.parse_args()
    photos = args.photos if args.count == 0 else make_photos(args.photos, args.work / "photos", args.count)
    total = sum(1 for _ in photos.glob("*/*.jpg"))
    repo = args.work / "scale-repo"
    untrained = args.weights == "null"
    changes = {
        "data": {"source": str(photos.resolve()), "image_size": args.size},
        "model": {"arch": args.arch, "weights": None if untrained else str(Path(args.weights).resolve())},
        "train": {"epochs": 1, "freeze": "backbone"},
        "export": {"max_accuracy_drop": 100.0} if untrained else {},  # random weights: timing, not accuracy
    }
    pipeline_repo(repo, changes, args.checkout.resolve())
    rows = []
    for stage in STAGES:
        seconds, peak, output = run_measured(repo, *DVC, "repro", "--single-item", stage)
        own = re.search(r"peak RSS ([\d.]+) GiB", output)
        rows.append(
            {
                "stage": stage,
                "seconds": seconds,
                "ms per photo": 1000 * seconds / total,
                "stage peak RSS GiB": float(own.group(1)) if own else "",
                "largest process GiB": peak,  # of any process of the run: dvc, the stage, its workers
                "repo disk GB": disk_gb(repo),  # the workspace and DVC's cache
            }
        )
        print(rows[-1], flush=True)
    cache = disk_gb(repo / "data/prepared")
    extra = {"photos": total, "image_size": args.size, "arch": args.arch, "cache_gb": cache}
    print(f"{total} photos at {args.size} px; data/prepared: {cache:.2f} GB")
    report(args.results, f"scale-{total}-{args.size}", rows, extra)


if __name__ == "__main__":
    main()
