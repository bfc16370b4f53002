# SPDX-License-Identifier: Apache-2.0
"""Blocks worked on in parallel and folded in disk order: shared by the block mover
(:mod:`.copy`) and the image digest (:mod:`.imagedigest`)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any, TypeVar

from .digest import ZEROS

T = TypeVar("T")


def in_order(items: Iterable[Future[T] | T], inflight: int, consume: Callable[[T], None]) -> None:
    """Consume ``items`` in order (a future once it is done), with at most ``inflight`` of them
    taken and not yet consumed. ``items`` is lazy: taking one is what submits its work, so memory
    stays bounded whatever the disk size. An item that needed no work is passed as its result. On
    any error the futures not consumed yet are cancelled before the error propagates."""
    pending: deque[Future[T] | T] = deque()

    def take() -> None:
        item = pending.popleft()
        consume(item.result() if isinstance(item, Future) else item)

    try:
        for item in items:
            pending.append(item)
            if len(pending) >= inflight:
                take()
        while pending:
            take()
    except BaseException:
        for item in pending:
            if isinstance(item, Future):
                item.cancel()
        raise


def fold_plain(plain: Any, buf: memoryview | None, n: int, give_back: Callable[[memoryview], None]) -> None:
    """Fold one block into the plain sha256: its kept buffer (then handed back), or zeros."""
    if buf is not None:
        plain.update(memoryview(buf)[:n])
        give_back(buf)
    else:
        plain.update(ZEROS[:n])
