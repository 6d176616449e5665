"""What the tests share besides fixtures (tests/conftest.py), by job: photos (synthetic photos,
noisy squares), recipes (PLAIN_TRAIN, SMALL), repo (the throwaway git + DVC repo, shared with the
benchmarks), onnx_files (ONNX files made without torch), hostile (files that must not load),
browser (headless Chromium)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
