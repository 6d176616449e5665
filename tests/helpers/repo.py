"""A throwaway git + DVC repo holding a copy of the pipeline (dvc.yaml, params.yaml, stages/, the
package, presets/): the one the pipeline tests and the benchmarks (benchmarks/common.py) run in."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from helpers import REPO


def environment(path: Path) -> dict[str, str]:
    """What the repo's commands run with: this venv's `python` (dvc.yaml's), the package copy in
    the repo (so that editing the checkout meanwhile changes nothing a run measures), a git author."""
    bindir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(path.resolve()),
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "flowerpipe",
        "GIT_AUTHOR_EMAIL": "flowerpipe@example.invalid",
        "GIT_COMMITTER_NAME": "flowerpipe",
        "GIT_COMMITTER_EMAIL": "flowerpipe@example.invalid",
    }


class DvcRepo:
    """A git + DVC repo holding a copy of the project's pipeline files."""

    def __init__(self, path: Path, template: DvcRepo | None = None, checkout: Path = REPO) -> None:
        """A new repo at `path` of `checkout`'s pipeline (an older checkout may lack a file), or a
        copy of `template`, its DVC cache and outputs included."""
        self.path = path
        self.env = environment(path)
        if template:
            shutil.copytree(template.path, path, symlinks=True)
            return
        (path / "data").mkdir(parents=True, exist_ok=True)
        for name in ("dvc.yaml", "params.yaml", ".gitignore", "data/exclude.txt"):
            if (checkout / name).exists():
                shutil.copy(checkout / name, path / name)
        for folder in ("stages", "flowerpipe", "presets"):
            if (checkout / folder).exists():
                shutil.copytree(
                    checkout / folder, path / folder, ignore=shutil.ignore_patterns("__pycache__")
                )
        self.run("git", "init", "-q")
        self.dvc("init", "-q")
        if (checkout / ".dvcignore").exists():  # over the one `dvc init` writes
            shutil.copy(checkout / ".dvcignore", path / ".dvcignore")
        self.commit("pipeline")

    @classmethod
    def clone_of(cls, other: DvcRepo, path: Path) -> DvcRepo:
        """A `git clone` of `other`: its commits, without its DVC cache or outputs."""
        other.run("git", "clone", "-q", str(other.path), str(path))
        repo = cls.__new__(cls)
        repo.path, repo.env = path, environment(path)
        return repo

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(args, cwd=self.path, env=self.env, capture_output=True, text=True)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done

    def dvc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(sys.executable, "-m", "dvc", *args, check=check)

    def commit(self, message: str) -> None:
        self.run("git", "add", "-A")
        self.run("git", "commit", "-qm", message, "--allow-empty")

    def set_params(self, changes: dict) -> None:
        params = yaml.safe_load((self.path / "params.yaml").read_text())
        for section, values in changes.items():
            params[section].update(values)
        (self.path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    def json(self, relpath: str):
        return json.loads((self.path / relpath).read_text())

    def stop_training(self, sig: signal.Signals) -> int:
        """Start `dvc repro train`, send `sig` to it (and what it started) once the run has written
        a checkpoint, wait until all of them have exited, and return the checkpoint's epoch."""
        checkpoint = self.path / "models/checkpoint.pt"
        written = checkpoint.stat().st_mtime_ns if checkpoint.exists() else None
        args = (sys.executable, "-m", "dvc", "repro", "train")
        proc = subprocess.Popen(args, cwd=self.path, env=self.env, text=True, start_new_session=True)
        while not checkpoint.exists() or checkpoint.stat().st_mtime_ns == written:
            assert proc.poll() is None, "training ended before it could be stopped"
            time.sleep(0.01)
        os.killpg(proc.pid, sig)
        proc.wait()
        with contextlib.suppress(ProcessLookupError):
            while True:  # torchrun's agent stops its workers before it exits
                os.killpg(proc.pid, 0)
                time.sleep(0.05)
        import torch

        return torch.load(checkpoint, weights_only=True)["epoch"]
