# SPDX-License-Identifier: Apache-2.0
"""Random-access, read-only byte reader over an :class:`ExtentMap`.

For inspection and LVM metadata (thin, COW stores, mirror legs): ``pread(offset, length)`` returns
exactly the LV bytes, zeros for ZERO extents, raises :class:`IOFailure` for ERROR extents and
:class:`FormatError` for a file shorter than the map. The movers read block sources instead.
"""

from __future__ import annotations

from ..errors import FormatError
from .extents import ExtentMap
from .source import LvmSource, Shrunk

# Reads larger than this are refused: callers read in bounded chunks (hostile sizes never
# turn into huge allocations).
MAX_READ = 64 << 20


class ExtentReader:
    """Read-only view of an extent map as positional reads (an :class:`~.source.LvmSource` underneath:
    local files, or remote ones through their registered opener). Thread-safe."""

    def __init__(self, emap: ExtentMap, name: str = "LV", keep_open: bool = True) -> None:
        """``keep_open=False`` opens sources per read: for long-lived readers of little data (thin
        metadata), so no descriptor outlives a read and nobody sees the container as held open."""
        self.emap = emap
        self.name = name
        self.keep_open = keep_open
        self.size = emap.size
        self._source = LvmSource(emap, name)

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
        try:
            self._source.read_into(offset, memoryview(out))
        except Shrunk as e:  # metadata and guest files read past a file's end: the container is truncated
            raise FormatError(f"{e} (file truncated?)") from e
        finally:
            if not self.keep_open:
                self.close()
        return bytes(out)

    def close(self) -> None:
        self._source.close()

    def __enter__(self) -> ExtentReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
