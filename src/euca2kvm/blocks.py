# SPDX-License-Identifier: Apache-2.0
"""One block source: what every reader of a disk's bytes offers the rest of euca2kvm.

An LVM logical volume (an :class:`~euca2kvm.lvm.extents.ExtentMap` over local or remote
container files), an image file read through ``qemu-nbd``, a gzip'd snapshot object, a Ceph RBD
image: each is a :class:`BlockSource`. The movers, the NBD server's block status, the preflight
(how many bytes hold data) and the digest see nothing else; they never learn what a stripe, a
qcow2 cluster or an RBD object is.

A source answers two questions:

- :meth:`BlockSource.ranges`: for bytes ``[lo, hi)``, gap-free ordered :class:`Range` objects of
  one :class:`Kind` each. ``DATA`` may hold anything (it is read); ``ZERO`` and ``HOLE`` read as
  zeros and are never read (``ZERO``: known zeros, e.g. a dm ``zero`` segment or an unprovisioned
  thin block; ``HOLE``: nothing is allocated in the backing store, e.g. a sparse file's hole, an
  absent RBD object); ``ERROR`` fails every read (dm ``error``): never exported as zeros.
  Answers must be cheap enough to ask per 4 MiB block, and must come from the source's own
  metadata (SEEK_DATA, an extent query, a diff), never from reading the bytes.
- :meth:`BlockSource.read_into`: fill a buffer with bytes ``[offset, offset + len(view))``,
  exactly, or raise :class:`~euca2kvm.errors.IOFailure` naming the file (or object) and the
  offset: a short read is a source that shrank, never zeros or stale bytes. Reading an ``ERROR``
  range raises too. It must be safe to call from several threads at once (workers read
  disjoint blocks in parallel).

:meth:`BlockSource.kinds` states up front which kinds can occur at all, so that a source with an
``ERROR`` range is refused before anything is copied (exit 3), not found mid-copy.

This module imports nothing of euca2kvm but the errors: every layer may use it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


class Kind(enum.Enum):
    DATA = "data"  # stored bytes: read them
    ZERO = "zero"  # known to read as zeros, nothing to read
    HOLE = "hole"  # nothing allocated in the backing store: reads as zeros, nothing to read
    ERROR = "error"  # every read fails (dm "error" target): never exported as zeros


# Kinds whose bytes are zeros without reading them.
ZEROS = frozenset({Kind.ZERO, Kind.HOLE})


@dataclass(frozen=True, slots=True)
class Range:
    """``length`` bytes of the source starting at byte ``start``, all of one ``kind``."""

    start: int
    length: int
    kind: Kind

    @property
    def end(self) -> int:
        return self.start + self.length


@runtime_checkable
class BlockSource(Protocol):
    """A read-only disk: its size, what each byte range is, and its bytes. See the module docstring."""

    @property
    def name(self) -> str:
        """What messages call this source (an id, a path, ``rbd:pool/image``); escaped by the caller."""
        ...

    @property
    def size(self) -> int:
        """Bytes of the disk."""
        ...

    def kinds(self) -> frozenset[Kind]:
        """Every kind :meth:`ranges` may return anywhere in the source (a superset is allowed,
        missing one is a defect): cheap, from the source's structure, not from a scan."""
        ...

    def ranges(self, lo: int, hi: int) -> Iterator[Range]:
        """Ranges covering ``[lo, hi)`` (0 <= lo <= hi <= size) in order, without gaps or overlaps."""
        ...

    def read_into(self, offset: int, view: memoryview) -> None:
        """Fill ``view`` with bytes ``[offset, offset + len(view))`` (within the size), or raise."""
        ...

    def close(self) -> None:
        """Release descriptors and connections; the source is not used afterwards."""
        ...


class AllData:
    """For block sources whose every byte reads as data (a stream, a wrapper that reads through to
    another source): their ``kinds()`` and ``ranges()``."""

    def kinds(self) -> frozenset[Kind]:
        return frozenset({Kind.DATA})

    def ranges(self, lo: int, hi: int) -> Iterator[Range]:
        if hi > lo:
            yield Range(lo, hi - lo, Kind.DATA)


def merged(ranges: Iterable[Range]) -> Iterator[Range]:
    """Contiguous ordered ``ranges`` with neighbours of the same kind joined into one."""
    pending: Range | None = None
    for r in ranges:
        if pending is not None and pending.kind is r.kind:
            pending = Range(pending.start, pending.length + r.length, r.kind)
            continue
        if pending is not None:
            yield pending
        pending = r
    if pending is not None:
        yield pending


def data_bytes(source: BlockSource, lo: int = 0, hi: int | None = None) -> int:
    """Bytes of ``[lo, hi)`` that are ``DATA`` (what a sparse copy reads and writes at most)."""
    end = source.size if hi is None else hi
    return sum(r.length for r in source.ranges(lo, end) if r.kind is Kind.DATA)


class BlockReader:
    """A block source as bounded positional reads (``size`` and ``pread``, what the guest inspector
    reads through); a context manager that closes the source."""

    def __init__(self, source: BlockSource) -> None:
        self.source, self.size = source, source.size

    def pread(self, offset: int, length: int) -> bytes:
        buf = bytearray(max(0, min(length, self.size - offset)))
        self.source.read_into(offset, memoryview(buf))
        return bytes(buf)

    def close(self) -> None:
        self.source.close()

    def __enter__(self) -> BlockReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ByteFile(Protocol):
    """One readable file that block sources are built on (a container file, a device, a snapshot
    file), local or on a remote host. A source's files are opened through a :data:`FileOpener`, so
    the same LVM reader and movers work on local files and on files read over SSH."""

    @property
    def path(self) -> str:
        """The file's path (on its host), for messages."""
        ...

    def size(self) -> int:
        """Current size in bytes (asked again after a copy: a shrunk source must be noticed)."""
        ...

    def pread_into(self, offset: int, view: memoryview) -> int:
        """Read up to ``len(view)`` bytes at ``offset`` into ``view``; the count (short only at EOF)."""
        ...

    def data_ranges(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """Sub-ranges of ``[lo, hi)`` that are not holes (SEEK_DATA or equivalent), in order;
        ``[(lo, hi)]`` when the file cannot tell."""
        ...

    def close(self) -> None: ...


class FileOpener(Protocol):
    def __call__(self, path: str) -> ByteFile:
        """Open ``path`` read-only (never following a symlink where the caller asks for that)."""
        ...


# Openers of files that are not on this machine, by name prefix (``ssh://``): the module that reads
# them registers itself, so a reader that only has a file's name (an extent map's path, read while
# scanning thin metadata or a snapshot's exception store) opens it the same way as the movers.
_OPENERS: dict[str, FileOpener] = {}


def register_opener(prefix: str, opener: FileOpener) -> None:
    _OPENERS[prefix] = opener


def opener_for(path: str) -> FileOpener | None:
    """The registered opener of a non-local file name, or None for a local path."""
    for prefix, opener in _OPENERS.items():
        if path.startswith(prefix):
            return opener
    return None
