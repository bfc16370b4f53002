# SPDX-License-Identifier: Apache-2.0
"""An LVM logical volume (or a plain file) as a :class:`~euca2kvm.blocks.BlockSource`.

:class:`LvmSource` is an :class:`~.extents.ExtentMap` over files opened through a
:data:`~euca2kvm.blocks.FileOpener` (default :class:`LocalFile`: local, read-only, ``O_CLOEXEC``,
``preadv``). Its ranges are the map's extents with the holes of the source files (SEEK_DATA /
SEEK_HOLE) reported as ``HOLE``; its kinds are what the mappers state (plus ``HOLE`` where files
are read), so an ``error`` segment anywhere is known before a byte is copied.

A source file that shrank since the scan is an :class:`IOFailure` naming the file and the offset:
SEEK_DATA past the end of a file looks like a hole, so the file's size is checked before holes
are asked for, and a short read is never zeros.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Iterator

from .. import readahead
from ..blocks import ByteFile, FileOpener, Kind, Range, merged, opener_for
from ..errors import IOFailure
from ..readahead import DropBehind
from .extents import ExtentMap, LinearMapper


class LocalFile:
    """A local source file or block device, read-only (a :class:`~euca2kvm.blocks.ByteFile`)."""

    def __init__(self, path: str, follow: bool = True, name: str | None = None,
                 drop_behind: DropBehind | None = None) -> None:
        """``follow=False`` refuses a symbolic link at ``path`` (O_NOFOLLOW); ``name``: for messages;
        ``drop_behind``: what to drop from the page cache behind the reader (None: as
        :func:`readahead.set_drop_behind` says)."""
        self.path = name or path
        self.drop_behind = readahead.drop_behind() if drop_behind is None else drop_behind
        # UNCACHED: per readahead.PROBE_GRAIN of the file, 0 not probed yet, 1 not cached, 2 cached
        # (by others: probed ahead of this reader and its readahead); probing stops when it cannot tell.
        self._grains = bytearray()
        self._probe: readahead.CacheProbe | None = None
        self._probing = self.drop_behind is DropBehind.UNCACHED
        self._probe_lock = threading.Lock()
        # a second descriptor with O_DIRECT, for whole aligned blocks no one had cached (readahead.DIRECT):
        # opened on first use; no more tries once the file or its filesystem refused it
        self._try_direct = self._probing and readahead.DIRECT
        self._dfd: int | None = None
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW))
        except OSError as e:
            raise IOFailure(f"cannot open {self.path} read-only: {e.strerror}") from e
        st = os.fstat(self.fd)
        self.regular = stat.S_ISREG(st.st_mode)
        self.can_seek_data = True
        self._span = (0, 0)  # the last (data, hole) offsets SEEK_DATA found: striped maps ask per chunk
        # Sequential access doubles the kernel's readahead window, which keeps a cold disk streaming
        # under 4 MiB block reads (random NBD reads are served from whole blocks too).
        readahead.advise(self.fd)

    def size(self) -> int:
        return os.lseek(self.fd, 0, os.SEEK_END)  # st_size is 0 for block devices

    def pread_into(self, offset: int, view: memoryview) -> int:
        """Read ``view`` at ``offset``; short only at EOF. With ``O_DIRECT`` when it is whole aligned
        blocks no one had cached (:data:`readahead.DIRECT`), else through the page cache in calls of at
        most :data:`readahead.SYSCALL_BYTES`, dropped behind as :attr:`drop_behind` says."""
        if self._probing:
            self._probe_ahead(offset, len(view))
        if self._try_direct and self._uncached(offset, len(view)) and readahead.direct_aligned(offset, view):
            got = self._read_direct(offset, view)
            if got is not None:
                return got
        return self._read_buffered(offset, view)

    def _read_buffered(self, offset: int, view: memoryview) -> int:
        got = 0
        while got < len(view):
            piece = view[got : got + readahead.SYSCALL_BYTES]
            try:
                n = os.preadv(self.fd, [piece], offset + got)
            except OSError as e:
                raise self._failed(len(piece), offset + got, e) from e
            if n == 0:
                break
            got += n
        if got > 0 and self.drop_behind is not DropBehind.KEEP:
            self._release(offset, got)
        return got

    def _failed(self, length: int, offset: int, e: OSError) -> IOFailure:
        return IOFailure(f"read of {length} bytes at offset {offset} of {self.path} failed: {e.strerror}")

    def _probe_ahead(self, offset: int, length: int) -> None:
        """Take the cache state of the grains from ``offset`` to PROBE_AHEAD past this read that were
        not probed yet: before this reader (or its readahead) has brought any of them in."""
        grain = readahead.PROBE_GRAIN
        g0, g1 = offset // grain, (offset + length + readahead.PROBE_AHEAD - 1) // grain
        with self._probe_lock:
            if not self._probing:
                return
            if self._probe is None:
                self._probe = readahead.CacheProbe(self.fd)
                self._grains = bytearray((self.size() + grain - 1) // grain)
            g1 = min(g1, len(self._grains) - 1)
            if g0 > g1 or self._grains.find(0, g0, g1 + 1) < 0:
                return
            for g in range(g0, g1 + 1):
                if not self._grains[g]:
                    cached = self._probe.cached(g * grain, grain)
                    if cached is None:  # the kernel cannot tell: drop nothing, probe no more
                        self._probing, self._grains = False, bytearray()
                        return
                    self._grains[g] = 2 if cached else 1

    def _uncached(self, offset: int, length: int) -> bool:
        """Whether every grain of ``[offset, offset + length)`` was probed and found not cached."""
        grain, grains = readahead.PROBE_GRAIN, self._grains
        g0, g1 = offset // grain, (offset + length - 1) // grain
        return self._probing and g1 < len(grains) and all(grains[g] == 1 for g in range(g0, g1 + 1))

    def _read_direct(self, offset: int, view: memoryview) -> int | None:
        """``view`` read with O_DIRECT; None (and no more direct reads of this file) if it is refused.
        Short only at EOF, like :meth:`pread_into`: the tail past the last whole block is read buffered."""
        if self._dfd is None:
            with self._probe_lock:  # readers of one file (the NBD server's) open one descriptor
                if self._dfd is None:
                    self._dfd = readahead.open_direct(self.fd)
                    self._try_direct = self._dfd is not None
            if self._dfd is None:
                return None
        got = 0
        try:
            while got < len(view):
                n = os.preadv(self._dfd, [view[got:]], offset + got)
                if n <= 0 or n % readahead.DIRECT_ALIGN:  # EOF, or the file's last partial block
                    got += max(n, 0)
                    break
                got += n
        except OSError as e:
            if e.errno != errno.EINVAL or got:
                raise self._failed(len(view) - got, offset + got, e) from e
            self._try_direct = False  # a device or filesystem that takes no O_DIRECT reads of this shape
            return None
        if got < len(view) and got % readahead.DIRECT_ALIGN == 0:
            got += self._read_buffered(offset + got, view[got:])  # past the last aligned block: EOF
        return got

    def _release(self, offset: int, n: int) -> None:
        if self.drop_behind is DropBehind.ALL:
            readahead.release(self.fd, offset, n)
            return
        grain, grains = readahead.PROBE_GRAIN, self._grains
        end = offset + n
        g = offset // grain
        while g * grain < end and g < len(grains):
            if grains[g] == 1:  # not cached before this reader: dropped
                a = max(offset, g * grain)
                b = min(end, (g + 1) * grain)
                readahead.release(self.fd, a, b - a)
            g += 1

    def data_ranges(self, lo: int, hi: int) -> list[tuple[int, int]]:
        span = self._span
        if span[0] <= lo and hi <= span[1]:
            return [(lo, hi)]  # inside the last data run found: no system call per stripe chunk
        if self.regular and (size := self.size()) < hi:
            # SEEK_DATA past EOF looks like a hole: a shrunk source must fail, not read as zeros. The
            # scan checked every extent against the file's size, so the file shrank since.
            raise IOFailure(f"{self.path} is {size} bytes but the LV needs bytes up to {hi} at "
                            f"offset {lo}: the file shrank while exporting")
        if not self.can_seek_data:
            return [(lo, hi)]
        out: list[tuple[int, int]] = []
        pos = lo
        try:
            while pos < hi:
                try:
                    data = os.lseek(self.fd, pos, os.SEEK_DATA)
                except OSError as e:
                    if e.errno == errno.ENXIO:  # only a hole remains up to EOF
                        break
                    raise
                if data >= hi:
                    break
                hole_at = os.lseek(self.fd, data, os.SEEK_HOLE)
                self._span = (data, hole_at)
                out.append((data, min(hole_at, hi)))
                pos = hole_at
        except OSError as e:
            if e.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
                self.can_seek_data = False  # block devices and some filesystems: all data
                return [(lo, hi)]
            raise IOFailure(f"cannot map holes of {self.path}: {e.strerror}") from e
        return out

    def close(self) -> None:
        if self._dfd is not None:
            os.close(self._dfd)
            self._dfd = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        # A source its owner never closed must not keep the container open: the in-use check
        # would see this very process holding it.
        if getattr(self, "fd", -1) >= 0:
            self.close()


class Shrunk(IOFailure):
    """A source file returned fewer bytes than the map needs: it shrank (or lost its end) since the scan."""


class LvmSource:
    """The bytes of ``emap`` read from its files: a :class:`~euca2kvm.blocks.BlockSource`.

    Files are opened on first use through ``opener`` (default: the opener registered for a remote
    file name, see :func:`~euca2kvm.blocks.opener_for`, else :class:`LocalFile`) and shared by
    threads (positional reads).
    """

    def __init__(self, emap: ExtentMap, name: str = "LV", opener: FileOpener | None = None,
                 sequential: bool | None = None) -> None:
        """``sequential``: read by one thread front to back (see :attr:`sequential`); None: when every
        file is local."""
        self.emap = emap
        self.name = name
        self.size = emap.size
        self._opener = opener
        # The mover's hint (an optional BlockSource attribute): one reader thread, front to back, the
        # hashing and writing on the other workers. The kernel's readahead streams a local file for
        # one sequential reader and several readers of one file defeat its detection (readahead.py);
        # remote files want several requests in flight instead.
        self.sequential = (opener is None and all(opener_for(p) is None for p in emap.paths())
                           if sequential is None else sequential)
        self._files: dict[str, ByteFile] = {}
        self._lock = threading.Lock()

    def file(self, path: str) -> ByteFile:
        f = self._files.get(path)
        if f is None:
            with self._lock:
                f = self._files.get(path)
                if f is None:
                    f = self._files[path] = (self._opener or opener_for(path) or LocalFile)(path)
        return f

    def paths(self) -> set[str]:
        return self.emap.paths()

    def kinds(self) -> frozenset[Kind]:
        k = self.emap.kinds()
        return k | {Kind.HOLE} if Kind.DATA in k else k  # any DATA file may have holes

    def ranges(self, lo: int, hi: int) -> Iterator[Range]:
        return merged(self._pieces(lo, hi))

    def _pieces(self, lo: int, hi: int) -> Iterator[Range]:
        for e in self.emap.extents(lo, hi):
            if e.kind is not Kind.DATA:
                yield Range(e.start, e.length, e.kind)
                continue
            assert e.path is not None
            pos = e.offset
            for a, b in self.file(e.path).data_ranges(e.offset, e.offset + e.length):
                if a > pos:
                    yield Range(e.start + pos - e.offset, a - pos, Kind.HOLE)
                yield Range(e.start + a - e.offset, b - a, Kind.DATA)
                pos = b
            if pos < e.offset + e.length:
                yield Range(e.start + pos - e.offset, e.offset + e.length - pos, Kind.HOLE)

    def read_into(self, offset: int, view: memoryview) -> None:
        end = offset + len(view)
        for e in self.emap.extents(offset, end):
            dst = view[e.start - offset : e.end - offset]
            if e.kind is Kind.ERROR:
                raise IOFailure(f"{self.name}: bytes {e.start}..{e.end} map to an 'error' segment; "
                                "the device-mapper would fail these reads, refusing to invent data")
            if e.kind is not Kind.DATA:
                dst[:] = bytes(len(dst))  # ZERO
                continue
            assert e.path is not None
            f = self.file(e.path)
            got = f.pread_into(e.offset, dst)
            while 0 < got < e.length:  # a remote file may answer in pieces: short means EOF only at 0
                n = f.pread_into(e.offset + got, dst[got:])
                if n == 0:
                    break
                got += n
            if got != e.length:
                raise Shrunk(f"short read of {f.path} at offset {e.offset + got} ({got} of {e.length} "
                             "bytes): the file shrank while exporting")

    def file_runs(self, lo: int, hi: int) -> list[tuple[int, int, int, int]] | None:
        """(source byte, descriptor, file offset, length) of the non-hole DATA of ``[lo, hi)``, for
        movers that share blocks (reflink); None when a file is not local or a range is not DATA."""
        runs: list[tuple[int, int, int, int]] = []
        for e in self.emap.extents(lo, hi):
            if e.kind is not Kind.DATA:
                if e.kind is Kind.ERROR:
                    return None
                continue
            assert e.path is not None
            f = self.file(e.path)
            if not isinstance(f, LocalFile):
                return None
            for a, b in f.data_ranges(e.offset, e.offset + e.length):
                runs.append((e.start + a - e.offset, f.fd, a, b - a))
        return runs

    def close(self) -> None:
        with self._lock:
            files, self._files = list(self._files.values()), {}
        for f in files:
            f.close()

    def __enter__(self) -> LvmSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def file_source(path: str, size: int | None = None, name: str | None = None,
                opener: FileOpener | None = None) -> LvmSource:
    """A whole file (a snapshot file, a raw image, a block device) as a block source."""
    if size is None:
        f = (opener or LocalFile)(path)
        try:
            size = f.size()
        finally:
            f.close()
    emap = ExtentMap(size, [LinearMapper(0, size, path, 0)] if size else [])
    return LvmSource(emap, name or path, opener)


def fd_source(fd: int, size: int, name: str) -> LvmSource:
    """The first ``size`` bytes of the file open as ``fd`` as a block source (read through a new
    read-only descriptor), e.g. to digest an output just written."""
    path = f"/proc/self/fd/{fd}"
    return LvmSource(ExtentMap(size, [LinearMapper(0, size, path, 0)] if size else []), name,
                     lambda p: LocalFile(p, name=name), sequential=True)
