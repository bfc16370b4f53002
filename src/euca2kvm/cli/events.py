# SPDX-License-Identifier: Apache-2.0
"""Progress and events of a batch export: rich bars on a terminal, JSON lines with --json, quiet otherwise."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from ..errors import Euca2kvmError, Interrupted
from .common import console_err, esc
from .console import visible

# JSON progress events at most this often per volume: enough for a dashboard, not a flood.
JSON_PROGRESS_INTERVAL = 1.0


class Reporter:
    """Thread-safe sink for the events of several concurrent exports."""

    def __init__(self, as_json: bool, total: int, cancel: threading.Event) -> None:
        self.as_json = as_json
        self.total = total
        self.cancel = cancel
        self._lock = threading.Lock()
        self._progress: Any = None  # a rich Progress, on a terminal only
        self._overall: Any = None
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> Reporter:
        if not self.as_json and console_err.is_terminal:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                      DownloadColumn(binary_units=True), TransferSpeedColumn(),
                                      TimeRemainingColumn(), console=console_err.real(), transient=True)
            self._progress.start()
            self._overall = self._progress.add_task("[bold]all volumes", total=self.total)
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.stop()

    def _emit(self, **event: Any) -> None:
        event = {"event": event.pop("event"), "time": round(time.time(), 3), **event}
        with self._lock:
            sys.stdout.write(json.dumps(event, sort_keys=False) + "\n")
            sys.stdout.flush()

    def start(self, vid: str, size: int) -> Callable[[int], None]:
        """Announce a volume; returns its ``advance(nbytes)`` callback (raises Interrupted once cancelled)."""
        if self.as_json:
            self._emit(event="start", id=vid, size=size)
        task = None
        if self._progress is not None:
            with self._lock:
                # rich renders descriptions with Text.from_markup, not through the console's render_str
                task = self._progress.add_task(esc(visible(vid)), total=size)
        done = 0
        last = 0.0

        def advance(n: int) -> None:
            nonlocal done, last
            if self.cancel.is_set():
                raise Interrupted("interrupted")
            done += n
            if self._progress is not None and task is not None:
                with self._lock:
                    self._progress.update(task, advance=n)
                    assert self._overall is not None
                    self._progress.update(self._overall, advance=n)
            if self.as_json:
                now = time.monotonic()
                if now - last >= JSON_PROGRESS_INTERVAL or done >= size:
                    last = now
                    self._emit(event="progress", id=vid, done=done, size=size)

        return advance

    def done(self, vid: str, entry: dict[str, Any], reused: bool) -> None:
        if self.as_json:
            self._emit(event="skipped" if reused else "done", id=vid, entry=entry)

    def error(self, vid: str, e: Euca2kvmError) -> None:
        if self.as_json:
            self._emit(event="error", id=vid, message=str(e), exit_code=e.exit_code)
        else:
            console_err.print(f"[bold red]euca2kvm: {esc(vid)}:[/] {esc(str(e))}")

    def warn(self, msg: str) -> None:
        if self.as_json:
            self._emit(event="warning", message=msg)
        else:
            console_err.print(f"[yellow]warning:[/] {esc(msg)}")
