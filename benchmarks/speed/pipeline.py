"""Speed: the dvc commands' overhead and the train stage's memory in a throwaway repo.

Pipeline overhead, and the train stage's memory: the real `dvc` commands in a throwaway git + DVC
repo holding this checkout's pipeline, on all the real photos at 224 px (one epoch, random weights)."""

from __future__ import annotations

import re
import statistics
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/common.py
from common import DVC, arguments, commit, pipeline_repo, report, run, run_measured


def stages_run(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    args = parser.parse_args()
    repo = args.work / "pipeline-repo"
    changes = {
        "data": {"source": str(args.photos.resolve())},
        "model": {"weights": None},
        "train": {"epochs": 1},
        "export": {"max_accuracy_drop": 100.0},  # one epoch from random weights: timing, not accuracy
    }
    params = pipeline_repo(repo, changes)

    rows = []
    seconds, _ = run(repo, *DVC, "repro", "prepare")
    rows.append({"command": "dvc repro prepare (3,670 photos)", "seconds": seconds, "stages run": "prepare"})
    seconds, peak_gib, _ = run_measured(repo, *DVC, "repro", "train")
    rows.append(
        {
            "command": "dvc repro train (1 epoch, 224 px)",
            "seconds": seconds,
            "stages run": "train",
            "peak RSS GiB": peak_gib,
        }
    )
    seconds, output = run(repo, *DVC, "repro")
    rows.append(
        {"command": "dvc repro (the rest)", "seconds": seconds, "stages run": " ".join(stages_run(output))}
    )
    commit(repo, "run")

    noop = []
    for _ in range(3):
        seconds, output = run(repo, *DVC, "repro")
        assert not stages_run(output), output
        noop.append(seconds)
    rows.append(
        {
            "command": "dvc repro, nothing changed (median of 3)",
            "seconds": statistics.median(noop),
            "stages run": "",
        }
    )
    params["plot"]["dpi"] = params["plot"]["dpi"] + 10
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    seconds, output = run(repo, *DVC, "repro")
    rows.append(
        {
            "command": "dvc repro after a plot.dpi change",
            "seconds": seconds,
            "stages run": " ".join(stages_run(output)),
        }
    )
    report(args.results, "pipeline", rows)


if __name__ == "__main__":
    main()
