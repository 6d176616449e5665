"""Files and processes that must not get past a loader: pickles that run code, and calls made as
an unprivileged user (file permissions bind even where the tests run as root)."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

from PIL import Image


class _RunsCode:
    """Unpickled, this would create the file it names: proof that a load ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def hostile_torch_files(folder: Path) -> tuple[dict[str, Path], Path]:
    """Files that are no torch file flowerpipe wrote, by name, and the file that a load which ran
    code would create."""
    import pickle

    import torch

    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / "code-ran"
    files = {name: folder / f"{name}.pt" for name in ("text", "empty", "cut_short", "pickle", "torch_pickle")}
    files["text"].write_text("not a torch file\n")
    files["empty"].write_bytes(b"")
    torch.save({"weight": torch.ones(64, 64)}, files["cut_short"])
    files["cut_short"].write_bytes(files["cut_short"].read_bytes()[:300])
    files["pickle"].write_bytes(pickle.dumps(_RunsCode(marker)))
    torch.save({"state_dict": _RunsCode(marker)}, files["torch_pickle"])
    return files, marker


def _as_unprivileged(queue, call, args) -> None:
    if os.geteuid() == 0:  # root reads whatever the permissions say: be nobody
        os.setgid(65534)
        os.setuid(65534)
    try:
        queue.put(call(*args))
    except Exception as exc:  # handed to the test, which raises it
        queue.put(exc)


def unprivileged(call, *args):
    """`call(*args)` in a forked process that file permissions bind, even when the tests run as
    root; what it returns or raises comes back."""
    Image.init()  # every PIL plugin loaded before the fork
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_as_unprivileged, args=(queue, call, args))
    child.start()
    result = queue.get(timeout=300)
    child.join()
    if isinstance(result, Exception):
        raise result
    return result
