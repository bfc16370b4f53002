# SPDX-License-Identifier: Apache-2.0
"""One batch runner for ``export`` and ``export-instance``: jobs in parallel, one Ctrl-C rule.

A job exports one disk: an optional check run before it is announced (a refusal is an error event
without a start event), then its export, given the progress callbacks of the Reporter. At most
``concurrency`` jobs run at once. The main thread only waits, in short slices, so that Ctrl-C
reaches it: it then sets the Reporter's cancel event (every running job raises ``Interrupted`` at its
next progress callback, and its private work directory with the partial files goes with it), drops
the jobs not started, waits for the running ones and re-raises, so that the command says only
"interrupted" and exits 130. A job's own errors are reported once, naming the job, and collected;
after a Ctrl-C they are not reported (they are consequences of it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

from ..errors import Euca2kvmError, Interrupted
from .common import without_id
from .events import Reporter, VolumeProgress

# How long the main thread blocks on one job at a time: short enough that Ctrl-C is handled at once
# (a blocked Future.result() does not see KeyboardInterrupt until it returns), long enough to cost nothing.
WAIT_SLICE_S = 0.2

Entry = dict[str, Any]


@dataclass(frozen=True)
class Job:
    """One disk of a batch: ``run`` exports it and returns (manifest entry, reused existing output)."""

    id: str  # what progress, events and errors name
    size: int
    run: Callable[[VolumeProgress], tuple[Entry, bool]]
    check: Callable[[], None] | None = None  # refusals before the job is announced
    label: str | None = None  # its result line's name (default: ``id``)


@dataclass
class Outcome:
    entries: dict[str, Entry] = field(default_factory=dict)  # by job id, finished jobs only
    errors: list[Euca2kvmError] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return self.errors[0].exit_code if self.errors else 0


def run_batch(jobs: Sequence[Job], rep: Reporter, concurrency: int) -> Outcome:
    """Run ``jobs``, at most ``concurrency`` at once; raises KeyboardInterrupt or ``Interrupted`` after
    a Ctrl-C (every job cancelled and its partial files removed), returns the outcome otherwise."""
    cancel = rep.cancel
    out = Outcome()

    def one(job: Job) -> None:
        try:
            if cancel.is_set():
                raise Interrupted("interrupted")
            if job.check is not None:
                job.check()
            advance = rep.start(job.id, job.size)
            entry, reused = job.run(advance)
            out.entries[job.id] = entry
            rep.done(job.id, entry, reused, label=job.label)  # the result line, or the JSON event
        except Euca2kvmError as e:
            if not (isinstance(e, Interrupted) or cancel.is_set()):  # Ctrl-C says "interrupted" once
                rep.error(job.id, without_id(e, job.id))
            out.errors.append(e)

    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="export")
    futures: list[Future[None]] = [pool.submit(one, j) for j in jobs]
    try:
        for f in futures:
            while True:
                try:
                    f.result(timeout=WAIT_SLICE_S)
                    break
                except FutureTimeout:
                    continue
    except KeyboardInterrupt:
        cancel.set()
        for f in futures:
            f.cancel()
        pool.shutdown(wait=True)
        raise
    pool.shutdown(wait=True)
    interrupted = [e for e in out.errors if isinstance(e, Interrupted)]
    if interrupted:
        raise interrupted[0]
    return out
