"""The train stage under torchrun: DistributedDataParallel over 2 CPU processes with gloo."""

from __future__ import annotations

import csv
import signal
from pathlib import Path

import pytest
import torch
from helpers.photos import make_photos
from helpers.recipes import SMALL
from helpers.repo import DvcRepo

pytestmark = pytest.mark.slow  # docs/testing.md: the fast part

TORCHRUN = "torchrun --standalone --nproc-per-node=2"
# Only the head trains, on features computed once, in fp32 and without augmentation: no BatchNorm
# batch statistics and no random draws, so 2 processes compute what 1 does, up to the order of sums.
EXACT = {"freeze": "backbone", "augment": [], "precision": "fp32", "epochs": 3}
TOLERANCE = 1e-5
CURVES = ("train/loss", "train/accuracy", "val/loss", "val/accuracy")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> DvcRepo:
    """A repo on small synthetic params whose prepare stage has run; 38 train photos, an even number,
    so that 2 processes leave none out."""
    base = tmp_path_factory.mktemp("distributed")
    repo = DvcRepo(base / "repo")
    photos = make_photos(base / "photos", per_class=20)
    repo.set_params({**SMALL, "data": {**SMALL["data"], "source": str(photos)}})
    repo.commit("small synthetic params")
    repo.dvc("repro", "prepare")
    repo.commit("prepared")
    return repo


def with_train(template: DvcRepo, path: Path, **train: object) -> DvcRepo:
    repo = DvcRepo(path, template=template)
    repo.set_params({"train": train})
    return repo


def curves(repo: DvcRepo) -> dict[str, list[float]]:
    """The per-epoch values DVCLive logged for each of CURVES."""
    found = {}
    for name in CURVES:
        with open(repo.path / "results/train/plots/metrics" / f"{name}.tsv", newline="") as f:
            found[name] = [float(row[name.split("/")[1]]) for row in csv.DictReader(f, delimiter="\t")]
    return found


def best_state(repo: DvcRepo) -> dict[str, torch.Tensor]:
    return torch.load(repo.path / "models/best.pt", weights_only=True)["state_dict"]


def test_two_processes_train_what_one_does(prepared: DvcRepo, tmp_path: Path) -> None:
    manifest = (prepared.path / "data/prepared/manifest.csv").read_text()
    assert manifest.count(",train,") % 2 == 0, "an odd train split leaves one photo out of each epoch"
    one = with_train(prepared, tmp_path / "one", **EXACT)
    two = with_train(prepared, tmp_path / "two", **EXACT, launcher=TORCHRUN)
    one.dvc("repro", "train")
    done = two.dvc("repro", "train")

    assert f"> {TORCHRUN} stages/train.py" in done.stdout
    assert "process group: 2 processes, gloo backend" in done.stderr
    assert done.stderr.count("epoch 1/3") == 1  # rank 0 alone logs
    assert [r.json("results/train/run.json")["processes"] for r in (one, two)] == [1, 2]
    # rank 0 alone writes: one checkpoint, no temporary files, one DVCLive row per epoch
    written = sorted(p.name for p in (two.path / "models").iterdir())
    assert written == [".gitignore", "best.pt", "checkpoint.pt"]
    assert torch.load(two.path / "models/checkpoint.pt", weights_only=True)["epoch"] == 3
    ones, twos = curves(one), curves(two)
    for name in CURVES:
        assert len(twos[name]) == 3
        assert twos[name] == pytest.approx(ones[name], abs=TOLERANCE), name
    assert ones["train/loss"][-1] < ones["train/loss"][0]  # the comparison is of a run that learns
    states = best_state(one), best_state(two)
    assert all(torch.allclose(states[1][k], v, atol=TOLERANCE) for k, v in states[0].items())


def test_stopped_torchrun_run_resumes_to_the_uninterrupted_result(prepared: DvcRepo, tmp_path: Path) -> None:
    """The whole model with BatchNorm and augmentation (each process draws its own crops)."""
    setting = {"epochs": 3, "batch_size": 8, "launcher": TORCHRUN}
    whole = with_train(prepared, tmp_path / "whole", **setting)
    whole.dvc("repro", "train")

    repo = with_train(prepared, tmp_path / "repo", **setting)
    stopped_at = repo.stop_training(signal.SIGTERM)  # torchrun passes it on to its workers
    assert 1 <= stopped_at < 3
    done = repo.dvc("repro", "train")
    assert f"resuming from models/checkpoint.pt after epoch {stopped_at} of 3" in done.stderr
    assert curves(repo) == curves(whole)
    assert all(torch.equal(best_state(whole)[k], v) for k, v in best_state(repo).items())


def test_batch_that_does_not_split_over_the_processes_is_refused(prepared: DvcRepo, tmp_path: Path) -> None:
    repo = with_train(prepared, tmp_path / "repo", batch_size=15, launcher=TORCHRUN)
    done = repo.dvc("repro", "train", check=False)
    assert done.returncode != 0
    assert "error: params.yaml: train.batch_size: 15 does not split evenly over 2 processes" in done.stderr
    assert not (repo.path / "models/best.pt").exists()
