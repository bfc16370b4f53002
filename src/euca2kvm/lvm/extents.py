# SPDX-License-Identifier: Apache-2.0
"""The extent map: the one interface between LVM layouts and the movers.

Every LVM segment type reduces to a :class:`Mapper` that answers, for a byte range of the
logical volume, which runs of which source file hold the bytes (``DATA``), which read as zeros
(``ZERO``) and which fail to read (``ERROR``, the dm ``error`` target). Each mapper also states
up front which of those kinds it can yield anywhere (:meth:`Mapper.kinds`), so an ``error``
extent inside a striped, thin, COW or raid mapper is refused before anything is copied.
Movers never see extents: :class:`euca2kvm.lvm.source.LvmSource` turns a map into a
:class:`euca2kvm.blocks.BlockSource` (adding ``HOLE`` where a source file has holes).

Mappers answer arithmetically for any range, so a 2 TiB LV striped in 64 KiB chunks costs no
memory until a mover asks for a range, and parallel workers can ask for disjoint ranges.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..blocks import Kind

__all__ = ["Extent", "ExtentMap", "FillMapper", "Kind", "LinearMapper", "Mapper",
           "ShiftedMapper", "StripedMapper", "translate"]

DATA_ONLY = frozenset({Kind.DATA})

@dataclass(frozen=True, slots=True)
class Extent:
    """``length`` bytes of the LV starting at LV byte ``start``."""

    start: int
    length: int
    kind: Kind
    path: str | None = None  # source file for DATA
    offset: int = 0  # byte offset in ``path`` for DATA

    @property
    def end(self) -> int:
        return self.start + self.length

    def clip(self, lo: int, hi: int) -> Extent:
        """The part of this extent inside LV bytes [lo, hi)."""
        s = max(lo, self.start)
        e = min(hi, self.end)
        if self.kind is Kind.DATA:
            return Extent(s, e - s, self.kind, self.path, self.offset + (s - self.start))
        return Extent(s, e - s, self.kind)

    def to_json(self) -> dict[str, object]:
        d: dict[str, object] = {"start": self.start, "length": self.length, "kind": self.kind.value}
        if self.kind is Kind.DATA:
            d["path"] = self.path
            d["offset"] = self.offset
        return d


class Mapper(Protocol):
    """Maps LV bytes [start, start + length) to extents. Implemented per segment type."""

    @property
    def start(self) -> int:
        """LV byte offset of the first byte this mapper covers."""
        ...

    @property
    def length(self) -> int:
        """Bytes covered."""
        ...

    def extents(self, lo: int, hi: int) -> Iterator[Extent]:
        """Extents covering LV bytes [lo, hi), in order, where start <= lo < hi <= start + length."""
        ...

    def paths(self) -> set[str]:
        """Source files this mapper reads from."""
        ...

    def kinds(self) -> frozenset[Kind]:
        """Every kind :meth:`extents` may yield anywhere (DATA, ZERO, ERROR; a superset is allowed),
        from the mapper's structure: an ERROR here refuses the LV before anything is copied."""
        ...

    def describe(self) -> dict[str, object]:
        """JSON-able summary for ``inspect``."""
        ...


@dataclass(frozen=True)
class LinearMapper:
    start: int
    length: int
    path: str
    offset: int

    def extents(self, lo: int, hi: int) -> Iterator[Extent]:
        yield Extent(lo, hi - lo, Kind.DATA, self.path, self.offset + (lo - self.start))

    def paths(self) -> set[str]:
        return {self.path}

    def kinds(self) -> frozenset[Kind]:
        return DATA_ONLY

    def describe(self) -> dict[str, object]:
        return {"type": "linear", "start": self.start, "length": self.length, "path": self.path,
                "offset": self.offset}


@dataclass(frozen=True)
class FillMapper:
    """Zeros (dm ``zero``) or read errors (dm ``error``)."""

    start: int
    length: int
    kind: Kind

    def extents(self, lo: int, hi: int) -> Iterator[Extent]:
        yield Extent(lo, hi - lo, self.kind)

    def paths(self) -> set[str]:
        return set()

    def kinds(self) -> frozenset[Kind]:
        return frozenset({self.kind})

    def describe(self) -> dict[str, object]:
        return {"type": self.kind.value, "start": self.start, "length": self.length}


@dataclass(frozen=True)
class StripedMapper:
    """dm-stripe: chunk c of the segment lives in area c % N at chunk row c // N.

    ``areas`` are (path, byte offset of the area's first extent) per stripe; each area holds
    ``length // N`` bytes. For LV-relative byte b inside the segment (sector formula in
    the LVM2 reference, scaled to bytes):
    ``chunk = b // S; area = chunk % N; phys = area_off + (chunk // N) * S + b % S``.
    """

    start: int
    length: int
    chunk: int  # stripe size in bytes
    areas: tuple[tuple[str, int], ...]

    def extents(self, lo: int, hi: int) -> Iterator[Extent]:
        n = len(self.areas)
        s = self.chunk
        b = lo - self.start
        end = hi - self.start
        while b < end:
            c, within = divmod(b, s)
            path, base = self.areas[c % n]
            take = min(s - within, end - b)
            yield Extent(self.start + b, take, Kind.DATA, path, base + (c // n) * s + within)
            b += take

    def paths(self) -> set[str]:
        return {p for p, _ in self.areas}

    def kinds(self) -> frozenset[Kind]:
        return DATA_ONLY

    def describe(self) -> dict[str, object]:
        return {"type": "striped", "start": self.start, "length": self.length,
                "stripe_size": self.chunk,
                "areas": [{"path": p, "offset": o} for p, o in self.areas]}


@dataclass(frozen=True)
class ShiftedMapper:
    """Another map's bytes [base, base + length) seen at LV offset ``start``.

    Used when a segment area names a sub-LV (raid images, thin-pool data, stacked LVs).
    """

    start: int
    length: int
    inner: ExtentMap
    base: int

    def extents(self, lo: int, hi: int) -> Iterator[Extent]:
        yield from translate(self.inner, lo - self.start + self.base, hi - lo, lo)

    def paths(self) -> set[str]:
        return self.inner.paths()

    def kinds(self) -> frozenset[Kind]:
        return self.inner.kinds()

    def describe(self) -> dict[str, object]:
        return {"type": "sub-lv", "start": self.start, "length": self.length, "base": self.base,
                "inner": self.inner.describe()}


class ExtentMap:
    """Ordered, gap-free mappers covering LV bytes [0, size)."""

    def __init__(self, size: int, mappers: Sequence[Mapper]) -> None:
        pos = 0
        for m in mappers:
            if m.start != pos or m.length <= 0:
                raise ValueError(f"mappers must be contiguous: expected start {pos}, got {m.start}+{m.length}")
            pos += m.length
        if pos != size:
            raise ValueError(f"mappers cover {pos} bytes, LV size is {size}")
        self.size = size
        self.mappers = list(mappers)
        self._starts = [m.start for m in self.mappers]

    def extents(self, lo: int = 0, hi: int | None = None) -> Iterator[Extent]:
        """Extents covering [lo, hi) in order; DATA neighbours contiguous in one file are merged."""
        hi = self.size if hi is None else min(hi, self.size)
        lo = max(0, lo)
        if lo >= hi:
            return
        yield from merged(self._parts(lo, hi))

    def _parts(self, lo: int, hi: int) -> Iterator[Extent]:
        i = max(0, bisect.bisect_right(self._starts, lo) - 1)
        while i < len(self.mappers) and self.mappers[i].start < hi:
            m = self.mappers[i]
            yield from m.extents(max(lo, m.start), min(hi, m.start + m.length))
            i += 1

    def paths(self) -> set[str]:
        out: set[str] = set()
        for m in self.mappers:
            out |= m.paths()
        return out

    def kinds(self) -> frozenset[Kind]:
        """Which kinds of extent may occur: what the mappers state (cheap, no chunk is visited)."""
        return frozenset().union(*(m.kinds() for m in self.mappers))

    def single_range(self) -> tuple[str, int] | None:
        """(path, offset) when the whole LV is one contiguous byte range of one file."""
        it = self.extents()
        first = next(it, None)
        if first is None or first.kind is not Kind.DATA or next(it, None) is not None:
            return None
        assert first.path is not None
        return first.path, first.offset

    def describe(self) -> list[dict[str, object]]:
        return [m.describe() for m in self.mappers]


def merged(parts: Iterable[Extent]) -> Iterator[Extent]:
    """``parts`` in order with contiguous neighbours of the same kind (DATA: contiguous in one file) merged."""
    p: Extent | None = None
    for e in parts:
        if p is not None and p.kind is e.kind and p.end == e.start and (
                e.kind is not Kind.DATA or (p.path == e.path and p.offset + p.length == e.offset)):
            p = Extent(p.start, p.length + e.length, p.kind, p.path, p.offset)
            continue
        if p is not None:
            yield p
        p = e
    if p is not None:
        yield p


def translate(inner: ExtentMap, inner_lo: int, length: int, at: int) -> Iterator[Extent]:
    """``inner`` bytes [inner_lo, inner_lo + length) re-based to start at LV byte ``at``."""
    delta = at - inner_lo
    for e in inner.extents(inner_lo, inner_lo + length):
        if e.kind is Kind.DATA:
            yield Extent(e.start + delta, e.length, e.kind, e.path, e.offset)
        else:
            yield Extent(e.start + delta, e.length, e.kind)
