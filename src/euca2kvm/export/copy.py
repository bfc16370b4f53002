# SPDX-License-Identifier: Apache-2.0
"""The block mover: reads a block source block by block, digests it, and writes a sparse copy.

Work is cut into digest blocks (4 MiB). A block whose ranges are all ZERO or HOLE is neither
read nor written: its digest is known. Other blocks are shared with the source by reflink
(FICLONERANGE, btrfs/XFS; when the source offers ``file_runs``, remembered when unsupported) and
read only to be hashed, or read with ``read_into`` into a per-worker buffer, hashed and written
from it with one ``pwritev`` per contiguous span, in system calls of at most
``readahead.SYSCALL_BYTES`` (the reason is measured there). Writes are buffered: ``O_DIRECT`` writes
cut the system time by 60-80 % but were 30-50 % slower on a cold source here, where the disk bounds
the copy and writeback keeps its queue fuller (``bench/bench_direct.py``). A local source's blocks
that no one had cached are read with ``O_DIRECT`` (``readahead.DIRECT``: the reasons and numbers).

Sources are never mapped: a page of a mapping beyond the end of a file that shrank meanwhile
raises SIGBUS, which kills the process (exit 135, the partial output left behind) and which
Python cannot catch. A read past the end is just short: :class:`IOFailure` (exit 5) naming the
file and the offset. The buffer costs one memory copy per block: on the 2-core test VM an 800 MiB
page-cached export went from 1.17 to 1.32 s (median; CPU 1.60 to 2.11 s), a cold one is bound by
the disk (2.30 and 2.33 s best); ``bench/bench_export.py`` shows the same +13%. Reading in
L2-sized pieces and writing each at once measured no better. A mapping cannot be made safe:
truncation unmaps even private copies, and no user-space handler can resume after SIGBUS.

Runs of zero grains stay holes in the destination. hashlib and blake3 release the GIL, so workers
hash in parallel. Results are consumed in block order, so the block digest and the optional plain sha256
fold in order with at most ``workers + EXTRA_INFLIGHT`` blocks in flight: memory stays bounded
whatever the disk size. With no destination the same code verifies: it digests what it reads.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import queue
import struct
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..blocks import BlockSource, Kind
from ..errors import IOFailure
from ..membuf import aligned
from ..readahead import SYSCALL_BYTES, DropBehind, Writeback, drop_behind
from ..units import KiB
from .digest import DEFAULT, DIGEST_BLOCK, ZEROS, Algorithm, BlockDigest
from .inorder import fold_plain, in_order

# Two cores hash and copy at once; a third and fourth worker keep a core busy while another
# waits on a read that misses the page cache. More only costs memory (4 MiB each).
DEFAULT_WORKERS = min(4, (os.cpu_count() or 2) * 2)
# In-flight blocks beyond the workers let readers run ahead of the in-order consumer.
EXTRA_INFLIGHT = 2
# Zero runs shorter than this are written as data: the filesystem block size, as qemu-img's
# default -S 4k; a finer grain cannot save space.
SPARSE_GRAIN = 4 * KiB
# Linux UIO_MAXIOV: most buffers one pwritev takes.
IOV_MAX = 1024
# linux/fs.h: share blocks between files (btrfs, XFS with reflink=1, ...)
FICLONERANGE = 0x4020940D
# Clone ranges must be whole filesystem blocks; 4 KiB is the block size of every reflink
# filesystem in use (a larger one just makes the ioctl fail and the copy path take over).
CLONE_ALIGN = 4 * KiB
# Start each block's writeback once written (readahead.Writeback, measured there: the disk writes
# while the copy goes on, not after it); EUCA2KVM_KICK=0 turns it off, to measure against.
KICK = os.environ.get("EUCA2KVM_KICK", "1") != "0"
# A raw output's pages are dropped from the page cache this many blocks (64 MiB) behind the writer,
# once on the disk (readahead.Writeback.drop), unless the page cache is kept (--keep-cache): copying
# into fresh pages is what costs most here (perf: 46 % of a cold export's samples in the kernel's copy
# into the page cache; the VM's balloon hands freed memory back to the host, which faults every new
# page in), while dropped pages are reused at once. 8 GiB dense, cold, verified (bench_warm.py's
# fixture, `export --overwrite` then `sync`, two rounds interleaved with the previous commit): wall
# 21.9 / 25.5 s against 30.6 / 30.5 s, system time 9.8 / 9.9 s against 22.7 / 22.4 s. By 16 blocks
# on, the kick has long written the block at this disk's pace, so the wait is rare.
DROP_LAG = 16
# errnos that mean "this kind of file or filesystem cannot do it", not "this copy failed"
_UNSUPPORTED = {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EBADF}

ProgressFn = Callable[[int], None]


@dataclass
class CopyResult:
    digest: str | None  # None when copied without hashing
    sha256: str | None
    size: int
    bytes_read: int  # bytes actually read from sources
    bytes_written: int  # bytes written (data; zeros and holes are skipped)


class _Dest:
    """The destination of one copy: one writer at a time, and whether it can share blocks."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd
        self.can_clone = fd is not None
        self.writeback = Writeback.of_file(fd) if fd is not None and KICK else None
        self.drop = self.writeback is not None and drop_behind() is not DropBehind.KEEP
        # One writer at a time: concurrent writes to one file contend for its inode lock, which
        # the kernel spins on (measured: 2-4x the system time, and exports that took 1.3 s
        # instead of 0.35 s). Waiting here sleeps, and the other workers go on hashing.
        self.write_lock = threading.Lock()

    def write(self, pieces: list[tuple[int, memoryview]]) -> int:
        """Write (offset, bytes) pieces to the destination, one writer at a time."""
        assert self.fd is not None
        with self.write_lock:
            n = _pwritev_pieces(self.fd, pieces)
        if self.writeback is not None and pieces:  # start writing the block back (KICK), not waiting
            self.writeback.start(pieces[0][0], pieces[-1][0] + len(pieces[-1][1]) - pieces[0][0])
            behind = pieces[0][0] // DIGEST_BLOCK * DIGEST_BLOCK - DROP_LAG * DIGEST_BLOCK
            if self.drop and behind >= 0:  # and drop the block DROP_LAG behind once it is on the disk
                self.drop = self.writeback.drop(behind, DIGEST_BLOCK)
        return n

    def clone_runs(self, lo: int, runs: list[tuple[int, int, int, int]]) -> bool:
        """Share the runs' blocks with the destination (FICLONERANGE, btrfs/XFS reflink).

        ``runs`` are (disk byte, source descriptor, file offset, length). Only whole filesystem
        blocks can be shared; False (and remembered when the filesystem cannot) sends the block
        down the copying path.
        """
        assert self.fd is not None
        for dst, _, foff, length in runs:
            if foff % CLONE_ALIGN or dst % CLONE_ALIGN or length % CLONE_ALIGN:
                return False
        for dst, src_fd, foff, length in runs:
            arg = struct.pack("qQQQ", src_fd, foff, length, dst)
            try:
                fcntl.ioctl(self.fd, FICLONERANGE, arg)
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    raise IOFailure(f"no space left on device sharing {length} bytes at offset {dst}") from e
                if e.errno in _UNSUPPORTED or e.errno == errno.ENOTTY:
                    self.can_clone = False  # not a reflink filesystem, or another filesystem
                    return False
                raise IOFailure(f"reflink of {length} bytes at source offset {foff} failed: {e.strerror}") from e
        return True


class BufferPool:
    """Block buffers (4 MiB each, page-aligned: :mod:`~euca2kvm.membuf`), allocated on first use: an
    export of holes allocates none."""

    def __init__(self, limit: int) -> None:
        self._free: queue.Queue[memoryview] = queue.Queue()
        self._lock = threading.Lock()
        self._made = 0
        self._limit = limit

    def get(self) -> memoryview:
        with self._lock:
            if self._free.empty() and self._made < self._limit:
                self._made += 1
                return aligned(DIGEST_BLOCK)
        return self._free.get()

    def put(self, buf: memoryview) -> None:
        self._free.put(buf)


@dataclass
class BlockHook:
    """A consumer of each block's bytes (the S3 upload's parts): ``encode`` runs on the worker that
    read the block, with its bytes (a view of a reused buffer: copy what is kept) or None for a block
    of zeros and holes, and its length; ``take`` gets each block's index and result in block order."""

    encode: Callable[[memoryview | None, int], Any]
    take: Callable[[int, Any], None]


@dataclass
class _Block:
    index: int
    lo: int
    hi: int
    digest: bytes
    buf: memoryview | None  # kept only when the plain sha256 needs the bytes in order
    read: int
    written: int
    encoded: Any = None  # BlockHook.encode's result


def block_data(source: BlockSource, lo: int, hi: int, name: str) -> list[tuple[int, int]]:
    """The DATA ranges of block [lo, hi) as (offset in block, length); [] = all zeros or holes.
    An ERROR range fails here, before anything of the block is read or written."""
    runs: list[tuple[int, int]] = []
    for r in source.ranges(lo, hi):
        if r.kind is Kind.ERROR:
            raise IOFailure(f"{name}: bytes {r.start}..{r.end} map to an 'error' segment; "
                            "the device-mapper would fail these reads, refusing to invent data")
        if r.kind is Kind.DATA:
            runs.append((r.start - lo, r.length))
    return runs


def _block_job(source: BlockSource, dest: _Dest, lo: int, hi: int, index: int, runs: list[tuple[int, int]],
               buffers: BufferPool, keep: bool, algo: Algorithm | None, hook: BlockHook | None = None) -> _Block:
    """Copy and/or digest one block; ``algo`` None copies without hashing (--no-verify)."""
    if dest.can_clone and not keep and hook is None:
        file_runs = getattr(source, "file_runs", None)  # an optional capability of file-backed sources
        shared = file_runs(lo, hi) if file_runs is not None else None
        if shared is not None and dest.clone_runs(lo, shared):
            # Blocks shared with the source (reflink): nothing copied; read only to hash them, if asked.
            total = sum(r[1] for r in runs)
            if algo is None:
                return _Block(index, lo, hi, b"", None, 0, total)
            hashed = _buffered_block(source, None, lo, hi, index, runs, buffers, False, algo)
            return _Block(index, lo, hi, hashed.digest, None, hashed.read, total)
    return _buffered_block(source, dest, lo, hi, index, runs, buffers, keep, algo, hook)


def _write_groups(pieces: list[tuple[int, memoryview]]) -> Iterator[tuple[int, list[memoryview]]]:
    """(offset, buffers) for one ``pwritev`` each: pieces contiguous on disk, at most
    :data:`SYSCALL_BYTES` and :data:`IOV_MAX` buffers per call (a piece larger than that is split)."""
    start = -1
    group: list[memoryview] = []
    size = 0
    for off, view in pieces:
        pos = 0
        while pos < len(view):
            if group and (off + pos != start + size or size == SYSCALL_BYTES or len(group) == IOV_MAX):
                yield start, group
                group, size = [], 0
            if not group:
                start = off + pos
            part = view[pos : pos + SYSCALL_BYTES - size]
            group.append(part)
            size += len(part)
            pos += len(part)
    if group:
        yield start, group


def _pwritev_pieces(fd: int, pieces: list[tuple[int, memoryview]]) -> int:
    """Write (offset, bytes) pieces, one pwritev per group of :func:`_write_groups`."""
    written = 0
    for start, group in _write_groups(pieces):
        length = sum(len(b) for b in group)
        try:
            n = os.pwritev(fd, group, start)
        except OSError as e:
            raise _write_error(e, length, start) from e
        if n < length:  # short write: finish piece by piece
            off = start
            for b in group:
                if off + len(b) > start + n:
                    skip = max(0, start + n - off)
                    pwrite_all(fd, b[skip:], off + skip)
                off += len(b)
        written += length
    return written


def fill_block(source: BlockSource, lo: int, view: memoryview, runs: list[tuple[int, int]]) -> int:
    """Read block ``[lo, lo + len(view))`` into ``view``: its DATA ``runs`` (from :func:`block_data`) read,
    the rest zeroed; returns the bytes read (raises what ``read_into`` raises)."""
    covered = 0
    for boff, length in runs:
        if boff > covered:
            view[covered:boff] = ZEROS[: boff - covered]
        source.read_into(lo + boff, view[boff : boff + length])
        covered = boff + length
    if covered < len(view):
        view[covered:] = ZEROS[: len(view) - covered]
    return sum(r[1] for r in runs)


def _read_block(source: BlockSource, lo: int, hi: int, runs: list[tuple[int, int]],
                buffers: BufferPool) -> tuple[memoryview, int]:
    """A buffer holding block ``[lo, hi)`` and the bytes read for it (the buffer is given back on error)."""
    buf = buffers.get()
    try:
        return buf, fill_block(source, lo, memoryview(buf)[: hi - lo], runs)
    except BaseException:
        buffers.put(buf)
        raise


def _filled_job(source: BlockSource, dest: _Dest, lo: int, hi: int, index: int, filled: tuple[memoryview, int],
                buffers: BufferPool, keep: bool, algo: Algorithm | None, hook: BlockHook | None) -> _Block:
    return _buffered_block(source, dest, lo, hi, index, [], buffers, keep, algo, hook, filled)


def _buffered_block(source: BlockSource, dest: _Dest | None, lo: int, hi: int, index: int,
                    runs: list[tuple[int, int]], buffers: BufferPool, keep: bool,
                    algo: Algorithm | None, hook: BlockHook | None = None,
                    filled: tuple[memoryview, int] | None = None) -> _Block:
    """Read the block's DATA into a buffer (or take the one ``filled`` by the reader), hash it and
    write its non-zero grains from there."""
    n = hi - lo
    buf: memoryview | None
    buf, read = filled if filled is not None else _read_block(source, lo, hi, runs, buffers)
    assert buf is not None
    try:
        view = memoryview(buf)[:n]
        zero = ZEROS.startswith(view)
        if zero:
            digest = algo.zero(n) if algo else b""
            written = 0
        else:
            digest = algo.block(view) if algo else b""
            written = dest.write(sparse_pieces(view, lo)) if dest is not None and dest.fd is not None else 0
        encoded = hook.encode(None if zero else view, n) if hook is not None else None
        if keep:
            out = _Block(index, lo, hi, digest, buf, read, written, encoded)
            buf = None  # ownership passes to the consumer
            return out
        return _Block(index, lo, hi, digest, None, read, written, encoded)
    finally:
        if buf is not None:
            buffers.put(buf)


def _zero_grains(view: memoryview) -> Iterator[int]:
    """Indices of the all-zero grains of ``view`` (SPARSE_GRAIN-aligned to its start; the last
    one may be shorter).

    One strided copy gathers the first byte of every grain and only grains that start with a zero
    byte are compared in full: dense data costs a few microseconds per 4 MiB, where searching for
    a zero grain (``find``) took a sixth of a dense export's CPU time.
    """
    firsts = bytes(view[::SPARSE_GRAIN])
    i = firsts.find(0)
    while i >= 0:
        a = i * SPARSE_GRAIN
        if ZEROS.startswith(view[a : a + SPARSE_GRAIN]):
            yield i
        i = firsts.find(0, i + 1)


def _nonzero_grains(view: memoryview) -> Iterator[tuple[int, int]]:
    """[a, b) ranges of ``view`` made of grains that are not all zero (zero grains become holes)."""
    n = len(view)
    pos = 0
    for i in _zero_grains(view):
        a = i * SPARSE_GRAIN
        if a > pos:
            yield pos, a
        pos = min(a + SPARSE_GRAIN, n)
    if pos < n:
        yield pos, n


def sparse_pieces(view: memoryview, at: int) -> list[tuple[int, memoryview]]:
    """The (offset, bytes) pieces that write ``view`` at ``at`` with its zero grains left as holes."""
    return [(at + a, view[a:b]) for a, b in _nonzero_grains(view)]


def write_sparse(fd: int, view: memoryview, at: int) -> int:
    """Write ``view`` at ``at``, zero grains left as holes; returns the bytes written."""
    return _pwritev_pieces(fd, sparse_pieces(view, at))


def _write_error(e: OSError, length: int, offset: int) -> IOFailure:
    if e.errno == errno.ENOSPC:
        return IOFailure(f"no space left on device writing {length} bytes at offset {offset}")
    return IOFailure(f"write of {length} bytes at offset {offset} failed: {e.strerror}")


def pwrite_all(fd: int, data: memoryview, offset: int) -> int:
    """Write all of ``data`` at ``offset`` (short writes continued); IOFailure naming the offset."""
    total = len(data)
    while len(data):
        try:
            n = os.pwrite(fd, data[:SYSCALL_BYTES], offset)
        except OSError as e:
            raise _write_error(e, len(data), offset) from e
        data = data[n:]
        offset += n
    return total


def copy_blocks(source: BlockSource, out_fd: int | None, *, sha256: bool = False,
                workers: int = DEFAULT_WORKERS, progress: ProgressFn | None = None,
                name: str | None = None, digest: bool = True, algorithm: Algorithm = DEFAULT,
                on_read: ProgressFn | None = None,
                on_block: Callable[[int, bytes], None] | None = None, hook: BlockHook | None = None) -> CopyResult:
    """Digest (and when ``out_fd`` is given, sparsely write) every byte of ``source``.

    This is the one block-digest fold: exports, resume checks and ``verify`` all digest through it.
    ``digest=False`` (``--no-verify``) copies without hashing; the result's digest is then None.
    ``progress`` gets the bytes of the disk each block covers (holes included), ``on_read`` the bytes
    actually read for it (what a transfer rate should count), when there are any; ``on_block`` gets
    each block's index and digest, in order (the warm export's sidecar, :mod:`.sidecar`); ``hook`` each
    block's bytes, encoded on the workers, in order (:class:`BlockHook`).
    """
    workers = max(1, workers)
    size = source.size
    label = name or source.name
    sequential = getattr(source, "sequential", False)  # an optional hint: one reader, front to back
    # Kept blocks wait for the consumer; a sequential reader holds one more buffer than the workers.
    buffers = BufferPool(workers + EXTRA_INFLIGHT if sha256 else workers + (1 if sequential else 0))
    dest = _Dest(out_fd)
    bd = BlockDigest(algorithm)
    algo = algorithm if digest or sha256 else None
    plain = hashlib.sha256() if sha256 else None
    total_read = total_written = 0

    def consume(blk: _Block) -> None:
        nonlocal total_read, total_written
        bd.add(blk.digest)
        if on_block is not None:
            on_block(blk.index, blk.digest)
        if hook is not None:
            hook.take(blk.index, blk.encoded)
        total_read += blk.read
        total_written += blk.written
        if plain is not None:
            fold_plain(plain, blk.buf, blk.hi - blk.lo, buffers.put)
        if on_read is not None and blk.read:
            on_read(blk.read)
        if progress is not None:
            progress(blk.hi - blk.lo)

    def may_clone() -> bool:  # the condition under which _block_job tries sharing blocks
        return dest.can_clone and not sha256 and hook is None and getattr(source, "file_runs", None) is not None

    def blocks() -> Iterator[Future[_Block] | _Block]:
        for index, lo in enumerate(range(0, size, DIGEST_BLOCK)):
            hi = min(size, lo + DIGEST_BLOCK)
            runs = block_data(source, lo, hi, label)
            if runs and (workers == 1 or (sequential and may_clone())):
                # No hand-off: one worker (each hand-off costs a wake-up of another thread), or a
                # sequential source whose blocks may still be shared with the destination (_block_job
                # tries; the first failure turns it off): this thread reads, and only it.
                yield _block_job(source, dest, lo, hi, index, runs, buffers, sha256, algo, hook)
            elif runs and sequential:
                # This thread reads, in disk order; the workers hash and write what it read.
                filled = _read_block(source, lo, hi, runs, buffers)
                yield pool.submit(_filled_job, source, dest, lo, hi, index, filled, buffers, sha256, algo, hook)
            elif runs:
                yield pool.submit(_block_job, source, dest, lo, hi, index, runs, buffers, sha256, algo, hook)
            else:  # all zeros or holes: known digest, nothing to read or write, no hand-off to a worker
                yield _Block(index, lo, hi, algo.zero(hi - lo) if algo else b"", None, 0, 0,
                             hook.encode(None, hi - lo) if hook is not None else None)

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="copy")
    try:
        in_order(blocks(), workers + EXTRA_INFLIGHT, consume)
    except BaseException:
        abort = getattr(source, "abort", None)  # optional: wake workers blocked on a source read
        if abort is not None:
            abort()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return CopyResult(bd.hexdigest() if digest else None, plain.hexdigest() if plain else None, size, total_read,
                      total_written)
