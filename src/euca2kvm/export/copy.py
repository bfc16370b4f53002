# SPDX-License-Identifier: Apache-2.0
"""The block mover: reads an extent map block by block, digests it, and writes a sparse copy.

Work is cut into digest blocks (4 MiB). A block whose extents are all ZERO, or whose source
bytes are holes (SEEK_DATA), is neither read nor written: its digest is known. Other blocks are
read with ``preadv`` into a per-worker buffer, hashed (hashlib releases the GIL, so workers hash
in parallel), and written with ``pwrite`` except for runs of zeros, which stay holes in the
destination. Results are consumed in block order, so the block digest and the optional plain
sha256 fold in order with at most ``workers + EXTRA_INFLIGHT`` blocks in flight: memory stays bounded whatever
the disk size.

With no destination the same code verifies: it computes the digest of what it reads.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import mmap
import os
import queue
import stat
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from ..errors import FormatError, IOFailure
from ..lvm.extents import Extent, ExtentMap, Kind
from ..lvm.reader import FdCache
from ..units import KiB
from .digest import DIGEST_BLOCK, BlockDigest, zero_block_digest

# Two cores hash and copy at once; a third and fourth worker keep a core busy while another
# waits on a read that misses the page cache. More only costs memory (4 MiB each).
DEFAULT_WORKERS = min(4, (os.cpu_count() or 2) * 2)
# In-flight blocks beyond the workers let readers run ahead of the in-order consumer.
EXTRA_INFLIGHT = 2
# Zero runs shorter than this are written as data: the filesystem block size, as qemu-img's
# default -S 4k; a finer grain cannot save space.
SPARSE_GRAIN = 4 * KiB
_ZEROS = bytes(DIGEST_BLOCK)
# Populate page tables in one call instead of one fault per page (Linux; 0 elsewhere).
_MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0)
# errnos that mean "this kind of file or filesystem cannot do it", not "this copy failed"
# linux/fs.h: share blocks between files (btrfs, XFS with reflink=1, ...)
FICLONERANGE = 0x4020940D
# Clone ranges must be whole filesystem blocks; 4 KiB is the block size of every reflink
# filesystem in use (a larger one just makes the ioctl fail and the copy path take over).
CLONE_ALIGN = 4 * KiB
_UNSUPPORTED = {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EBADF}

ProgressFn = Callable[[int], None]


@dataclass
class CopyResult:
    digest: str | None  # None when copied without hashing
    sha256: str | None
    size: int
    bytes_read: int  # bytes actually read from sources
    bytes_written: int  # bytes written (data; zeros and holes are skipped)


class Sources(FdCache):
    """The sources of one copy: shared read-only descriptors, and which fast paths they support."""

    def __init__(self) -> None:
        super().__init__()
        self.can_seek_data: dict[str, bool] = {}
        self.can_mmap = True
        self.can_copy_range = True
        self.can_clone = True
        self._mappable: dict[str, bool] = {}

    def mappable(self, path: str) -> bool:
        """Regular files and block devices can be mapped; remember the answer per path."""
        ok = self._mappable.get(path)
        if ok is None:
            mode = os.fstat(self.fd(path)).st_mode
            ok = stat.S_ISREG(mode) or stat.S_ISBLK(mode)
            self._mappable[path] = ok
        return ok

    def clone_runs(self, out_fd: int, lo: int, runs: list[tuple[int, int, str, int]]) -> bool:
        """Share the runs' blocks with the destination (FICLONERANGE, btrfs/XFS reflink).

        Only whole filesystem blocks can be shared; False (and remembered when the filesystem
        cannot) sends the block down the copying path.
        """
        for boff, foff, path, length in runs:
            dst = lo + boff
            if foff % CLONE_ALIGN or dst % CLONE_ALIGN or length % CLONE_ALIGN:
                return False
            arg = struct.pack("qQQQ", self.fd(path), foff, length, dst)
            try:
                fcntl.ioctl(out_fd, FICLONERANGE, arg)
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    raise IOFailure(f"no space left on device sharing {length} bytes at offset {dst}") from e
                if e.errno in _UNSUPPORTED or e.errno == errno.ENOTTY:
                    self.can_clone = False  # not a reflink filesystem, or another filesystem
                    return False
                raise IOFailure(f"reflink of {length} bytes from {path} at {foff} failed: {e.strerror}") from e
        return True

    def copy_range(self, path: str, out_fd: int, src_off: int, dst_off: int, view: memoryview, a: int,
                   b: int) -> None:
        """Copy ``view[a:b]`` (source bytes at ``src_off``) to ``dst_off``: copy_file_range with a
        remembered fallback to pwrite of the same bytes."""
        length = b - a
        if self.can_copy_range:
            fd = self.fd(path)
            done = 0
            try:
                while done < length:
                    n = os.copy_file_range(fd, out_fd, length - done, src_off + done, dst_off + done)
                    if n == 0:
                        raise FormatError("source ended while copying (file shrank?)", path, src_off + done)
                    done += n
                return
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    raise IOFailure(f"no space left on device writing {length} bytes at offset {dst_off}") from e
                if e.errno not in _UNSUPPORTED or done:
                    raise IOFailure(f"copy of {length} bytes from {path} at {src_off} failed: {e.strerror}") from e
                self.can_copy_range = False  # e.g. a block device source or another filesystem
        with view[a:b] as data:
            _pwrite_all(out_fd, data, dst_off)

    def data_ranges(self, ext: Extent) -> list[tuple[int, int]]:
        """Sub-ranges (file offsets) of a DATA extent that are not holes in the source file."""
        assert ext.path is not None
        fd = self.fd(ext.path)
        start, end = ext.offset, ext.offset + ext.length
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and st.st_size < end:
            # SEEK_DATA past EOF looks like a hole: a shrunk source must fail, not read as zeros.
            raise FormatError(f"file is {st.st_size} bytes but the LV needs bytes up to {end} "
                              "(truncated, or changed while reading?)", ext.path, st.st_size)
        if not self.can_seek_data.get(ext.path, True):
            return [(start, end)]
        out: list[tuple[int, int]] = []
        pos = start
        try:
            while pos < end:
                try:
                    data = os.lseek(fd, pos, os.SEEK_DATA)
                except OSError as e:
                    if e.errno == errno.ENXIO:  # only a hole remains up to EOF
                        break
                    raise
                if data >= end:
                    break
                hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
                out.append((data, hole))
                pos = hole
        except OSError as e:
            if e.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
                # Block devices and some filesystems: everything counts as data. Remember it.
                self.can_seek_data[ext.path] = False
                return [(start, end)]
            raise IOFailure(f"cannot map holes of {ext.path}: {e.strerror}") from e
        return out


class BufferPool:
    """Block buffers, allocated on first use: the mmap path needs none, so a dense export with the
    default digest never pays for them (4 MiB each)."""

    def __init__(self, limit: int) -> None:
        self._free: queue.Queue[bytearray] = queue.Queue()
        self._lock = threading.Lock()
        self._made = 0
        self._limit = limit

    def get(self) -> bytearray:
        with self._lock:
            if self._free.empty() and self._made < self._limit:
                self._made += 1
                return bytearray(DIGEST_BLOCK)
        return self._free.get()

    def put(self, buf: bytearray) -> None:
        self._free.put(buf)


@dataclass
class _Block:
    index: int
    lo: int
    hi: int
    digest: bytes
    buf: bytearray | None  # kept only when the plain sha256 needs the bytes in order
    read: int
    written: int


def _block_job(emap: ExtentMap, src: Sources, out_fd: int | None, lo: int, hi: int, index: int,
               buffers: BufferPool, keep: bool, name: str, digest: bool = True) -> _Block:
    n = hi - lo
    runs: list[tuple[int, int, str, int]] = []  # (offset in block, file offset, path, length)
    for ext in emap.extents(lo, hi):
        if ext.kind is Kind.ERROR:
            raise IOFailure(f"{name}: bytes {ext.start}..{ext.end} map to an 'error' segment; "
                            "the device-mapper would fail these reads, refusing to invent data")
        if ext.kind is Kind.ZERO:
            continue
        assert ext.path is not None
        for a, b in src.data_ranges(ext):
            runs.append((ext.start - lo + (a - ext.offset), a, ext.path, b - a))
    if not runs and not keep:
        return _Block(index, lo, hi, zero_block_digest(n), None, 0, 0)
    if out_fd is not None and not keep and src.can_clone and src.clone_runs(out_fd, lo, runs):
        # Blocks shared with the source (reflink): nothing copied; hash from the page cache if asked.
        block_digest = _mapped_block(src, None, lo, n, runs, digest)[0] if digest else b""
        total = sum(r[3] for r in runs)
        return _Block(index, lo, hi, block_digest, None, total if digest else 0, total)
    if not keep and src.can_mmap and all(src.mappable(r[2]) for r in runs):
        block_digest, written = _mapped_block(src, out_fd, lo, n, runs, digest)
        return _Block(index, lo, hi, block_digest, None, sum(r[3] for r in runs), written)
    return _buffered_block(src, out_fd, lo, hi, index, runs, buffers, keep)


def _mapped_block(src: Sources, out_fd: int | None, lo: int, n: int,
                  runs: list[tuple[int, int, str, int]], digest: bool = True) -> tuple[bytes, int]:
    """Hash straight from the page cache (mmap) and copy in the kernel (copy_file_range).

    Nothing is copied through user space: the digest reads the source pages where they are, and
    non-zero grains go to the destination with copy_file_range (which also shares blocks on
    reflink filesystems). Each run is mapped only while it is hashed, so the resident set stays
    at a few blocks whatever the disk size.
    """
    maps: list[tuple[mmap.mmap, memoryview, int, int, str, int]] = []
    try:
        for boff, foff, path, length in runs:
            aligned = foff - foff % mmap.ALLOCATIONGRANULARITY
            m = mmap.mmap(src.fd(path), length + (foff - aligned), flags=mmap.MAP_SHARED | _MAP_POPULATE,
                          prot=mmap.PROT_READ, offset=aligned)
            maps.append((m, memoryview(m)[foff - aligned :], boff, foff, path, length))
        if all(_ZEROS.startswith(v) for _, v, *_ in maps):
            return zero_block_digest(n), 0
        h = hashlib.sha256() if digest else None
        pos = 0
        written = 0
        for _, v, boff, foff, path, length in maps:
            if h is not None:
                if boff > pos:
                    h.update(_ZEROS[: boff - pos])
                h.update(v)
            pos = boff + length
            if out_fd is not None:
                for a, b in _nonzero_grains(v):
                    src.copy_range(path, out_fd, foff + a, lo + boff + a, v, a, b)
                    written += b - a
        if h is None:
            return b"", written
        if pos < n:
            h.update(_ZEROS[: n - pos])
        return h.digest(), written
    finally:
        for m, v, *_ in maps:
            v.release()
            # A traceback may still reference a view of the map: let the collector unmap it
            # then rather than replace the original error with BufferError.
            with contextlib.suppress(BufferError):
                m.close()


def _buffered_block(src: Sources, out_fd: int | None, lo: int, hi: int, index: int,
                    runs: list[tuple[int, int, str, int]], buffers: BufferPool, keep: bool) -> _Block:
    """Read into a buffer: for the plain sha256 (bytes needed in order) and sources mmap refuses."""
    n = hi - lo
    buf: bytearray | None = buffers.get()
    assert buf is not None
    try:
        view = memoryview(buf)[:n]
        covered = 0
        for boff, foff, path, length in runs:
            if boff > covered:
                view[covered:boff] = _ZEROS[: boff - covered]
            try:
                got = os.preadv(src.fd(path), [view[boff : boff + length]], foff)
            except OSError as e:
                raise IOFailure(f"read of {length} bytes at offset {foff} of {path} failed: "
                                f"{e.strerror}") from e
            if got != length:
                raise FormatError(f"short read ({got} of {length} bytes): file shrank while reading?",
                                  path, foff + got)
            covered = boff + length
        if covered < n:
            view[covered:n] = _ZEROS[: n - covered]
        read = sum(r[3] for r in runs)
        if _ZEROS.startswith(view):
            digest = zero_block_digest(n)
            written = 0
        else:
            digest = hashlib.sha256(view).digest()
            written = _write_sparse(out_fd, view, lo) if out_fd is not None else 0
        if keep:
            out = _Block(index, lo, hi, digest, buf, read, written)
            buf = None  # ownership passes to the consumer
            return out
        return _Block(index, lo, hi, digest, None, read, written)
    finally:
        if buf is not None:
            buffers.put(buf)


def _nonzero_grains(view: memoryview) -> Iterator[tuple[int, int]]:
    """[a, b) ranges of ``view`` made of grains that are not all zero (zero grains become holes)."""
    n = len(view)
    pos = 0
    while pos < n:
        while pos < n and _ZEROS.startswith(view[pos : pos + SPARSE_GRAIN]):
            pos += SPARSE_GRAIN
        if pos >= n:
            return
        start = pos
        while pos < n and not _ZEROS.startswith(view[pos : pos + SPARSE_GRAIN]):
            pos += SPARSE_GRAIN
        yield start, min(pos, n)


def _write_sparse(fd: int, view: memoryview, lo: int) -> int:
    """Write the non-zero grains of ``view`` at ``lo``; zero grains stay holes."""
    written = 0
    for a, b in _nonzero_grains(view):
        _pwrite_all(fd, view[a:b], lo + a)
        written += b - a
    return written


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while len(data):
        try:
            n = os.pwrite(fd, data, offset)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise IOFailure(f"no space left on device writing {len(data)} bytes at offset {offset}") from e
            raise IOFailure(f"write at offset {offset} failed: {e.strerror}") from e
        data = data[n:]
        offset += n


def copy_blocks(emap: ExtentMap, out_fd: int | None, *, sha256: bool = False,
                workers: int = DEFAULT_WORKERS, progress: ProgressFn | None = None,
                name: str = "LV", digest: bool = True) -> CopyResult:
    """Digest (and when ``out_fd`` is given, sparsely write) every byte of ``emap``.

    ``digest=False`` (``--no-verify``) copies without hashing; the result's digest is then None.
    """
    workers = max(1, workers)
    size = emap.size
    inflight_max = workers + EXTRA_INFLIGHT
    buffers = BufferPool(inflight_max if sha256 else workers)
    src = Sources()
    bd = BlockDigest()
    plain = hashlib.sha256() if sha256 else None
    total_read = total_written = 0
    pending: deque[Future[_Block]] = deque()

    def consume(fut: Future[_Block]) -> None:
        nonlocal total_read, total_written
        blk = fut.result()
        bd.add(blk.digest)
        total_read += blk.read
        total_written += blk.written
        if plain is not None:
            n = blk.hi - blk.lo
            if blk.buf is not None:
                plain.update(memoryview(blk.buf)[:n])
                buffers.put(blk.buf)
            else:
                plain.update(_ZEROS[:n])
        if progress is not None:
            progress(blk.hi - blk.lo)

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="copy")
    try:
        for index, lo in enumerate(range(0, size, DIGEST_BLOCK)):
            hi = min(size, lo + DIGEST_BLOCK)
            while len(pending) >= inflight_max:
                consume(pending.popleft())
            pending.append(pool.submit(_block_job, emap, src, out_fd, lo, hi, index, buffers, sha256, name,
                                       digest))
        while pending:
            consume(pending.popleft())
    except BaseException:
        for f in pending:
            f.cancel()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        src.close()
    return CopyResult(bd.hexdigest() if digest else None, plain.hexdigest() if plain else None, size, total_read,
                      total_written)
