"""Progress bars (rich) for a node's long steps, drawn only for a person at a terminal.

Catch-up replay, a checkpoint download and data preparation or download can each take minutes
on a live preset; a bar says the node is alive and how far it is. It is drawn on stderr and only
when stderr is a terminal: logs, ``--json`` output and every test that reads a node's output get
nothing from here. ``TESSERA_NO_PROGRESS=1`` switches the bars off on a terminal too.

    with progress("replaying windows", total=12) as advance:
        for ...:
            ...
            advance()
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

Advance = Callable[..., None]


def _noop(steps: float = 1) -> None:
    """What ``advance`` is when no bar is drawn."""


def progress_enabled(stream: TextIO | None = None) -> bool:
    stream = sys.stderr if stream is None else stream
    if os.environ.get("TESSERA_NO_PROGRESS"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


@contextmanager
def progress(
    description: str, total: float | None = None, *, min_total: float = 0, stream: TextIO | None = None
) -> Iterator[Advance]:
    """A bar for one step (a spinner while ``total`` is None); yields ``advance(steps=1)``.

    No bar when ``total`` is below ``min_total`` (a step too short to be worth one). The bar is
    transient: it disappears when the step ends, leaving only the node's log lines."""
    stream = sys.stderr if stream is None else stream
    if not progress_enabled(stream) or (total is not None and total < min_total):
        yield _noop
        return
    columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn()]
    if total is not None:
        columns.append(MofNCompleteColumn())
    columns.append(TimeElapsedColumn())
    with Progress(*columns, console=Console(file=stream), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda steps=1: bar.advance(task, steps)
