"""`flowerpipe predict` and its Python API: the ONNX file alone, no torch, the evaluation preprocessing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO
from helpers.hostile import unprivileged
from helpers.onnx_files import rejecting, with_metadata
from helpers.photos import CLASSES, make_photos

from flowerpipe.core.errors import ModelError
from flowerpipe.runtime import predictor
from flowerpipe.runtime.predictor import Predictor
from flowerpipe.runtime.preprocess import to_model_input


def predict_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flowerpipe.cli", "predict", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_photos(tmp_path_factory.mktemp("photos"), per_class=10)


def test_importing_predict_does_not_import_torch() -> None:
    code = (
        "import sys, flowerpipe.runtime.predictor, flowerpipe.serve.app, flowerpipe.cli;"
        "print([m for m in sys.modules if 'torch' in m])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert done.stdout.strip() == "[]"


def test_cli_answers_good_images_and_reports_bad_ones(onnx_model: Path, photos: Path, tmp_path: Path) -> None:
    album = tmp_path / "album"
    (album / "trip").mkdir(parents=True)
    good = [album / "a.jpg", album / "trip" / "b.JPG"]
    for source, copy in zip(sorted(photos.rglob("*.jpg")), good, strict=False):
        shutil.copy(source, copy)
    (album / ".hidden.jpg").write_bytes(b"left out")
    (album / "notes.txt").write_text("left out")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    empty = tmp_path / "empty"
    empty.mkdir()
    done = predict_cli(onnx_model, good[1], broken, tmp_path / "missing.png", album, empty, "--top-k", "3")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == "error: 3 image(s) could not be read"
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    paths = [line["path"] for line in lines]
    assert paths == [str(good[1]), str(broken), str(tmp_path / "missing.png"), *map(str, good), str(empty)]
    errors = {line["path"]: line["error"] for line in lines if "error" in line}
    assert errors[str(broken)] == "not a readable image"
    assert errors[str(tmp_path / "missing.png")] == "no such file"
    assert errors[str(empty)] == "a folder with no images"
    answers = [line for line in lines if "error" not in line]
    expected = Predictor(onnx_model).predict([good[1], *good], top_k=3)
    assert [a["label"] for a in answers] == [e["label"] for e in expected]
    for answer in answers:
        assert answer["label"] in CLASSES and answer["top_k"][0]["label"] == answer["label"]
        scores = [t["score"] for t in answer["top_k"]]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True) and sum(scores) <= 1 + 1e-5


def test_every_path_in_a_folder_gets_an_answer_or_prepares_reason(onnx_model: Path, photos: Path) -> None:
    """A broken link, a link loop, a link to a folder, a file and a folder that cannot be read:
    each gets its own error line, in prepare's words; hidden files and other names are passed over."""
    with tempfile.TemporaryDirectory() as scratch:  # not under tmp_path, whose parents are private
        album = Path(scratch) / "album"
        (album / "locked").mkdir(parents=True)
        Path(scratch).chmod(0o777)
        album.chmod(0o777)
        good = sorted(photos.rglob("*.jpg"))[:2]
        for i, source in enumerate(good):
            shutil.copy(source, album / f"good_{i}.jpg")
        shutil.copy(good[0], album / "locked/inside.jpg")
        shutil.copy(good[0], album / "secret.jpg")
        (album / "secret.jpg").chmod(0)
        (album / "locked").chmod(0)
        (album / "broken.jpg").symlink_to(album / "gone.jpg")
        (album / "loop_a.jpg").symlink_to("loop_b.jpg")
        (album / "loop_b.jpg").symlink_to("loop_a.jpg")
        shutil.copytree(photos / "roses", Path(scratch) / "roses")
        (album / "more").symlink_to(Path(scratch) / "roses", target_is_directory=True)
        (album / ".hidden.jpg").write_bytes(b"left out")
        (album / "notes.txt").write_text("left out")
        model = Path(shutil.copy(onnx_model, scratch))  # where the unprivileged reader can read it
        answers = unprivileged(lambda: list(Predictor(model).predict_paths([album])))
    errors = {Path(a["path"]).relative_to(album).as_posix(): a["error"] for a in answers if "error" in a}
    assert errors == {
        "broken.jpg": "broken link",
        "locked": "folder cannot be read (Permission denied)",
        "loop_a.jpg": "cannot be read (Too many levels of symbolic links)",
        "loop_b.jpg": "cannot be read (Too many levels of symbolic links)",
        "more": "link to a folder, not followed",
        "secret.jpg": "cannot be read (Permission denied)",
    }
    answered = [Path(a["path"]).name for a in answers if "error" not in a]
    assert answered == ["good_0.jpg", "good_1.jpg"] and len(answers) == 8


def test_a_photo_gone_after_the_folder_was_listed_gets_its_line(
    onnx_model: Path, photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    album = tmp_path / "album"
    shutil.copytree(photos / "roses", album)
    walk = predictor.walk_images

    def walk_then_delete(folder: Path, root: Path) -> tuple[list[str], list]:
        found = walk(folder, root)
        (album / found[0][0]).unlink()
        return found

    monkeypatch.setattr(predictor, "walk_images", walk_then_delete)
    answers = list(Predictor(onnx_model).predict_paths([album]))
    assert answers[0] == {"path": str(album / "roses_000.jpg"), "error": "no such file"}
    assert len(answers) == 10 and all("error" not in a for a in answers[1:])


def test_cli_all_good_exits_zero(onnx_model: Path, photos: Path) -> None:
    done = predict_cli(onnx_model, photos / "roses", "--top-k", "1", "--batch-size", "3")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(lines) == 10 and all(len(line["top_k"]) == 1 for line in lines)


def test_a_model_without_flowerpipe_metadata_is_refused(onnx_model: Path, tmp_path: Path) -> None:
    import onnx

    bare = onnx.load(str(onnx_model))
    del bare.metadata_props[:]
    path = tmp_path / "bare.onnx"
    onnx.save(bare, str(path))
    with pytest.raises(ModelError, match="metadata lacks classes, image_size"):
        Predictor(path)
    done = predict_cli(path, tmp_path)
    assert done.returncode == 1 and done.stdout == ""
    lacks = "metadata lacks classes, image_size, resize_size, mean, std; export it with flowerpipe"
    assert done.stderr.strip() == f"error: {path}: {lacks}"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("classes", "{not json"),
        ("classes", '"daisy"'),
        ("mean", "[0.5,"),
        ("image_size", "large"),
        ("std", "1"),
    ],
)
def test_unreadable_flowerpipe_metadata_is_refused_in_one_line(
    onnx_model: Path, tmp_path: Path, key: str, value: str
) -> None:
    import onnx

    model = onnx.load(str(onnx_model))
    next(p for p in model.metadata_props if p.key == key).value = value
    path = tmp_path / "broken.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelError, match=f"metadata {key} is not readable"):
        Predictor(path)
    done = predict_cli(path, tmp_path)
    assert done.returncode == 1 and done.stdout == "" and "Traceback" not in done.stderr
    expected = f"error: {path}: metadata {key} is not readable ({value!r}); export it with flowerpipe"
    assert done.stderr.strip() == expected


def test_readme_snippet_answers_as_predict_does(onnx_model: Path, photos: Path, tmp_path: Path) -> None:
    """The README's ten lines of plain onnxruntime, run as written on a copy of the model and a photo."""
    readme = (REPO / "README.md").read_text()
    deploy = readme[readme.index("## Deploy") :]
    snippet = deploy[deploy.index("```python\n") + len("```python\n") :]
    snippet = snippet[: snippet.index("```")]
    code = [line for line in snippet.splitlines() if line and not line.startswith(("import ", "from "))]
    assert len(code) <= 11
    shutil.copy(onnx_model, tmp_path / "model.onnx")
    answers = []
    for photo in sorted(photos.rglob("*.jpg"))[::5]:
        shutil.copy(photo, tmp_path / "rose.jpg")
        done = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        answers.append((done.stdout.strip(), Predictor(onnx_model).predict([photo])[0]["label"]))
    assert all(printed == label for printed, label in answers)


def with_temperature(onnx_model: Path, path: Path, value: str | None) -> Path:
    """A copy of the model whose metadata temperature is `value` (None: a file without the key)."""
    import onnx

    model = onnx.load(str(onnx_model))
    kept = [p for p in model.metadata_props if p.key != "temperature"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    if value is not None:
        model.metadata_props.add(key="temperature", value=value)
    onnx.save(model, str(path))
    return path


def test_probabilities_are_softmax_of_logits_over_the_metadata_temperature(
    onnx_model: Path, photos: Path, tmp_path: Path
) -> None:
    files = sorted(photos.rglob("*.jpg"))[::4]
    plain = Predictor(with_temperature(onnx_model, tmp_path / "plain.onnx", None))
    warm = Predictor(with_temperature(onnx_model, tmp_path / "warm.onnx", "2.5"))
    assert plain.temperature == 1.0 and warm.temperature == 2.5  # a file from before keeps working
    crops = np.stack([warm.load(f) for f in files])
    logits = warm.logits(crops).astype(np.float64)
    np.testing.assert_array_equal(logits, plain.logits(crops))  # the file computes logits only
    expected = np.exp(logits / 2.5) / np.exp(logits / 2.5).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(warm.probabilities(crops), expected, rtol=1e-5, atol=1e-7)
    answers = warm.predict(files, top_k=len(CLASSES))
    for answer, p in zip(answers, expected, strict=True):
        assert answer["label"] == CLASSES[int(p.argmax())]
        assert answer["score"] == pytest.approx(p.max(), abs=1e-6)
        assert [t["score"] for t in answer["top_k"]] == pytest.approx(sorted(p, reverse=True), abs=1e-6)
    # the same photos through the command: the temperature changes the scores, never the labels
    cold = [json.loads(line) for line in predict_cli(tmp_path / "plain.onnx", *files).stdout.splitlines()]
    hot = [json.loads(line) for line in predict_cli(tmp_path / "warm.onnx", *files).stdout.splitlines()]
    assert [a["label"] for a in hot] == [a["label"] for a in cold]
    assert [a["score"] for a in hot] == pytest.approx([a["score"] for a in answers], abs=1e-6)


@pytest.mark.parametrize("value", ["warm", "0", "-1.5", "nan", "inf"])
def test_a_bad_metadata_temperature_is_refused_in_one_line(
    onnx_model: Path, tmp_path: Path, value: str
) -> None:
    path = with_temperature(onnx_model, tmp_path / "broken.onnx", value)
    with pytest.raises(ModelError, match=f"^{path}: metadata temperature"):
        Predictor(path)
    done = predict_cli(path, tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().startswith(f"error: {path}: metadata temperature")


def test_below_the_threshold_the_answer_is_unknown_above_it_a_label(
    onnx_model: Path, photos: Path, tmp_path: Path
) -> None:
    files = sorted(photos.rglob("*.jpg"))[::3]
    plain = Predictor(onnx_model).predict(files, top_k=2)
    assert plain[0].keys() == {"label", "score", "top_k"}  # a file without a threshold: as before
    scores = sorted(a["score"] for a in plain)
    threshold = (scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2  # half below, half above
    strict = Predictor(rejecting(onnx_model, tmp_path / "strict.onnx", threshold))
    assert strict.threshold == threshold
    answers = strict.predict(files, top_k=2)
    assert sum(a["unknown"] for a in answers) == len(files) // 2
    for answer, before in zip(answers, plain, strict=True):
        assert answer.keys() == {"label", "score", "top_k", "unknown", "threshold"}
        assert answer["threshold"] == threshold
        assert (answer["score"], answer["top_k"]) == (before["score"], before["top_k"])  # still listed
        assert answer["unknown"] == (before["score"] < threshold)
        assert answer["label"] == (None if answer["unknown"] else before["label"])
    # the command prints the same answers, `"label": null` included
    done = predict_cli(tmp_path / "strict.onnx", *files, "--top-k", "2")
    assert done.returncode == 0, done.stderr
    printed = [json.loads(line) for line in done.stdout.splitlines()]
    assert printed == [{"path": str(f), **a} for f, a in zip(files, answers, strict=True)]
    assert '"label": null, ' in done.stdout


def test_a_threshold_of_0_keeps_every_photo_and_1_none(
    onnx_model: Path, photos: Path, tmp_path: Path
) -> None:
    files = sorted(photos.rglob("*.jpg"))[:6]
    every = Predictor(rejecting(onnx_model, tmp_path / "every.onnx", 0.0)).predict(files)
    assert [a["unknown"] for a in every] == [False] * 6 and None not in [a["label"] for a in every]
    none = Predictor(rejecting(onnx_model, tmp_path / "none.onnx", 1.0)).predict(files)
    assert [a["unknown"] for a in none] == [True] * 6 and {a["label"] for a in none} == {None}


def test_a_knn_model_answers_unknown_below_its_similarity_threshold(
    knn_model: Path, photos: Path, tmp_path: Path
) -> None:
    files = sorted(photos.rglob("*.jpg"))[::3]
    plain = Predictor(knn_model)
    assert plain.threshold is None and plain.predict(files)[0].keys() == {"label", "score", "top_k"}
    crops = np.stack([plain.load(f) for f in files])
    probs, similarity = plain.scored(crops)  # no threshold: the score is the largest probability
    assert np.array_equal(similarity, probs.max(axis=1))
    similarity = plain.session.run(["knn_similarity"], {plain.input_name: to_model_input(crops)})[0]
    ranked = np.sort(similarity)
    threshold = float(ranked[len(ranked) // 2 - 1] + ranked[len(ranked) // 2]) / 2  # half below
    strict = Predictor(rejecting(knn_model, tmp_path / "knn.onnx", threshold, "knn"))
    assert (strict.reject_score, strict.threshold) == ("knn", threshold)
    assert np.array_equal(strict.scored(crops)[1], similarity)
    answers = strict.predict(files)
    assert sum(a["unknown"] for a in answers) == len(files) // 2
    for answer, s, p in zip(answers, similarity, probs, strict=True):
        assert answer.keys() == {"label", "score", "top_k", "unknown", "threshold", "knn_similarity"}
        assert answer["knn_similarity"] == round(float(s), 6) and answer["score"] == round(float(p.max()), 6)
        assert answer["unknown"] == (s < threshold) == (answer["label"] is None)
    # a negative threshold is a knn similarity like any other
    assert not any(
        a["unknown"]
        for a in Predictor(rejecting(knn_model, tmp_path / "low.onnx", -1.0, "knn")).predict(files)
    )


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"reject_score": "entropy", "reject_threshold": "0.5"}, "reject_score"),
        ({"reject_threshold": "0.5"}, "reject_score"),
        ({"reject_score": "max_softmax"}, "reject_threshold"),
        ({"reject_score": "max_softmax", "reject_threshold": "high"}, "reject_threshold"),
        ({"reject_score": "max_softmax", "reject_threshold": "1.5"}, "reject_threshold"),
        ({"reject_score": "max_softmax", "reject_threshold": "nan"}, "reject_threshold"),
        ({"reject_score": "max_softmax", "reject_threshold": "-0.5"}, "reject_threshold"),
        ({"reject_score": "knn", "reject_threshold": "0.5"}, "reject_score"),  # no knn_similarity output
    ],
)
def test_a_bad_metadata_threshold_is_refused_in_one_line(
    onnx_model: Path, tmp_path: Path, changes: dict[str, str], key: str
) -> None:
    path = with_metadata(onnx_model, tmp_path / "broken.onnx", changes)
    with pytest.raises(ModelError, match=f"^{path}: metadata {key}") as caught:
        Predictor(path)
    assert "\n" not in str(caught.value)
