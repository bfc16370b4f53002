# SPDX-License-Identifier: Apache-2.0
"""in_order: results in item order, bounded look-ahead, pending work cancelled on error."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from euca2kvm.export.inorder import in_order


def test_results_in_order_with_bounded_lookahead() -> None:
    taken = 0
    got: list[int] = []
    most_ahead = 0

    def items(pool: ThreadPoolExecutor) -> Iterator[Future[int] | int]:
        nonlocal taken
        for i in range(40):
            taken += 1
            if i % 3 == 0:
                yield i  # no work needed: passed as its result
            else:
                yield pool.submit(lambda i=i: (time.sleep(0.001 * (i % 5)), i)[1])

    def consume(v: int) -> None:
        nonlocal most_ahead
        got.append(v)
        most_ahead = max(most_ahead, taken - len(got))

    with ThreadPoolExecutor(4) as pool:
        in_order(items(pool), 5, consume)
    assert got == list(range(40))
    assert most_ahead <= 4  # at most `inflight` taken and not consumed, one of them just consumed


def test_error_cancels_pending_futures() -> None:
    gate = threading.Event()
    with ThreadPoolExecutor(1) as pool:  # one worker: the later items wait in its queue
        failing = pool.submit(lambda: 1 // 0)
        waiting = [pool.submit(gate.wait) for _ in range(3)]
        with pytest.raises(ZeroDivisionError):
            in_order(iter([failing, *waiting]), 4, lambda v: None)
        gate.set()
    assert sum(f.cancelled() for f in waiting) >= 2  # all but the one the worker may have started
