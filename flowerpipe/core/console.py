"""What the user sees: logging set-up, progress bars and the one-line error exit of a command."""

from __future__ import annotations

import io
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from flowerpipe.core.atomic import disk_full, out_of_space
from flowerpipe.core.errors import FlowerpipeError

if TYPE_CHECKING:
    from tqdm import tqdm

T = TypeVar("T")
log = logging.getLogger("flowerpipe")


def is_main_process() -> bool:
    """False in the processes torchrun starts beside rank 0 (they share its terminal)."""
    return os.environ.get("RANK", "0") == "0"


def setup_logging(level: int = logging.INFO) -> None:
    """Plain `LEVEL message` lines on stderr: flowerpipe's at `level` (warnings only in torchrun's
    processes other than rank 0), other libraries' warnings."""
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    log.setLevel(level if is_main_process() else logging.WARNING)


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> tqdm:
    """A progress bar on a terminal, in rank 0 only; silent when stderr is not a terminal (CI logs
    stay plain)."""
    from tqdm.auto import tqdm  # imported here: the torch-free commands don't install it

    disable = None if is_main_process() else True
    return tqdm(items, desc=desc, total=total, unit=unit, disable=disable, leave=False, dynamic_ncols=True)


def run_main(main: Callable[[], int | None], summary: bool = True) -> None:
    """Run a command's main() and exit with the status it returns (None: 0); a FlowerpipeError
    exits 1 with one `error:` line and no traceback (naming the rank in torchrun's other processes).
    With `summary`, a last line gives the wall time and the peak resident memory."""
    setup_logging()
    start = time.perf_counter()
    try:
        status = main()
    except FlowerpipeError as exc:
        _exit_with(exc)
    except OSError as exc:  # a full disk where no atomic write of flowerpipe's was under way
        written = exc.filename or _file_written(exc)
        if written is None or not out_of_space(exc, Path(written).parent):
            raise
        _exit_with(disk_full(written))
    if summary:
        log.info("done in %.1f s%s", time.perf_counter() - start, peak_memory())
    sys.exit(status or 0)


def _file_written(exc: BaseException) -> str | None:
    """The name of the file that the innermost frame of `exc` that holds one was writing: a failed
    write() names no file of its own."""
    tb, name = exc.__traceback__, None
    while tb is not None:
        for value in tb.tb_frame.f_locals.values():
            if isinstance(value, io.IOBase) and any(m in getattr(value, "mode", "") for m in "wax+"):
                name = getattr(value, "name", name)
        tb = tb.tb_next
    return str(name) if isinstance(name, str | os.PathLike) else None


def _exit_with(exc: FlowerpipeError) -> None:
    where = "" if is_main_process() else f"rank {os.environ['RANK']}: "  # one of torchrun's processes
    print(f"error: {where}{exc}", file=sys.stderr)
    sys.exit(1)


def peak_memory() -> str:
    """', peak RSS X GiB' of this process; empty where the platform does not say (Windows)."""
    try:
        import resource
    except ImportError:
        return ""
    unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return f", peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit / 2**30:.2f} GiB"
