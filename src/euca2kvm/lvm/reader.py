# SPDX-License-Identifier: Apache-2.0
"""Random-access, read-only byte reader over an :class:`ExtentMap`.

For inspection, NBD serving and verification: ``pread(offset, length)`` returns exactly the LV
bytes, zeros for ZERO extents, and raises :class:`IOFailure` for ERROR extents. The bulk
movers in ``euca2kvm.export`` do not use it; they work on extents directly.
"""

from __future__ import annotations

import os
import threading

from ..blocks import ByteFile, opener_for
from ..errors import FormatError, IOFailure
from .extents import ExtentMap, Kind

# Reads larger than this are refused: callers read in bounded chunks (hostile sizes never
# turn into huge allocations).
MAX_READ = 64 << 20


class FdCache:
    """Read-only descriptors, one per source path, shared by threads (``pread`` has no file position)."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()

    def fd(self, path: str) -> int:
        fd = self._fds.get(path)
        if fd is not None:
            return fd
        with self._lock:
            fd = self._fds.get(path)
            if fd is None:
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except OSError as e:
                    raise IOFailure(f"cannot open {path} read-only: {e.strerror}") from e
                self._fds[path] = fd
            return fd

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()


class ExtentReader:
    """Read-only view of an extent map. Thread-safe: uses pread on per-path descriptors."""

    def __init__(self, emap: ExtentMap, name: str = "LV", keep_open: bool = True) -> None:
        """``keep_open=False`` opens sources per read: for long-lived readers of little data (thin
        metadata), so no descriptor outlives a read and nobody sees the container as held open."""
        self.emap = emap
        self.name = name
        self.keep_open = keep_open
        self.size = emap.size
        self._files = FdCache()
        self._remote: dict[str, ByteFile] = {}

    def pread(self, offset: int, length: int) -> bytes:
        """Exactly ``length`` bytes at ``offset`` (short only at the end of the LV)."""
        if offset < 0 or length < 0:
            raise ValueError("negative offset or length")
        if length > MAX_READ:
            raise ValueError(f"read of {length} bytes exceeds the {MAX_READ} byte bound")
        end = min(self.size, offset + length)
        if offset >= end:
            return b""
        out = bytearray(end - offset)
        view = memoryview(out)
        for e in self.emap.extents(offset, end):
            dst = view[e.start - offset : e.end - offset]
            if e.kind is Kind.ZERO:
                continue  # bytearray is already zero
            if e.kind is Kind.ERROR:
                raise IOFailure(f"{self.name}: bytes {e.start}..{e.end} map to an 'error' segment")
            assert e.path is not None
            try:
                got = self._read_remote(e.path, dst, e.offset) if opener_for(e.path) else os.preadv(
                    self._files.fd(e.path), [dst], e.offset)
            finally:
                if not self.keep_open:
                    self.close()
            if got != e.length:
                raise FormatError(f"short read: wanted {e.length} bytes, got {got} (file truncated?)",
                                  e.path, e.offset + got)
        return bytes(out)

    def _read_remote(self, path: str, dst: memoryview, offset: int) -> int:
        """Bytes of a file on another host (``ssh://``), through its registered opener."""
        with self._files._lock:
            f = self._remote.get(path)
            if f is None:
                opener = opener_for(path)
                assert opener is not None
                f = self._remote[path] = opener(path)
        got = 0
        while got < len(dst):
            n = f.pread_into(offset + got, dst[got:])
            if n == 0:
                break
            got += n
        return got

    def close(self) -> None:
        self._files.close()
        with self._files._lock:
            for f in self._remote.values():
                f.close()
            self._remote.clear()

    def __enter__(self) -> ExtentReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
