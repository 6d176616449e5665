"""Pipeline overhead, and the train stage's memory: the real `dvc` commands in a throwaway git + DVC
repo holding this checkout's pipeline, on all the real photos at 224 px (one epoch, random weights)."""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml
from common import ROOT, arguments, report

PEAK_RSS = (
    "import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
    "print('peak_rss_kib', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
    "sys.exit(code)"
)


def run(repo: Path, *args: str) -> tuple[float, str]:
    """Seconds and output of a command in `repo`; stops the benchmark if it fails."""
    start = time.perf_counter()
    done = subprocess.run(args, cwd=repo, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return seconds, done.stdout + done.stderr


def stages_run(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    args = parser.parse_args()
    repo = args.work / "pipeline-repo"
    shutil.rmtree(repo, ignore_errors=True)
    repo.mkdir(parents=True)
    for name in ("dvc.yaml", "params.yaml", ".gitignore"):
        shutil.copy(ROOT / name, repo / name)
    for folder in ("stages", "flowerpipe"):
        shutil.copytree(ROOT / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["source"] = str(args.photos.resolve())
    params["model"]["weights"] = None
    params["train"]["epochs"] = 1
    params["export"]["max_accuracy_drop"] = 100.0  # one epoch from random weights: timing, not accuracy
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc = (sys.executable, "-m", "dvc")
    os.environ["DVC_NO_ANALYTICS"] = "1"
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    git = ("git", "-c", "user.name=bench", "-c", "user.email=bench@example.invalid")
    for command in (
        ("git", "init", "-q"),
        (*dvc, "init", "-q"),
        ("git", "add", "-A"),
        (*git, "commit", "-qm", "pipeline"),
    ):
        run(repo, *command)

    rows = []
    seconds, _ = run(repo, *dvc, "repro", "prepare")
    rows.append({"command": "dvc repro prepare (3,670 photos)", "seconds": seconds, "stages run": "prepare"})
    seconds, output = run(repo, sys.executable, "-c", PEAK_RSS, *dvc, "repro", "train")
    peak_gib = int(re.search(r"peak_rss_kib (\d+)", output).group(1)) / 2**20
    rows.append(
        {
            "command": "dvc repro train (1 epoch, 224 px)",
            "seconds": seconds,
            "stages run": "train",
            "peak RSS GiB": peak_gib,
        }
    )
    seconds, output = run(repo, *dvc, "repro")
    rows.append(
        {"command": "dvc repro (the rest)", "seconds": seconds, "stages run": " ".join(stages_run(output))}
    )
    run(repo, "git", "add", "-A")
    run(
        repo, "git", "-c", "user.name=bench", "-c", "user.email=bench@example.invalid", "commit", "-qm", "run"
    )

    noop = []
    for _ in range(3):
        seconds, output = run(repo, *dvc, "repro")
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
    seconds, output = run(repo, *dvc, "repro")
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
