"""The benchmark scripts run end to end (on a few synthetic photos) and write their tables.

Their numbers mean nothing here: this only keeps the scripts working; nothing is timed."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import REPO
from helpers.onnx_files import rejecting
from helpers.photos import CLASSES, IMAGE_SIZE, make_photos

from flowerpipe.data.prepared import load_prepared
from flowerpipe.model.build import build_model, save_trained

pytestmark = pytest.mark.slow  # docs/testing.md: the fast part


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_photos(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models/best.pt as train writes it (random weights, 32 px)."""
    path = tmp_path_factory.mktemp("trained") / "best.pt"
    save_trained(
        build_model("resnet18", None, 3), path, arch="resnet18", classes=["a", "b", "c"], image_size=32
    )
    return path


@pytest.mark.parametrize(
    ("script", "options", "tables"),
    [
        (
            "speed/train.py",
            ["--images", "40", "--rounds", "1", "--sizes", "32", "--batch-size", "8"],
            ["train", "train_frozen"],
        ),
        ("speed/data.py", ["--images", "16"], ["data"]),
        ("speed/inference.py", ["--size", "32"], ["inference"]),
        ("speed/fixed_weights.py", ["--size", "32", "--rounds", "1"], ["fixed-weights-mobilenet_v2"]),
        (
            "accuracy/evaluation_size.py",
            ["--models", "{trained}", "--sizes", "32", "40"],
            ["evaluation-size"],
        ),
        (
            "speed/compile_train.py",
            [*("--size", "32", "--steps", "1", "--warmup", "1", "--rounds", "1", "--freeze", "features.0")],
            ["compile-train-mobilenet_v2"],
        ),
        (
            "accuracy/quantize.py",
            ["--size", "32", "--calibration-images", "16"],
            ["quantize-resnet18"],
        ),
        (
            "accuracy/recipes.py",
            [
                *("--arch", "resnet18", "--weights", "null", "--size", "32"),
                *("--set", "epochs=1", "batch_size=8", "--recipes", "reference", '{"ema_decay": 0.5}'),
            ],
            ["recipes"],
        ),
    ],
)
def test_benchmark_writes_its_table(
    script: str, options: list[str], tables: list[str], photos: Path, trained: Path, tmp_path: Path
) -> None:
    done = subprocess.run(
        [
            sys.executable,
            f"benchmarks/{script}",
            "--photos",
            str(photos),
            "--work",
            str(tmp_path / "work"),
            "--results",
            str(tmp_path / "results"),
            *(option.replace("{trained}", str(trained)) for option in options),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for name in tables:
        result = json.loads((tmp_path / "results" / f"{name}.json").read_text())
        assert result["machine"]["cores"] >= 1 and result["rows"]
        numbers = [v for row in result["rows"] for k, v in row.items() if isinstance(v, float)]
        assert numbers and all(v >= 0 for v in numbers) and any(v > 0 for v in numbers)  # accuracies may be 0
        assert f"results/{name}.json" in done.stdout


def test_matrix_runs_a_model_through_every_step_and_refuses_another(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            *(sys.executable, "benchmarks/accuracy/matrix.py", "--models", "squeezenet1_1,vit_h_14"),
            *("--work", str(tmp_path / "work"), "--results", str(tmp_path)),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ran, refused = json.loads((tmp_path / "matrix.json").read_text())["rows"]
    steps = ("build", "train", "frozen", "evaluate", "export", "int8")
    assert all(isinstance(ran[step], float) for step in steps), ran
    assert ran["int8_gate"] == "passed" or ran["int8_gate"].startswith("refused: "), ran
    assert (ran["side"], ran["frozen_path"], ran["side_exact"]) == (17, "whole model", True)
    assert "past the 2 GiB limit of one ONNX file" in refused["refused"]
    table = (tmp_path / "matrix.md").read_text().splitlines()
    assert table[2].startswith("| squeezenet1_1 | 0.7 M | >= 17 |") and "(whole model)" in table[2]
    assert table[3].startswith("| vit_h_14 | | 224 only | refused: model.arch: vit_h_14 has 633 M parameters")

    # --update reruns some models and keeps the others' rows
    again = [*done.args[:3], "vit_h_14,regnet_y_128gf", *done.args[4:], "--update"]
    assert subprocess.run(again, cwd=REPO, capture_output=True).returncode == 0
    rows = json.loads((tmp_path / "matrix.json").read_text())["rows"]
    assert [row["model"] for row in rows] == ["squeezenet1_1", "vit_h_14", "regnet_y_128gf"]
    assert rows[0] == ran


def test_serve_load_sends_every_request(onnx_model: Path, photos: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "benchmarks/speed/serve_load.py",
            *("--photos", str(photos), "--work", str(tmp_path / "work"), "--results", str(tmp_path)),
            *("--model", str(onnx_model), "--requests", "60", "--clients", "1", "16"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "serve_load.json").read_text())["rows"]
    assert [(r["clients"], r["requests"], r["failed"]) for r in rows] == [(1, 60, 0), (16, 60, 0)]
    assert all(r["req/s"] > 0 and 0 < r["p50 ms"] <= r["p99 ms"] for r in rows)
    assert (tmp_path / "work/serve.log").read_text().count('"POST /predict HTTP/1.1" 200') == 120


def test_scale_makes_distinct_photos_from_the_real_ones(photos: Path, tmp_path: Path) -> None:
    """The scale benchmark's photos: crops of the given ones, each class's in its folder, no two
    alike, made once."""
    sys.path.insert(0, str(REPO / "benchmarks/speed"))
    import scale

    made = scale.make_photos(photos, tmp_path / "made", 150)
    files = sorted(made.glob("*/*.jpg"))
    assert len(files) == 150
    assert {f.parent.name for f in files} == {p.name for p in photos.iterdir()}
    assert len({f.read_bytes() for f in files}) == 150
    originals = {p.read_bytes() for p in photos.glob("*/*.jpg")}
    assert not originals & {f.read_bytes() for f in files}
    first = files[0].stat().st_mtime_ns
    scale.make_photos(photos, tmp_path / "made", 150)
    assert files[0].stat().st_mtime_ns == first


def test_open_set_scores_every_held_out_class_and_far_kind(
    photos: Path, onnx_model: Path, tmp_path: Path
) -> None:
    model = rejecting(onnx_model, tmp_path / "rejecting.onnx", 0.9)
    options = ["--arch", "resnet18", "--weights", "null", "--size", str(IMAGE_SIZE), "--far", "3"]
    options += ["--full", CLASSES[0], "--set", "epochs=1", "batch_size=8", "--onnx", str(model)]
    options += ["--photos", str(photos), "--work", str(tmp_path), "--results", str(tmp_path / "results")]
    done = subprocess.run(
        [sys.executable, "benchmarks/accuracy/open_set.py", *options],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    held = json.loads((tmp_path / "results" / "open-set.json").read_text())["rows"]
    expected = [f"{c} (frozen backbone)" for c in CLASSES] + [f"{CLASSES[0]} (full recipe)"]
    assert sorted({row["held_out"] for row in held}) == sorted(expected)
    assert len(held) == len(expected) * 5 and all(0 <= row["auroc"] <= 1 for row in held)
    assert {row["unknowns"] for row in held if row["held_out"].startswith(CLASSES[0])} == {24}
    far = json.loads((tmp_path / "results" / "far-inputs.json").read_text())["rows"]
    assert [row["model"] for row in far] == ["frozen backbone, 5-class head"] * 5 + [
        f"full recipe, {CLASSES[0]} held out"
    ] * 5 + ["rejecting.onnx"]
    assert all(row["inputs"] == 15 and 0 <= row["all"] <= 1 for row in far)


def test_imbalance_cuts_one_class_in_train_only_and_scores_every_balance(
    photos: Path, tmp_path: Path
) -> None:
    options = ["--arch", "resnet18", "--weights", "null", "--size", str(IMAGE_SIZE), "--cut", CLASSES[1]]
    options += ["--keep", "0.5", "--set", "epochs=1", "batch_size=8", "--photos", str(photos)]
    options += ["--work", str(tmp_path), "--results", str(tmp_path / "results"), "--seeds", "0", "1"]
    done = subprocess.run(
        [sys.executable, "benchmarks/accuracy/imbalance.py", *options],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "results" / "imbalance.json").read_text())
    data = load_prepared(next(tmp_path.glob("**/manifest.csv")).parent)
    train = data.labels[data.indices("train")]
    full = {c: int((train == i).sum()) for i, c in enumerate(data.classes)}
    assert result["train_photos"] == {**full, CLASSES[1]: math.ceil(full[CLASSES[1]] / 2)}
    rows, means = result["rows"][:6], result["rows"][6:]
    assert [(row["seed"], row["class_balance"]) for row in rows] == [
        (seed, balance) for seed in (0, 1) for balance in ("none", "weights", "sampler")
    ]
    for row in rows:
        assert row["test photos"] == len(data.indices("test"))  # test untouched
        recalls = [row[f"recall {c}"] for c in CLASSES]
        assert row["balanced_accuracy"] == pytest.approx(np.mean(recalls), abs=2e-3)
    assert rows[0]["accuracy gain (points)"] == rows[3]["accuracy gain (points)"] == "+0.00 ± 0.00"
    assert [m["class_balance"] for m in means] == ["none", "weights", "sampler"]
    for mean, runs in zip(means, (rows[0::3], rows[1::3], rows[2::3]), strict=True):
        accuracies = [r["accuracy"] for r in runs]
        assert mean["seed"] == "mean of 2"
        assert mean["accuracy"] == f"{np.mean(accuracies):.4f} ± {np.std(accuracies, ddof=1):.4f}"


CHANGED = '{"train.batch_size":8,"train.head_epochs":0,"train.backbone_lr_factor":1.0}'


def sweep_summary(table: Path) -> str:
    command = [sys.executable, "benchmarks/accuracy/sweep.py", "--csv", str(table), "--summary"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True)
    return done.stdout


def test_sweep_records_each_run_as_it_ends_and_skips_what_is_recorded(photos: Path, tmp_path: Path) -> None:
    preset = tmp_path / "tiny.yaml"
    preset.write_text(yaml.safe_dump({"data": {"image_size": IMAGE_SIZE}, "train": {"epochs": 1}}))
    table = tmp_path / "runs.csv"
    # random weights learn from the first step with every layer at one rate: another answer than
    # the preset alone's (the head alone on random features), for the paired comparison below
    changes = ["train.batch_size=8", "train.head_epochs=0", "train.backbone_lr_factor=1.0"]
    options = ["--preset", str(preset), "--weights", "null", "--set", *changes]
    options += ["--photos", str(photos), "--work", str(tmp_path / "work"), "--csv", str(table)]

    def sweep(*seeds: int) -> str:
        command = [sys.executable, "benchmarks/accuracy/sweep.py", *options, "--seeds", *map(str, seeds)]
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    sweep(0)
    assert "seed 1: written" in sweep(0, 1)  # seed 0 is recorded: only seed 1 runs
    assert "every run is in" in sweep(1, 0)
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["preset"], r["set"], r["seed"]) for r in rows] == [("tiny", CHANGED, s) for s in "01"]
    prepared = load_prepared(tmp_path / "work/sweep-repo/data/prepared")
    for row in rows:
        assert int(row["val_photos"]) == len(prepared.indices("val"))
        assert int(row["test_photos"]) == len(prepared.indices("test"))
        assert 0 <= float(row["test_accuracy"]) <= 1 and float(row["train_min"]) > 0
        assert row["precision"] in ("float32", "bfloat16") and row["capability"] == "native"
        # ONNX Runtime runs a CPU run's fixed weights in float32 (`train.precision: auto` is fp32
        # on a CPU without bf16), PyTorch under bf16 autocast
        assert row["fixed_weights"] == ("onnxruntime" if row["precision"] == "float32" else "pytorch")
        assert row["commit"] and row["cpu"]
    assert len(list((tmp_path / "work/sweep-models").glob("tiny-*-seed[01]*.pt"))) == 2
    table = sweep_summary(table)
    [line] = [line for line in table.splitlines() if line.startswith("| tiny |")]
    tests = [100 * float(r["test_accuracy"]) for r in rows]
    mean, sd = np.mean(tests), np.std(tests, ddof=1)
    assert "| 0, 1 |" in line and f"{mean:.2f} ± {sd:.2f} % ({rows[0]['test_photos']})" in line

    # the preset alone (--set {}), seed 0: the run the others are paired with
    base = [*options[:4], *options[5 + len(changes) :], "--seeds", "0"]
    done = subprocess.run(
        [sys.executable, "benchmarks/accuracy/sweep.py", *base], cwd=REPO, capture_output=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    command = [sys.executable, "benchmarks/accuracy/sweep.py", *options, "--paired"]
    pairs = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True).stdout
    [line] = [line for line in pairs.splitlines() if line.startswith("| tiny |")]  # seed 1 has no base
    with open(tmp_path / "runs.csv", newline="") as f:
        recorded = {(r["set"], r["seed"]): r for r in csv.DictReader(f)}
    alone, changed = recorded["{}", "0"], recorded[CHANGED, "0"]
    assert (alone["val_accuracy"], alone["test_accuracy"]) != (
        changed["val_accuracy"],
        changed["test_accuracy"],
    )
    for split in ("val", "test"):
        gain = 100 * (float(changed[f"{split}_accuracy"]) - float(alone[f"{split}_accuracy"]))
        assert f"{gain:+.2f} ± " in line and f"({alone[split + '_photos']} photos)" in line


def test_stages_times_each_stage_of_one_repro_per_checkout(photos: Path, tmp_path: Path) -> None:
    options = ["--weights", "null", "--photos", str(photos), "--work", str(tmp_path / "work")]
    options += ["--results", str(tmp_path / "results"), "--checkouts", str(REPO), str(REPO)]
    options += ["--set", f"data.image_size={IMAGE_SIZE}", "train.epochs=1", "train.head_epochs=0"]
    options += ["export.max_accuracy_drop=100.0", "export.calibration_images=16"]
    command = [sys.executable, "benchmarks/speed/stages.py", *options]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "results/stages-set.json").read_text())["rows"]
    stages = ["prepare", "audit", "train", "evaluate", "plot", "export", "quantize@int8", "dvc repro, in all"]
    assert [r["stage"] for r in rows] == stages * 2  # each checkout's stages, in the order they ran
    for run in (rows[:8], rows[8:]):
        assert all(r["minutes"] >= 0 for r in run) and run[2]["minutes"] > 0  # train takes time
        # (audit without weights flags nothing: "done in 0.0 s")
        assert sum(r["minutes"] for r in run[:-1]) < run[-1]["minutes"]  # DVC's own time on top
