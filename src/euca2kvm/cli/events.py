# SPDX-License-Identifier: Apache-2.0
"""Progress and events of a batch export: rich bars on a terminal, JSON lines with --json, quiet otherwise."""

from __future__ import annotations

import json
import sys
import threading
import time
from types import TracebackType
from typing import Any

from ..errors import Euca2kvmError, Interrupted
from ..units import human
from .common import console, console_err, esc
from .console import is_terminal, visible

# JSON progress events at most this often per volume: enough for a dashboard, not a flood.
JSON_PROGRESS_INTERVAL = 1.0
# A rate over a shorter time than this is noise (and a division by zero at 0.0 s).
MIN_SECONDS = 0.001


class VolumeProgress:
    """The callbacks of one volume: called with bytes of the LV covered (raises Interrupted once
    cancelled); ``read`` with bytes actually read from its sources."""

    def __init__(self, rep: Reporter, vid: str, size: int, task: Any) -> None:
        self._rep, self.vid, self.size, self.task = rep, vid, size, task
        self.done = 0
        self.bytes_read: int | None = None  # None: nothing tells what this export reads (gzip, cached)
        self._last = 0.0

    def __call__(self, n: int) -> None:
        rep = self._rep
        if rep.cancel.is_set():
            raise Interrupted("interrupted")
        self.done += n
        if rep._progress is not None and self.task is not None:
            with rep._lock:
                rep._progress.update(self.task, advance=n)
                rep._progress.update(rep._overall, advance=n)
        if rep.as_json:
            now = time.monotonic()
            if now - self._last >= JSON_PROGRESS_INTERVAL or self.done >= self.size:
                self._last = now
                rep._emit(event="progress", id=self.vid, done=self.done, size=self.size)

    def read(self, n: int) -> None:
        rep = self._rep
        with rep._lock:
            self.bytes_read = (self.bytes_read or 0) + n
            rep._read += n
            if rep._progress is not None and self.task is not None:
                rep._progress.update(self.task, read=self.bytes_read)
                rep._progress.update(rep._overall, read=rep._read)


def result_line(label: str, entry: dict[str, Any], reused: bool, bytes_read: int | None = None) -> str:
    """The line (markup) that ends the export of one volume: output, size, time, read rate, digest.

    ``bytes_read`` stands in for a manifest entry that records none (a conversion: what its source
    digest read)."""
    delta = entry.get("delta")
    if reused:
        what = "already exported and verified"
    elif isinstance(delta, dict):  # a delta pass (--sync, a later --warm): its own numbers, not the first pass's
        secs = float(delta.get("seconds") or 0)
        what = (f"{'synced' if delta.get('final') else 'warm delta pass'} in {secs:.2f} s: "
                f"{delta.get('blocks_changed')} of {delta.get('blocks')} blocks changed, "
                f"{_read_at(int(delta.get('bytes_read') or 0), secs)}, "
                f"wrote {human(int(delta.get('bytes_written') or 0))}")
    else:
        what = f"{human(entry['size'])} in {entry['seconds']:.2f} s"
        read = entry.get("bytes_read", bytes_read)
        if read is not None:
            what += f", {_read_at(read, entry['seconds'])}"
    return f"{esc(label)} -> {esc(entry['output'])}  {what}  {entry.get('digest') or ''}".rstrip()


def _read_at(read: int, seconds: float) -> str:
    return f"read {human(read)} at {human(read / max(seconds, MIN_SECONDS))}/s"


def _read_rate_column() -> Any:
    from rich.progress import ProgressColumn
    from rich.text import Text

    class ReadRate(ProgressColumn):
        """Bytes actually read per second (rich's TransferSpeedColumn counts the holes skipped too)."""

        def render(self, task: Any) -> Text:
            read, elapsed = task.fields.get("read"), task.elapsed
            if read is None or not elapsed:
                return Text("", style="progress.data.speed")
            return Text(f"read {human(read / max(elapsed, MIN_SECONDS))}/s", style="progress.data.speed")

    return ReadRate()


class Reporter:
    """Thread-safe sink for the events of several concurrent exports.

    On a terminal (and without --json) one live display for the whole run: a bar per volume in
    progress and an overall bar with ETA, on the stderr console. Everything printed meanwhile (result
    lines, errors, warnings) goes through that console, above the bars; a volume's bar is replaced by
    its result line when it ends. Elsewhere no progress at all; --json writes event lines to stdout.
    """

    def __init__(self, as_json: bool, total: int, cancel: threading.Event) -> None:
        self.as_json = as_json
        self.total = total
        self.cancel = cancel
        self._lock = threading.Lock()
        self._progress: Any = None  # a rich Progress, on a terminal only
        self._overall: Any = None
        self._read = 0
        self._volumes: dict[str, VolumeProgress] = {}

    def __enter__(self) -> Reporter:
        if not self.as_json and console_err.is_terminal:
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

            # stdout on a terminal too: anything written to it goes above the bars, not through them.
            # Redirected stdout stays where it was sent.
            self._progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                      DownloadColumn(binary_units=True), _read_rate_column(),
                                      TimeRemainingColumn(), console=console_err.real(), transient=True,
                                      redirect_stdout=is_terminal(sys.stdout))
            self._progress.start()
            self._overall = self._progress.add_task("[bold]all volumes", total=self.total, read=None)
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.stop()

    def event(self, name: str, **fields: Any) -> None:
        """One JSON event line (with --json): ``event``, ``time`` (Unix seconds), then ``fields``."""
        self._emit(event=name, **fields)

    def _emit(self, **event: Any) -> None:
        event = {"event": event.pop("event"), "time": round(time.time(), 3), **event}
        with self._lock:
            sys.stdout.write(json.dumps(event, sort_keys=False) + "\n")
            sys.stdout.flush()

    def start(self, vid: str, size: int) -> VolumeProgress:
        """Announce a volume; returns its progress callbacks."""
        if self.as_json:
            self._emit(event="start", id=vid, size=size)
        task = None
        if self._progress is not None:
            with self._lock:
                # rich renders descriptions with Text.from_markup, not through the console's render_str
                task = self._progress.add_task(esc(visible(vid)), total=size, read=None)
        vp = VolumeProgress(self, vid, size, task)
        with self._lock:
            self._volumes[vid] = vp
        return vp

    def _end(self, vid: str) -> VolumeProgress | None:
        """Remove the bar of ``vid``; what it did not cover leaves the overall total (its ETA stays true)."""
        with self._lock:
            vp = self._volumes.pop(vid, None)
            if vp is None or self._progress is None or vp.task is None:
                return vp
            self._progress.remove_task(vp.task)
            if vp.done < vp.size:
                self.total -= vp.size - vp.done
                self._progress.update(self._overall, total=self.total)
            # Lines printed meanwhile are followed by the display as last rendered: without this its
            # bar would stay below the volume's own result line until the next refresh.
            self._progress.refresh()
        return vp

    def done(self, vid: str, entry: dict[str, Any], reused: bool, label: str | None = None) -> None:
        """A volume is exported: its JSON event, or its result line (on stdout; above the bars on a terminal)."""
        vp = self._end(vid)
        if self.as_json:
            self._emit(event="skipped" if reused else "done", id=vid, entry=entry)
            return
        self.say(result_line(label or vid, entry, reused, vp.bytes_read if vp is not None else None))

    def say(self, markup: str) -> None:
        """Print a line of results on stdout; with stdout on the terminal of the live display, through
        its console, so that the line lands above the bars instead of being drawn over by them. On a
        terminal a line wider than the screen is folded between words (an id longer than the screen on
        rows of its own), not cut by the terminal in the middle of one; piped, it stays one line."""
        if not is_terminal(sys.stdout):
            console.print(markup)
        elif self._progress is not None:
            self._progress.console.print(markup, soft_wrap=False)  # fold between words, not where the screen ends
        else:
            console.real().print(markup, soft_wrap=False)

    def error(self, vid: str, e: Euca2kvmError) -> None:
        self._end(vid)
        if self.as_json:
            self._emit(event="error", id=vid, message=str(e), exit_code=e.exit_code)
        else:
            console_err.print(f"[bold red]euca2kvm: {esc(vid)}:[/] {esc(str(e))}")

    def warn(self, msg: str) -> None:
        if self.as_json:
            self._emit(event="warning", message=msg)
        else:
            console_err.print(f"[yellow]warning:[/] {esc(msg)}")
