# SPDX-License-Identifier: Apache-2.0
"""Progress display: a rich bar on a terminal, nothing otherwise."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from .common import console_err


@contextlib.contextmanager
def progress_bar(label: str, total: int) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(nbytes)``; draws on stderr only when it is a terminal."""
    if not console_err.is_terminal:
        yield lambda n: None
        return
    lock = threading.Lock()
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
                  TransferSpeedColumn(), TimeRemainingColumn(), console=console_err, transient=True) as p:
        task = p.add_task(label, total=total)

        def advance(n: int) -> None:
            with lock:
                p.update(task, advance=n)

        yield advance
