# SPDX-License-Identifier: Apache-2.0
"""dm-snapshot (classic LVM COW snapshot): read a snapshot through its persistent exception store.

On-disk format (Linux ``drivers/md/dm-snap-persistent.c``), little-endian, in units of the
snapshot chunk (``chunk_size`` sectors):

* chunk 0, the header: ``magic u32 (0x70416e53 "SnAp") | valid u32 | version u32 (1) |
  chunk_size u32 (sectors)``. ``valid == 0`` means the kernel invalidated the snapshot (the COW
  store overflowed or an I/O error happened): its contents are undefined and it is refused.
  ``magic == 0`` is a store the kernel never initialised: no exceptions, the snapshot equals its
  origin (what the kernel does on first activation).
* metadata areas: area ``a`` sits in chunk ``1 + a * (E + 1)`` with ``E = chunk_bytes // 16``
  exceptions per area, each ``old_chunk u64 | new_chunk u64``; the E data chunks of the area
  follow it. The list ends at the first entry with ``new_chunk == 0`` (the kernel's terminator);
  when an area is full, the next one is read.

A snapshot chunk ``old_chunk`` with an exception reads from COW chunk ``new_chunk``; every other
chunk reads from the origin. Merging snapshots (``lvconvert --merge`` in progress) are not this
mapper's business: the caller refuses them from the VG metadata.

Memory: the exception table is loaded once into two sorted ``array('Q')`` (16 bytes per
exception), capped at :data:`MAX_EXCEPTIONS`.
"""

from __future__ import annotations

import bisect
import struct
from array import array
from collections.abc import Iterator

from ..errors import FormatError, UnsupportedError
from .extents import Extent, ExtentMap, Kind, merged, translate
from .thin import ByteSource

SNAP_MAGIC = 0x70416E53
SNAP_VERSION = 1
EXCEPTION_SIZE = 16
# 4 Mi exceptions = 64 MiB of table (plus a transient sort index), i.e. 16 GiB of changed data
# at the default 4 KiB chunk; beyond that the snapshot is refused rather than eating the RAM.
MAX_EXCEPTIONS = 1 << 22
MAX_CHUNK = 512 << 10  # lvm allows 4 KiB .. 512 KiB snapshot chunks


class CowSnapshotMapper:
    """A classic snapshot: ``origin_map`` except the chunks remapped into ``cow_map``.

    ``cow_reader`` reads the COW LV (header and exception areas); ``cow_map`` is the same LV's
    extent map, used to translate exception chunks. ``chunk_bytes`` is the snapshot segment's
    ``chunk_size`` from the VG metadata and must equal the header's.
    """

    def __init__(self, start: int, length: int, origin_map: ExtentMap, cow_reader: ByteSource,
                 cow_map: ExtentMap, chunk_bytes: int, name: str = "snapshot COW store") -> None:
        self.start = start
        self.length = length
        self.origin_map = origin_map
        self.cow_map = cow_map
        self.chunk = chunk_bytes
        self.name = name
        if not 4096 <= chunk_bytes <= MAX_CHUNK or chunk_bytes & (chunk_bytes - 1):
            raise FormatError(f"snapshot chunk size {chunk_bytes} is not a power of two in 4 KiB..512 KiB",
                              name)
        if origin_map.size < start + length:
            raise FormatError(f"origin of {origin_map.size} bytes is smaller than the snapshot", name)
        if cow_map.size != cow_reader.size:
            raise FormatError("COW reader and COW map disagree on the store size", name)
        self.olds, self.news = self._load(cow_reader)

    def _load(self, src: ByteSource) -> tuple[array[int], array[int]]:
        c = self.chunk
        head = src.pread(0, 16)
        if len(head) != 16:
            raise FormatError("COW store too small for a snapshot header", self.name, 0)
        magic, valid, version, chunk_sectors = struct.unpack("<IIII", head)
        if magic == 0:
            return array("Q"), array("Q")
        if magic != SNAP_MAGIC:
            raise FormatError(f"bad snapshot header magic {magic:#x} (want {SNAP_MAGIC:#x})", self.name, 0)
        if valid == 0:
            raise FormatError("snapshot is invalid (valid=0): the kernel dropped it, usually because the "
                              "COW store overflowed; its contents are undefined", self.name, 0)
        if version != SNAP_VERSION:
            raise UnsupportedError(f"unsupported snapshot store version {version}", self.name, 0)
        if chunk_sectors * 512 != c:
            raise FormatError(f"header chunk size {chunk_sectors * 512} bytes disagrees with the VG "
                              f"metadata's {c}", self.name, 0)
        per_area = c // EXCEPTION_SIZE
        cow_chunks = src.size // c
        origin_chunks = -(-self.origin_map.size // c)
        olds, news = array("Q"), array("Q")
        area = 0
        while True:
            where = 1 + area * (per_area + 1)
            if where >= cow_chunks:
                break  # the store ends exactly after a full area
            block = src.pread(where * c, c)
            if len(block) != c:
                raise FormatError(f"exception area {area} is truncated", self.name, where * c)
            for i, (old, new) in enumerate(struct.iter_unpack("<QQ", block)):
                if new == 0:
                    return self._sorted(olds, news)
                if new >= cow_chunks or (new - 1) % (per_area + 1) == 0:
                    raise FormatError(f"exception {old}->{new} points outside the COW data chunks",
                                      self.name, where * c + i * EXCEPTION_SIZE)
                if old >= origin_chunks:
                    raise FormatError(f"exception for chunk {old} beyond the origin's {origin_chunks}",
                                      self.name, where * c + i * EXCEPTION_SIZE)
                if len(olds) >= MAX_EXCEPTIONS:
                    raise UnsupportedError(f"snapshot has more than {MAX_EXCEPTIONS} exceptions", self.name)
                olds.append(old)
                news.append(new)
            area += 1
        return self._sorted(olds, news)

    @staticmethod
    def _sorted(olds: array[int], news: array[int]) -> tuple[array[int], array[int]]:
        """Sort by old chunk; for a chunk listed twice the later entry wins, as in the kernel."""
        order = sorted(range(len(olds)), key=olds.__getitem__)  # stable: equal olds keep list order
        so, sn = array("Q"), array("Q")
        for i in order:
            if so and so[-1] == olds[i]:
                sn[-1] = news[i]
            else:
                so.append(olds[i])
                sn.append(news[i])
        return so, sn

    @property
    def exceptions(self) -> int:
        return len(self.olds)

    def extents(self, lo: int, hi: int) -> Iterator[Extent]:
        return merged(self._parts(lo, hi))

    def _parts(self, lo: int, hi: int) -> Iterator[Extent]:
        c = self.chunk
        pos, end = lo - self.start, hi - self.start
        i = bisect.bisect_left(self.olds, pos // c)
        while pos < end:
            if i < len(self.olds) and self.olds[i] == pos // c:
                take = min(end, (pos // c + 1) * c) - pos
                parts = translate(self.cow_map, self.news[i] * c + pos % c, take, self.start + pos)
                i += 1
            else:
                nxt = self.olds[i] * c if i < len(self.olds) else end
                take = min(end, nxt) - pos
                parts = translate(self.origin_map, pos, take, self.start + pos)
            yield from parts
            pos += take

    def paths(self) -> set[str]:
        return self.origin_map.paths() | self.cow_map.paths()

    def kinds(self) -> frozenset[Kind]:
        return self.origin_map.kinds() | self.cow_map.kinds()

    def describe(self) -> dict[str, object]:
        return {"type": "snapshot", "start": self.start, "length": self.length, "chunk_size": self.chunk,
                "exceptions": self.exceptions, "origin": self.origin_map.describe(),
                "cow": self.cow_map.describe()}

