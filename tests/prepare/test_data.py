"""scan.prepare on synthetic folders: outputs, skipped files with reasons, odd image modes, EXIF."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers.hostile import unprivileged
from helpers.photos import draw_photo, make_photos
from PIL import Image

from flowerpipe.config import SplitConfig
from flowerpipe.core.errors import DataError
from flowerpipe.core.files import Skipped
from flowerpipe.data.cache import ImageCache
from flowerpipe.data.prepared import MANIFEST_FIELDS, load_prepared
from flowerpipe.prepare import scan
from flowerpipe.prepare.split import assign_splits
from flowerpipe.runtime import preprocess

RESIZE = 40
SPLIT = SplitConfig(val=0.2, test=0.2, seed=42)
IMAGE_SIZE = 32


def prepare(root: Path, out: Path, resize: int = RESIZE) -> dict:
    return scan.prepare(root, out, SPLIT, resize=resize, workers=2)


def read_manifest(out: Path) -> list[dict[str, str]]:
    with open(out / "manifest.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def skipped_reasons(out: Path) -> dict[str, str]:
    report = json.loads((out / "report.json").read_text())
    return {s["path"]: s["reason"] for s in report["skipped"]}


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under root with its size and mtime."""
    entries = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            entries[path.relative_to(root).as_posix()] = (st.st_size, st.st_mtime_ns)
    return entries


def exif_rotated_jpeg(path: Path, size: tuple[int, int] = (80, 40), orientation: int = 6) -> None:
    """A JPEG whose stored pixels are `size` (W x H), tagged to be shown rotated."""
    w, h = size
    pixels = np.zeros((h, w, 3), np.uint8)
    pixels[:, : w // 2] = (250, 20, 20)  # left half red, right half blue as stored
    pixels[:, w // 2 :] = (20, 20, 250)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, exif=exif, quality=95)


@pytest.fixture
def messy(tmp_path: Path) -> Path:
    """Three good classes plus every kind of file prepare must skip or must still read."""
    root = make_photos(tmp_path / "messy", per_class=12)
    rng = np.random.default_rng(1)
    daisy, roses, dandelion = root / "daisy", root / "roses", root / "dandelion"
    # bad files: skipped with a reason
    (daisy / "empty.jpg").write_bytes(b"")
    draw_photo("daisy", rng).save(daisy / "whole.jpg", quality=90)
    data = (daisy / "whole.jpg").read_bytes()
    (daisy / "whole.jpg").unlink()
    (daisy / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (daisy / "text.jpg").write_text("this is not a JPEG\n")
    (daisy / "notes.txt").write_text("a note\n")
    (daisy / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (daisy / ".thumbs").mkdir()
    draw_photo("daisy", rng).save(daisy / ".thumbs" / "hidden.jpg")
    (root / ".cache").mkdir()
    draw_photo("roses", rng).save(root / ".cache" / "x.jpg")
    (root / "LICENSE.txt").write_text("CC-BY\n")
    # unusual but valid images: read
    draw_photo("roses", rng).convert("L").save(roses / "gray.png")
    draw_photo("roses", rng).convert("CMYK").save(roses / "cmyk.jpg")
    draw_photo("dandelion", rng).convert("P", palette=Image.Palette.ADAPTIVE).save(dandelion / "palette.png")
    rgba = draw_photo("dandelion", rng).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(dandelion / "rgba.png")
    draw_photo("daisy", rng, size=(200, 150)).save(daisy / "UPPER.JPG")
    draw_photo("roses", rng).save(roses / "rose.webp")
    draw_photo("roses", rng).save(roses / "rose.bmp")
    (daisy / "garden photos").mkdir()
    draw_photo("daisy", rng).save(daisy / "garden photos" / "Gänseblümchen 01.jpg")
    (dandelion / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    exif_rotated_jpeg(daisy / "rotated.jpg")
    return root


def test_prepare_writes_the_dataset(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    metrics = prepare(photos, out)
    assert sorted(p.name for p in out.iterdir()) == [
        "dataset.json",
        "images.npy",
        "manifest.csv",
        "report.json",
    ]
    rows = read_manifest(out)
    images = np.load(out / "images.npy")
    assert images.shape == (len(rows), RESIZE, RESIZE, 3) == (72, RESIZE, RESIZE, 3)
    assert images.dtype == np.uint8
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["classes"] == ["daisy", "dandelion", "roses"]
    assert meta["resize_size"] == RESIZE
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    assert all(r["relpath"].startswith(r["label"] + "/") for r in rows)
    assert all((r["width"], r["height"]) == ("96", "72") for r in rows)
    assert json.loads((out / "report.json").read_text())["skipped"] == []
    assert metrics["images"] == 72
    assert metrics["skipped"] == 0
    assert sum(n for split in metrics["counts"].values() for n in split.values()) == 72
    assert metrics["width"] == {"min": 96, "median": 96, "max": 96}


def test_load_prepared_reads_back(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    prepare(photos, out)
    data = load_prepared(out)
    assert data.classes == ["daisy", "dandelion", "roses"]
    assert isinstance(data.images, ImageCache)
    assert len(data.labels) == len(data.rows) == len(data.images) == 72
    assert [data.classes[i] for i in data.labels] == [r["label"] for r in data.rows]
    all_idx = np.concatenate([data.indices(s) for s in ("train", "val", "test")])
    assert sorted(all_idx.tolist()) == list(range(72))


def test_bad_files_are_skipped_with_reasons(messy: Path, tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    metrics = prepare(messy, out)
    reasons = skipped_reasons(out)
    assert reasons["daisy/empty.jpg"] == "empty file"
    assert reasons["daisy/truncated.jpg"].startswith("truncated or corrupt image")
    assert reasons["daisy/text.jpg"] == "not a readable image"
    assert reasons["daisy/notes.txt"] == "not an image file name"
    assert reasons["daisy/.DS_Store"] == "hidden"
    assert reasons[".DS_Store"] == "hidden"
    assert reasons["daisy/.thumbs/"] == "hidden folder"
    assert reasons[".cache/"] == "hidden folder"
    assert reasons["LICENSE.txt"] == "not inside a class folder"
    assert reasons["dandelion/Thumbs.db"] == "not an image file name"
    assert len(reasons) == 10
    assert metrics["skipped"] == 10
    assert metrics["skipped_by_reason"]["truncated or corrupt image"] == 1
    assert metrics["skipped_by_reason"]["hidden"] == 2
    assert metrics["skipped_by_reason"]["hidden folder"] == 2

    kept = {r["relpath"] for r in read_manifest(out)}
    assert not any("/." in p or p.startswith(".") for p in kept)
    assert not kept & set(reasons)
    assert json.loads((out / "dataset.json").read_text())["classes"] == ["daisy", "dandelion", "roses"]


def test_unusual_image_modes_are_read(messy: Path, tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    metrics = prepare(messy, out)
    rows = read_manifest(out)
    by_path = {r["relpath"]: i for i, r in enumerate(rows)}
    for rel in [
        "roses/gray.png",
        "roses/cmyk.jpg",
        "dandelion/palette.png",
        "dandelion/rgba.png",
        "daisy/UPPER.JPG",
        "roses/rose.webp",
        "roses/rose.bmp",
        "daisy/garden photos/Gänseblümchen 01.jpg",
    ]:
        assert rel in by_path, rel
    assert metrics["images"] == 3 * 12 + 9
    images = np.load(out / "images.npy")
    assert images.shape == (len(rows), RESIZE, RESIZE, 3)
    gray = images[by_path["roses/gray.png"]].astype(int)
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    # half-transparent pixels are composited onto white: brighter than the opaque drawing
    opaque = preprocess.fit_square(Image.open(messy / "dandelion" / "rgba.png").convert("RGB"), RESIZE)
    assert images[by_path["dandelion/rgba.png"]].mean() > opaque.mean() + 20
    cmyk = images[by_path["roses/cmyk.jpg"]]
    assert cmyk.std() > 10  # a real picture, not a blank square


def test_16bit_grayscale_png_keeps_its_content(tmp_path: Path) -> None:
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (48, 1))  # dark left, bright right
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    rgb = np.asarray(preprocess.load_rgb(tmp_path / "deep.png"))
    assert rgb[:, :8].mean() < 64
    assert rgb[:, -8:].mean() > 192


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    path = tmp_path / "rotated.jpg"
    exif_rotated_jpeg(path, size=(80, 40), orientation=6)
    with Image.open(path) as raw:
        assert raw.size == (80, 40)
    upright = preprocess.load_rgb(path)
    assert upright.size == (40, 80)
    pixels = np.asarray(upright).astype(int)
    # orientation 6: rotate 90 degrees clockwise, so the stored left half (red) ends up on top
    assert pixels[:20, :, 0].mean() > 200 and pixels[:20, :, 2].mean() < 60
    assert pixels[-20:, :, 2].mean() > 200 and pixels[-20:, :, 0].mean() < 60
    # the JPEG draft shortcut keeps the orientation
    assert preprocess.load_rgb(path, draft_size=10).size == (10, 20)


def test_exif_rotation_reaches_the_cache(tmp_path: Path) -> None:
    root = make_photos(tmp_path / "photos", per_class=10)
    exif_rotated_jpeg(root / "daisy" / "rotated.jpg", size=(80, 40))
    out = tmp_path / "prepared"
    prepare(root, out)
    rows = read_manifest(out)
    i = next(i for i, r in enumerate(rows) if r["relpath"] == "daisy/rotated.jpg")
    square = np.load(out / "images.npy")[i].astype(int)
    # the centre crop of the upright portrait: red in the top half, blue in the bottom half
    assert square[: RESIZE // 2 - 2, :, 0].mean() > 200
    assert square[RESIZE // 2 + 2 :, :, 2].mean() > 200


def test_fewer_than_two_classes_is_an_error(tmp_path: Path) -> None:
    root = make_photos(tmp_path / "one", per_class=5, classes=("daisy",))
    with pytest.raises(DataError, match="need at least two"):
        prepare(root, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_no_class_folders_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    root.mkdir()
    draw_photo("daisy", np.random.default_rng(0)).save(root / "a.jpg")
    with pytest.raises(DataError, match="found 0 class folder"):
        prepare(root, tmp_path / "out")


def test_empty_class_folder_is_an_error_naming_it(tmp_path: Path) -> None:
    root = make_photos(tmp_path / "photos", per_class=10, classes=("daisy", "dandelion"))
    (root / "sunflowers").mkdir()
    with pytest.raises(DataError, match="'sunflowers' has no readable images"):
        prepare(root, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_duplicate_photos_share_a_split(photos: Path, tmp_path: Path) -> None:
    for path in sorted((photos / "daisy").iterdir())[:10]:
        shutil.copy(path, path.with_name(f"copy of {path.name}"))
    prepare(photos, tmp_path / "out")
    splits: dict[str, set[str]] = {}
    for row in read_manifest(tmp_path / "out"):
        splits.setdefault(row["sha256"], set()).add(row["split"])
    assert sum(len(s) for s in splits.values()) == len(splits)  # one split per distinct photo
    assert len(read_manifest(tmp_path / "out")) == len(splits) + 10


def test_class_with_only_bad_files_is_an_error_naming_it(tmp_path: Path) -> None:
    root = make_photos(tmp_path / "photos", per_class=10, classes=("daisy", "dandelion"))
    (root / "tulips").mkdir()
    (root / "tulips" / "a.jpg").write_bytes(b"")
    (root / "tulips" / "b.jpg").write_text("not an image")
    (root / "tulips" / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match="'tulips' has no readable images"):
        prepare(root, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_source_folder_is_not_modified(messy: Path, tmp_path: Path) -> None:
    before = snapshot(messy)
    prepare(messy, tmp_path / "prepared")
    assert snapshot(messy) == before


def test_prepare_replaces_an_earlier_output(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    prepare(photos, out)
    assert not (out / "stale.txt").exists()
    assert (out / "manifest.csv").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def assert_cache_holds_each_photo(root: Path, out: Path) -> None:
    """images.npy holds, row by row, what decoding each manifest photo on its own gives, and is the
    file np.save writes for that array (written in place as the photos were decoded, then cut)."""
    images = np.load(out / "images.npy")
    saved = io.BytesIO()
    np.save(saved, images)
    assert (out / "images.npy").read_bytes() == saved.getvalue()
    for row, square in zip(read_manifest(out), images, strict=True):
        direct = preprocess.preprocess_file(root / row["relpath"], IMAGE_SIZE, RESIZE)
        assert direct.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and direct.dtype == np.uint8
        np.testing.assert_array_equal(
            direct, preprocess.center_crop(square, IMAGE_SIZE), err_msg=row["relpath"]
        )


def test_preprocess_file_matches_the_cache(messy: Path, tmp_path: Path) -> None:
    """The raw-file path used for serving and the decoded cache used for training agree exactly."""
    out = tmp_path / "prepared"
    prepare(messy, out)
    rows = read_manifest(out)
    assert len(rows) > 30
    assert_cache_holds_each_photo(messy, out)
    # an open file object gives the same pixels as the path
    row = next(r for r in rows if r["relpath"] == "daisy/UPPER.JPG")
    with open(messy / row["relpath"], "rb") as f:
        from_stream = preprocess.preprocess_file(f, IMAGE_SIZE, RESIZE)
    np.testing.assert_array_equal(
        from_stream, preprocess.preprocess_file(messy / row["relpath"], IMAGE_SIZE, RESIZE)
    )


def test_center_crop_and_model_input() -> None:
    images = np.arange(2 * 6 * 6 * 3, dtype=np.uint8).reshape(2, 6, 6, 3)
    crop = preprocess.center_crop(images, 4)
    np.testing.assert_array_equal(crop, images[:, 1:5, 1:5, :])
    np.testing.assert_array_equal(preprocess.center_crop(images[0], 2), images[0, 2:4, 2:4, :])
    x = preprocess.to_model_input(np.full((1, 2, 2, 3), 255, np.uint8))
    assert x.shape == (1, 3, 2, 2)
    assert x.dtype == np.float32
    expected = (1 - np.array(preprocess.MEAN)) / np.array(preprocess.STD)
    np.testing.assert_allclose(x[0, :, 0, 0], expected, rtol=1e-6)
    assert preprocess.resize_size(224, 0.875) == 256


def test_links_that_go_nowhere_are_skipped_with_reasons(photos: Path, tmp_path: Path) -> None:
    (photos / "daisy/broken.jpg").symlink_to(photos / "daisy/gone.jpg")
    (photos / "daisy/loop_a.jpg").symlink_to("loop_b.jpg")
    (photos / "daisy/loop_b.jpg").symlink_to("loop_a.jpg")
    (photos / "roses/linked.jpg").symlink_to(photos / "roses/roses_000.jpg")  # a link that works
    (photos / "roses/more").symlink_to(photos / "dandelion", target_is_directory=True)
    os.mkfifo(photos / "daisy/pipe.jpg")  # reading it would wait for a writer forever
    out = tmp_path / "prepared"
    metrics = prepare(photos, out)
    reasons = skipped_reasons(out)
    assert reasons == {
        "daisy/broken.jpg": "broken link",
        "daisy/loop_a.jpg": "cannot be read (Too many levels of symbolic links)",
        "daisy/loop_b.jpg": "cannot be read (Too many levels of symbolic links)",
        "daisy/pipe.jpg": "not a regular file",
        "roses/more/": "link to a folder, not followed",
    }
    assert metrics["images"] == 3 * 24 + 1
    assert "roses/linked.jpg" in {row["relpath"] for row in read_manifest(out)}


def test_a_photo_deleted_after_the_scan_is_skipped(photos: Path, tmp_path: Path, monkeypatch) -> None:
    real_scan = scan.scan

    def scan_then_delete(root: Path):
        found = real_scan(root)
        (root / "roses/roses_003.jpg").unlink()  # between the scan and the decode
        return found

    monkeypatch.setattr(scan, "scan", scan_then_delete)
    out = tmp_path / "prepared"
    metrics = prepare(photos, out)
    assert skipped_reasons(out) == {"roses/roses_003.jpg": "cannot be read (No such file or directory)"}
    assert metrics["images"] == 3 * 24 - 1


def test_unreadable_files_and_folders_are_skipped_with_reasons() -> None:
    with tempfile.TemporaryDirectory() as scratch:  # not under tmp_path, whose parents are private
        base = Path(scratch)
        base.chmod(0o777)
        photos = make_photos(base / "photos", per_class=12)
        (photos / "daisy/secret.jpg").write_bytes((photos / "daisy/daisy_000.jpg").read_bytes())
        (photos / "daisy/secret.jpg").chmod(0)
        (photos / "roses/locked").mkdir()
        shutil.copy(photos / "roses/roses_000.jpg", photos / "roses/locked/inside.jpg")
        (photos / "roses/locked").chmod(0)
        shutil.copytree(photos / "roses", photos / "tulips", ignore=shutil.ignore_patterns("locked"))
        (photos / "tulips").chmod(0)  # a whole class folder
        out = base / "prepared"
        metrics = unprivileged(prepare, photos, out)
        reasons = skipped_reasons(out)
    assert reasons == {
        "daisy/secret.jpg": "cannot be read (Permission denied)",
        "roses/locked/": "folder cannot be read (Permission denied)",
        "tulips/": "folder cannot be read (Permission denied)",
    }
    assert set(metrics["counts"]["train"]) == {"daisy", "dandelion", "roses"}
    assert metrics["images"] == 3 * 12


def recompressed(source: Path, target: Path) -> None:
    """Another file of the same photo: re-encoded, so other bytes and slightly other pixels."""
    Image.open(source).save(target, quality=70)


@pytest.mark.parametrize("conflicts", ["keep", "drop"])
def test_near_duplicates_share_a_split_and_label_conflicts_are_reported(
    photos: Path, tmp_path: Path, conflicts: str
) -> None:
    recompressed(photos / "daisy/daisy_005.jpg", photos / "daisy/again.jpg")
    shutil.copy(photos / "daisy/daisy_007.jpg", photos / "daisy/copy.jpg")
    recompressed(photos / "roses/roses_001.jpg", photos / "dandelion/also.jpg")  # filed twice
    out = tmp_path / "prepared"
    metrics = scan.prepare(photos, out, SPLIT, resize=RESIZE, label_conflicts=conflicts, workers=2)
    report = json.loads((out / "report.json").read_text())
    groups = [set(paths) for paths in report["duplicate_groups"]]
    assert {"daisy/again.jpg", "daisy/daisy_005.jpg"} in groups and {
        "daisy/copy.jpg",
        "daisy/daisy_007.jpg",
    } in groups
    assert report["label_conflicts"] == [["dandelion/also.jpg", "roses/roses_001.jpg"]]
    assert metrics["label_conflicts"] == 1 and metrics["duplicate_groups"] == len(groups)
    split = {row["relpath"]: row["split"] for row in read_manifest(out)}
    for group in groups:
        assert len({split[p] for p in group if p in split}) <= 1  # dropped: none
    if conflicts == "drop":
        assert "roses/roses_001.jpg" not in split and "dandelion/also.jpg" not in split
        assert skipped_reasons(out)["roses/roses_001.jpg"].startswith("label conflict")
        assert metrics["images"] == 3 * 24 + 3 - 2
        assert_cache_holds_each_photo(photos, out)  # the rows after those left out moved up
    else:
        assert metrics["images"] == 3 * 24 + 3 and not skipped_reasons(out)


def test_without_near_duplicates_only_the_same_bytes_group(photos: Path, tmp_path: Path) -> None:
    recompressed(photos / "daisy/daisy_005.jpg", photos / "daisy/again.jpg")
    shutil.copy(photos / "daisy/daisy_007.jpg", photos / "daisy/copy.jpg")
    out = tmp_path / "prepared"
    scan.prepare(photos, out, replace(SPLIT, near_duplicates=None), resize=RESIZE, workers=2)
    report = json.loads((out / "report.json").read_text())
    assert report["duplicate_groups"] == [["daisy/copy.jpg", "daisy/daisy_007.jpg"]]


def test_a_cache_the_disk_cannot_hold_is_refused_before_decoding(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "prepared"
    prepare(photos, out)
    before = (out / "images.npy").read_bytes()
    usage = shutil.disk_usage(tmp_path)
    needed = 3 * 24 * RESIZE * RESIZE * 3
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=scan.DISK_MARGIN + needed - 1))
    with pytest.raises(DataError, match=r"prepared: the decoded cache needs .* GB are free") as info:
        prepare(photos, out)
    assert "data.image_size" in str(info.value)
    assert (out / "images.npy").read_bytes() == before  # the earlier cache is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos", "prepared"]  # no temporary left
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=scan.DISK_MARGIN + needed))
    prepare(photos, out)  # exactly enough


def test_find_photos_needs_two_class_folders(tmp_path: Path) -> None:
    root = make_photos(tmp_path / "photos", per_class=2, classes=("daisy", "roses"))
    (root / "stray.jpg").write_bytes(b"x")
    classes, files, skipped = scan.find_photos(root)
    assert classes == ["daisy", "roses"] and files[0] == ("daisy/daisy_000.jpg", "daisy") and len(files) == 4
    assert skipped == [Skipped("stray.jpg", "not inside a class folder")]
    shutil.rmtree(root / "roses")
    with pytest.raises(DataError, match="found 1 class folder"):
        scan.find_photos(root)


def test_decode_photos_fills_the_cache_in_order_and_names_what_failed(photos: Path, tmp_path: Path) -> None:
    (photos / "roses/broken.jpg").write_bytes(b"not a jpeg")
    files = [
        ("daisy/daisy_000.jpg", "daisy"),
        ("roses/broken.jpg", "roses"),
        ("roses/roses_003.jpg", "roses"),
    ]
    images = ImageCache.create(tmp_path / "images.npy", len(files), RESIZE)
    rows, hashes, failed = scan.decode_photos(photos, files, images, RESIZE, workers=1)
    assert [(r["relpath"], r["label"]) for r in rows] == [files[0], files[2]]
    assert failed == [Skipped("roses/broken.jpg", "not a readable image")]
    for i, row in enumerate(rows):
        sha, square, width, height, difference = scan.read_photo(photos / row["relpath"], RESIZE)
        assert (row["sha256"], row["width"], row["height"], hashes[i]) == (sha, width, height, difference)
        np.testing.assert_array_equal(images[i], square)
    assert not images[2].any()  # the failed photo's row stays empty, to be cut


def manifest_rows(*entries: tuple[str, str]) -> list[dict]:
    """Manifest rows of (relpath, sha256) pairs, each filed under its folder's class."""
    return [
        {"relpath": path, "label": path.split("/")[0], "sha256": sha, "width": 9, "height": 7}
        for path, sha in entries
    ]


def test_label_conflicts_are_grouped_and_dropped_with_their_cache_rows(tmp_path: Path) -> None:
    """a/1 and b/1 are the same bytes in two classes (a conflict); a/2 and a/3 are one bit apart."""
    rows = manifest_rows(
        ("a/1.jpg", "x"), ("a/2.jpg", "y"), ("b/1.jpg", "x"), ("b/2.jpg", "z"), ("a/3.jpg", "w")
    )
    hashes = [0, 0xF0F0, 0, 0xFFFF_FFFF, 0xF0F1]
    found = scan.group_duplicates(rows, hashes, near_duplicates=4)
    assert found == scan.Duplicates(
        groups=[0, 1, 0, 3, 1],
        together=[["a/1.jpg", "b/1.jpg"], ["a/2.jpg", "a/3.jpg"]],
        conflicts=[["a/1.jpg", "b/1.jpg"]],
    )
    assert scan.group_duplicates(rows, hashes, near_duplicates=None).together == [["a/1.jpg", "b/1.jpg"]]
    images = ImageCache.create(tmp_path / "images.npy", len(rows), 2)
    for i in range(len(rows)):
        images[i] = np.full((2, 2, 3), i + 1, np.uint8)
    kept, after, left_out = scan.drop_conflicts(rows, found, images)
    assert [r["relpath"] for r in kept] == ["a/2.jpg", "b/2.jpg", "a/3.jpg"]
    assert [int(images[i][0, 0, 0]) for i in range(3)] == [2, 4, 5]  # moved up over the gaps
    assert after == scan.Duplicates([1, 3, 1], found.together, found.conflicts)  # still reported
    reason = "label conflict, left out (data.label_conflicts)"
    assert left_out == [Skipped("a/1.jpg", reason), Skipped("b/1.jpg", reason)]


def test_split_rows_keeps_a_group_together_as_the_split_section_says() -> None:
    rows = manifest_rows(*((f"{label}/{i}.jpg", f"{label}{i}") for label in "ab" for i in range(20)))
    groups = [0 if i in (3, 17, 30) else i for i in range(len(rows))]
    split = SplitConfig(val=0.2, test=0.3, seed=7)
    shas, labels = [r["sha256"] for r in rows], [r["label"] for r in rows]
    found = scan.split_rows(rows, groups, split)
    assert [r["split"] for r in found] == assign_splits(shas, labels, 0.2, 0.3, 7, groups)
    assert len({found[i]["split"] for i in (0, 3, 17, 30)}) == 1
    assert [{k: v for k, v in r.items() if k != "split"} for r in found] == rows and "split" not in rows[0]


def test_write_prepared_cuts_the_cache_and_writes_the_manifest_and_report(tmp_path: Path) -> None:
    found = manifest_rows(("a/1.jpg", "x"), ("b/é.jpg", "y"))
    rows = [r | {"split": s} for r, s in zip(found, ("train", "val"), strict=True)]
    images = ImageCache.create(tmp_path / "images.npy", 3, 2)
    for i in range(3):
        images[i] = np.full((2, 2, 3), i + 1, np.uint8)
    images.close()
    skipped = [Skipped("c/é.jpg", "hidden")]
    duplicates = scan.Duplicates([0, 1], [["a/1.jpg", "a/0.jpg"]], [])
    scan.write_prepared(tmp_path, rows, ["a", "b"], skipped, duplicates, resize=2, root=Path("/photos"))
    saved = io.BytesIO()
    np.save(saved, np.stack([np.full((2, 2, 3), i + 1, np.uint8) for i in range(2)]))
    assert (tmp_path / "images.npy").read_bytes() == saved.getvalue()
    assert read_manifest(tmp_path) == [{k: str(v) for k, v in r.items()} for r in rows]
    assert (tmp_path / "manifest.csv").read_text().splitlines()[0] == ",".join(MANIFEST_FIELDS)
    meta = {"classes": ["a", "b"], "resize_size": 2, "source_root": "/photos"}
    assert json.loads((tmp_path / "dataset.json").read_text()) == meta
    report = json.loads((tmp_path / "report.json").read_text())
    assert report == {
        "source_root": "/photos",
        "skipped": [{"path": "c/é.jpg", "reason": "hidden"}],
        "duplicate_groups": [["a/1.jpg", "a/0.jpg"]],
        "label_conflicts": [],
        "excluded": [],
    }
    assert '"c/é.jpg"' in (tmp_path / "report.json").read_text(encoding="utf-8")  # not escaped


def test_exclude_leaves_out_exactly_its_photos_and_every_other_keeps_its_split(
    photos: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    prepare(photos, tmp_path / "all")
    before = {r["relpath"]: r for r in read_manifest(tmp_path / "all")}
    cache = np.load(tmp_path / "all" / "images.npy")
    by_split = {s: sorted(p for p, r in before.items() if r["split"] == s) for s in ("train", "val", "test")}
    listed = [by_split["train"][0], by_split["train"][5], by_split["val"][1], by_split["test"][2]]
    exclude = tmp_path / "exclude.txt"
    exclude.write_text("# reviewed\n\n" + "\n".join(f"  {p}" for p in listed) + "\n" + listed[0] + "\n")
    out = tmp_path / "fewer"
    metrics = scan.prepare(photos, out, SPLIT, resize=RESIZE, workers=2, exclude=exclude)
    rows = read_manifest(out)
    assert {r["relpath"] for r in rows} == set(before) - set(listed)
    assert all(r == before[r["relpath"]] for r in rows)  # every other photo keeps its split
    position = {p: i for i, p in enumerate(before)}
    images = np.load(out / "images.npy")
    assert np.array_equal(images, cache[[position[r["relpath"]] for r in rows]])
    report = json.loads((out / "report.json").read_text())
    assert report["excluded"] == [
        {k: before[p][k] for k in ("relpath", "label", "split")} for p in sorted(listed)
    ]
    assert (metrics["images"], metrics["excluded"], metrics["excluded_test"]) == (len(before) - 4, 4, 1)
    assert "data.exclude leaves out 1 test photos" in caplog.text  # never silently


def test_exclude_refuses_a_path_that_is_not_a_photo_of_the_data(photos: Path, tmp_path: Path) -> None:
    exclude = tmp_path / "exclude.txt"
    exclude.write_text("# reviewed\ndaisy/daisy_000.jpg\ndaisy/no_such.jpg\n")
    with pytest.raises(DataError, match=rf"^{exclude}:3: daisy/no_such.jpg is not among the photos"):
        scan.prepare(photos, tmp_path / "out", SPLIT, resize=RESIZE, workers=2, exclude=exclude)
    assert not (tmp_path / "out").exists()  # nothing half-written
    with pytest.raises(DataError, match=rf"^{tmp_path / 'none.txt'}: data.exclude names no such file"):
        scan.prepare(photos, tmp_path / "out", SPLIT, resize=RESIZE, workers=2, exclude=tmp_path / "none.txt")
