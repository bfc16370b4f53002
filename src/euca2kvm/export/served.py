# SPDX-License-Identifier: Apache-2.0
"""What the NBD server hands to qemu-img: the source's bytes, counted, and for a verified export
the block digest (:mod:`.digest`) of exactly those bytes, so the source is read once.

qemu-img asks out of order and in pieces (``convert`` keeps 8 requests of up to 2 MiB in flight,
block status first so holes and zeros are never asked for). With an algorithm, each 4 MiB digest
block is read whole (its DATA ranges; ZERO and HOLE ranges are zeros without reading) on its
first touch, hashed, kept in a small LRU cache and the pieces are served from it. Digests are
folded in block order as soon as every block before them is known; a block qemu never asks for
(all zeros or holes in the source's ranges) gets its digest from the ranges, and the rest of a
block qemu skipped is read at the end by :meth:`Served.hexdigest`. A block evicted before qemu
asked for all of it is read again: :attr:`Served.bytes_read` counts every read, so tests and
benchmarks can hold it to the data bytes.

Without an algorithm (``--no-verify``) each request reads just its DATA ranges.

With an algorithm, one thread reads (and hashes) the next block while the connection sends
the current one: when a request first touches block ``i``, block ``i + 1`` is loaded in the
background, so qemu's next requests find it cached instead of waiting for its read and hash.
:meth:`Served.close` stops that thread.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable

from .. import membuf
from ..blocks import BlockSource
from .copy import block_data, fill_block
from .digest import DIGEST_BLOCK, Algorithm, BlockDigest, block_count

# Whole blocks kept after their first touch. qemu-img convert asks in order with a few requests
# in flight; measured on a 512 MiB dense qcow2 export (page-cached), every cache size from 2 to 6
# blocks read the source exactly once (read ratio 1.0), and the process peaked at 50, 59 and
# 67 MB RSS for 2, 4 and 6 blocks: 3 keeps a straggler's block and the job under 64 MiB.
CACHE_BLOCKS = 3
# Blocks read ahead of qemu's requests, within the CACHE_BLOCKS (2 blocks already read the source
# once, and the job stays under 64 MiB). One keeps a reader a block ahead of the requests: serving
# a 512 MiB dense source to qemu-img convert -O qcow2, its pages evicted before each run, six
# interleaved runs on a loaded machine: median 2.02 s against 2.51 s without (faster in 5 of 6),
# the same CPU (1.35 s against 1.42 s); 116 of its 128 blocks were read by the read-ahead thread.
READ_AHEAD = 1
# Each block is read into a new buffer (membuf.aligned: page-aligned, huge pages, unmapped once no
# reply holds it; the numbers are there). Reusing evicted buffers instead (when no reply held a piece
# of them) measured worse with bytearrays: 2 GiB page-cached, three interleaved runs, user 4.07 ->
# 3.87 s but system 4.52 -> 5.51 s, CPU median 8.58 -> 9.25 s: not done.

# Seconds close() waits for a read-ahead in progress; a read of a hung source is left to its
# (daemon) thread, as the server leaves a hung connection's.
CLOSE_TIMEOUT = 10.0

log = logging.getLogger(__name__)

ReadFn = Callable[[int], None]


class Served:
    """Reads ``source`` for an NBD server; with ``algorithm`` also digests it (see the module)."""

    def __init__(self, source: BlockSource, algorithm: Algorithm | None = None, on_read: ReadFn | None = None,
                 cache_blocks: int = CACHE_BLOCKS) -> None:
        self.source = source
        self.algorithm = algorithm
        self.on_read = on_read
        self.bytes_read = 0  # bytes read from the source, re-reads included
        self.rereads = 0  # blocks read a second time (evicted too early)
        self._cache_blocks = max(1, cache_blocks)
        self._ahead: set[int] = set()  # blocks read ahead that no request has touched yet
        self._ahead_q: queue.Queue[int | None] = queue.Queue(maxsize=READ_AHEAD)
        self._reader: threading.Thread | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._cache: OrderedDict[int, memoryview] = OrderedDict()
        self._loading: dict[int, threading.Event] = {}
        self._done: set[int] = set()  # blocks whose digest was taken (folded or pending)
        self._pending: dict[int, bytes] = {}  # digests of blocks beyond the fold point
        self._next = 0  # first block not folded yet
        self._bd = BlockDigest(algorithm) if algorithm is not None else None
        self._blocks = block_count(source.size)

    def _count(self, n: int) -> None:
        with self._lock:
            self.bytes_read += n
            if self.on_read is not None and n:
                self.on_read(n)

    def pieces(self, offset: int, length: int) -> list[memoryview]:
        """The bytes ``[offset, offset + length)`` as buffers to send (raises IOFailure)."""
        if self.algorithm is None:
            buf = bytearray(length)
            view = memoryview(buf)
            got = 0
            for boff, n in block_data(self.source, offset, offset + length, self.source.name):
                self.source.read_into(offset + boff, view[boff : boff + n])
                got += n
            self._count(got)
            return [view]
        out: list[memoryview] = []
        end = offset + length
        for i in range(offset // DIGEST_BLOCK, (end - 1) // DIGEST_BLOCK + 1):
            lo = i * DIGEST_BLOCK
            blk = self._block(i)
            assert blk is not None
            out.append(memoryview(blk)[max(offset, lo) - lo : min(end, lo + len(blk)) - lo])
        return out

    def _block(self, i: int, ahead: bool = False) -> memoryview | None:
        """Block ``i``, read on its first touch; ``ahead`` (the read-ahead thread): None when it
        was digested already (evicted: only a request may read it again)."""
        while True:
            with self._lock:
                buf = self._cache.get(i)
                if buf is not None:
                    if not ahead and i in self._ahead:  # first touch of a block read ahead
                        self._ahead.discard(i)
                        self._read_ahead(i + 1)
                    self._cache.move_to_end(i)
                    return buf
                if ahead and (i in self._done or self._closed):
                    return None
                ev = self._loading.get(i)
                mine = ev is None
                if ev is None:
                    ev = self._loading[i] = threading.Event()
            if mine:
                break
            ev.wait()  # another connection reads it; if that failed, try again here
        try:
            buf, digest = self._load(i)
            with self._lock:
                if i in self._done:
                    self.rereads += 1
                else:
                    self._take(i, digest)
                self._cache[i] = buf
                while len(self._cache) > self._cache_blocks:
                    old, _ = self._cache.popitem(last=False)
                    self._ahead.discard(old)
                if ahead:
                    self._ahead.add(i)
                else:
                    self._read_ahead(i + 1)
        finally:
            with self._lock:
                self._loading.pop(i).set()
        return buf

    def _read_ahead(self, i: int) -> None:
        """Have the reader thread load block ``i`` unless it is there or coming (holds the lock)."""
        if (i >= self._blocks or i in self._cache or i in self._loading or i in self._done or self._closed
                or not READ_AHEAD):
            return
        lo = i * DIGEST_BLOCK
        if not block_data(self.source, lo, min(self.source.size, lo + DIGEST_BLOCK), self.source.name):
            return  # zeros: qemu never asks for it and its digest is known
        if self._reader is None:
            self._reader = threading.Thread(target=self._reader_loop, name="nbd-read-ahead", daemon=True)
            self._reader.start()
        with contextlib.suppress(queue.Full):  # else the reader is behind: a request reads it itself
            self._ahead_q.put_nowait(i)

    def _reader_loop(self) -> None:
        while True:
            i = self._ahead_q.get()
            if i is None:
                return
            try:
                self._block(i, ahead=True)
            except Exception as e:  # the request that needs it reads it again and reports the error
                log.debug("read-ahead of block %d failed: %s", i, e)

    def close(self) -> None:
        """Stop the read-ahead thread (waits up to CLOSE_TIMEOUT for a read in progress) and drop the
        cached blocks."""
        with self._lock:
            self._closed = True
            reader, self._reader = self._reader, None
        if reader is not None:
            while True:  # make room for the stop marker: queued read-aheads are not needed any more
                try:
                    self._ahead_q.get_nowait()
                except queue.Empty:
                    break
            with contextlib.suppress(queue.Full):  # nothing else puts once closed
                self._ahead_q.put_nowait(None)
            reader.join(CLOSE_TIMEOUT)
            if reader.is_alive():
                log.warning("NBD read-ahead thread did not stop (a source read hangs)")
        with self._lock:
            self._cache.clear()

    def _load(self, i: int) -> tuple[memoryview, bytes]:
        assert self.algorithm is not None
        lo = i * DIGEST_BLOCK
        hi = min(self.source.size, lo + DIGEST_BLOCK)
        buf = membuf.aligned(hi - lo)
        self._count(fill_block(self.source, lo, buf, block_data(self.source, lo, hi, self.source.name)))
        return buf, self.algorithm.of(buf)

    def _take(self, i: int, digest: bytes) -> None:
        """Record block ``i``'s digest and fold what is complete (holds the lock)."""
        assert self._bd is not None and self.algorithm is not None
        self._done.add(i)
        self._pending[i] = digest
        while self._next < self._blocks:
            d = self._pending.pop(self._next, None)
            if d is None:
                lo = self._next * DIGEST_BLOCK
                hi = min(self.source.size, lo + DIGEST_BLOCK)
                if self._next in self._done or block_data(self.source, lo, hi, self.source.name):
                    return  # data qemu has not asked for yet
                self._done.add(self._next)
                d = self.algorithm.zero(hi - lo)
            self._bd.add(d)
            self._next += 1

    def hexdigest(self) -> str:
        """The block digest of the whole source, once qemu is done (reads what it never asked for)."""
        assert self._bd is not None
        while True:
            with self._lock:
                if self._next >= self._blocks:
                    self._cache.clear()  # qemu is done: the verification that follows needs the memory
                    self._ahead.clear()
                    return self._bd.hexdigest()
                i = self._next
                if i in self._done:  # cannot happen: a taken digest is folded or pending
                    raise AssertionError(f"block {i} digested but not folded")
            self._block(i)
