"""What the user sees: logging set-up, progress bars and the one-line error exit of a command."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable
from typing import TypeVar

from tqdm.auto import tqdm

from .errors import FlowerpipeError

T = TypeVar("T")
log = logging.getLogger("flowerpipe")


def setup_logging(level: int = logging.INFO) -> None:
    """Plain `LEVEL message` lines on stderr: flowerpipe's at `level`, other libraries' warnings."""
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    log.setLevel(level)


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> tqdm:
    """A progress bar on a terminal; silent when stderr is not a terminal (CI logs stay plain)."""
    return tqdm(items, desc=desc, total=total, unit=unit, disable=None, leave=False, dynamic_ncols=True)


def run_main(main: Callable[[], int | None]) -> None:
    """Run a command's main() and exit with the status it returns (None: 0); a FlowerpipeError
    exits 1 with one `error:` line and no traceback."""
    setup_logging()
    try:
        status = main()
    except FlowerpipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    sys.exit(status or 0)
