# SPDX-License-Identifier: Apache-2.0
"""VG, PV, LV and segment model built from parsed metadata text.

Everything is validated on the way in (types, ranges, contiguous segments), so code past this
module can trust the model. Sizes are converted to bytes; LVM's own units (sectors, extents)
stay available where a formula needs them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property

from ..errors import FormatError
from ..units import SECTOR
from .textfmt import Section, Value, parse

# lvm2 keeps these numbers in 32-bit fields (struct volume_group seqno and extent_size,
# physical_volume pe_count, logical_volume le_count, lv_segment le/len/area_count/stripe_size/
# chunk_size/region_size) and reads them as such: a larger or negative value was not written by lvm2.
MAX_U32 = (1 << 32) - 1
MAX_U64 = (1 << 64) - 1  # every other number lvm2 reads (pe_start, dev_size, transaction_id...)
MAX_EXTENTS = MAX_U32
# Every byte size and offset must fit a file offset (off_t), a Linux block device size and a qemu
# image size: INT64_MAX. Beyond it nothing can read, hold or write the bytes.
MAX_BYTES = (1 << 63) - 1
U32_SEGMENT_KEYS = frozenset({"start_extent", "extent_count", "stripe_count", "stripe_size", "area_count",
                              "device_count", "mirror_count", "region_size", "chunk_size", "data_copies"})
_SEGMENT_KEY = re.compile(r"segment[0-9]+\Z")


@dataclass(frozen=True)
class PV:
    name: str  # "pv0": the key used by segment areas
    id: str  # dashed uuid
    device_hint: str
    status: tuple[str, ...]
    dev_size: int  # bytes (0 when absent)
    pe_start: int  # bytes
    pe_count: int

    @property
    def uuid(self) -> str:
        return self.id.replace("-", "")

    @property
    def missing_flag(self) -> bool:
        return "MISSING" in self.status


@dataclass(frozen=True)
class Segment:
    index: int  # 1-based, as in "segment1"
    start_extent: int
    extent_count: int
    type: str  # base type, e.g. "striped", "thin"
    flags: tuple[str, ...]  # "+FLAG" suffixes of the type
    params: Section  # every key of the segment section, for type-specific readers

    def param(self, key: str) -> Value | Section | None:
        return self.params.get(key)

    @property
    def shown_type(self) -> str:
        """The type as users see it (``scan``, ``inspect``): one stripe is ``linear``, as lvs says; with flags."""
        base = "linear" if self.type == "striped" and self.param("stripe_count") == 1 else self.type
        return "+".join((base, *self.flags))


@dataclass(frozen=True)
class LV:
    name: str
    id: str
    status: tuple[str, ...]
    tags: tuple[str, ...]
    segments: tuple[Segment, ...]
    creation_time: int | None = None

    @property
    def extent_count(self) -> int:
        return sum(s.extent_count for s in self.segments)

    @property
    def visible(self) -> bool:
        return "VISIBLE" in self.status

    @property
    def segment_types(self) -> list[str]:
        seen: list[str] = []
        for s in self.segments:
            t = s.shown_type
            if t not in seen:
                seen.append(t)
        return seen


@dataclass(frozen=True)
class VG:
    name: str
    id: str
    seqno: int
    extent_size: int  # bytes
    status: tuple[str, ...]
    pvs: dict[str, PV]
    lvs: dict[str, LV]
    tags: tuple[str, ...] = ()
    system_id: str = ""
    creation_host: str = ""
    extra: dict[str, object] = field(default_factory=dict)

    def lv_size(self, lv: LV) -> int:
        return lv.extent_count * self.extent_size

    @cached_property
    def references(self) -> dict[tuple[str, str, str], tuple[LV, ...]]:
        """(segment type, key, name) -> the LVs, in metadata order, with such a segment whose string
        ``key`` is ``name`` (a snapshot's ``cow_store``, a thin volume's ``thin_pool``...).

        Built once per VG: looking a reference up by scanning every LV, once per LV, made a scan of a
        VG with hundreds of LVs quadratic (cubic with visibility checks).
        """
        refs: dict[tuple[str, str, str], list[LV]] = {}
        for lv in self.lvs.values():
            for s in lv.segments:
                for k, v in s.params.items():
                    if isinstance(v, str):
                        found = refs.setdefault((s.type, k, v), [])
                        if not found or found[-1] is not lv:
                            found.append(lv)
        return {k: tuple(v) for k, v in refs.items()}

    @cached_property
    def position(self) -> dict[str, int]:
        """LV name -> its index in the metadata."""
        return {name: i for i, name in enumerate(self.lvs)}

    def referrers(self, seg_type: str, key: str, name: str) -> tuple[LV, ...]:
        return self.references.get((seg_type, key, name), ())


class _Ctx:
    """Where a value came from, for error messages."""

    def __init__(self, path: str | None, offset: int | None) -> None:
        self.path = path
        self.offset = offset

    def error(self, msg: str) -> FormatError:
        return FormatError(f"metadata: {msg}", self.path, self.offset)

    def section(self, sec: Section, key: str, where: str) -> Section:
        v = sec.get(key)
        if not isinstance(v, dict):
            raise self.error(f"{where}: missing section {key!r}")
        return v

    def int_(self, sec: Section, key: str, where: str, default: int | None = None,
             lo: int = 0, hi: int = 1 << 63) -> int:
        v = sec.get(key)
        if v is None and default is not None:
            return default
        if not isinstance(v, int) or isinstance(v, bool):
            raise self.error(f"{where}: {key} must be an integer, found {v!r}")
        if not lo <= v <= hi:
            raise self.error(f"{where}: {key} = {v} out of range [{lo}, {hi}]")
        return v

    def str_(self, sec: Section, key: str, where: str, default: str | None = None) -> str:
        v = sec.get(key)
        if v is None and default is not None:
            return default
        if not isinstance(v, str):
            raise self.error(f"{where}: {key} must be a string, found {v!r}")
        return v

    def strs(self, sec: Section, key: str, where: str) -> tuple[str, ...]:
        v = sec.get(key, [])
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise self.error(f"{where}: {key} must be a list of strings, found {v!r}")
        return tuple(str(x) for x in v)


def vg_from_text(text: str, path: str | None = None, offset: int | None = None) -> VG:
    """Parse and validate one copy of VG metadata text."""
    root = parse(text, path, offset)
    ctx = _Ctx(path, offset)
    sections = [(k, v) for k, v in root.items() if isinstance(v, dict)]
    if len(sections) != 1:
        raise ctx.error(f"expected one volume group section, found {len(sections)}")
    name, sec = sections[0]
    where = f"VG {name}"
    extent_size = ctx.int_(sec, "extent_size", where, lo=1, hi=MAX_U32) * SECTOR
    pvs: dict[str, PV] = {}
    for pv_name, pv_sec in ctx.section(sec, "physical_volumes", where).items():
        if not isinstance(pv_sec, dict):
            raise ctx.error(f"{where}: physical_volumes/{pv_name} is not a section")
        pv = pvs[pv_name] = _pv(ctx, pv_name, pv_sec, f"{where} PV {pv_name}")
        if pv.pe_start + pv.pe_count * extent_size > MAX_BYTES:
            raise ctx.error(f"{where} PV {pv_name}: {pv.pe_count} extents of {extent_size} bytes from byte "
                            f"{pv.pe_start} end beyond the {MAX_BYTES} byte limit of a file offset")
    _unique(ctx, where, "PV", {n: p.id for n, p in pvs.items()})
    lvs: dict[str, LV] = {}
    lv_secs = sec.get("logical_volumes", {})
    if not isinstance(lv_secs, dict):
        raise ctx.error(f"{where}: logical_volumes is not a section")
    for lv_name, lv_sec in lv_secs.items():
        if not isinstance(lv_sec, dict):
            raise ctx.error(f"{where}: logical_volumes/{lv_name} is not a section")
        lv = lvs[lv_name] = _lv(ctx, lv_name, lv_sec, f"{where} LV {lv_name}")
        if lv.extent_count > MAX_EXTENTS or lv.extent_count * extent_size > MAX_BYTES:
            raise ctx.error(f"{where} LV {lv_name}: {lv.extent_count} extents of {extent_size} bytes "
                            f"({lv.extent_count * extent_size} bytes) exceed the limit of {MAX_EXTENTS} "
                            f"extents and {MAX_BYTES} bytes (the largest file or disk)")
    _unique(ctx, where, "LV", {n: lv.id for n, lv in lvs.items()})
    creation_host = root.get("creation_host", "")
    return VG(
        name=name,
        id=ctx.str_(sec, "id", where),
        seqno=ctx.int_(sec, "seqno", where, hi=MAX_U32),
        extent_size=extent_size,
        status=ctx.strs(sec, "status", where),
        pvs=pvs,
        lvs=lvs,
        tags=ctx.strs(sec, "tags", where),
        system_id=ctx.str_(sec, "system_id", where, default=""),
        creation_host=creation_host if isinstance(creation_host, str) else "",
    )


def _pv(ctx: _Ctx, name: str, sec: Section, where: str) -> PV:
    return PV(
        name=name,
        id=ctx.str_(sec, "id", where),
        device_hint=ctx.str_(sec, "device", where, default=""),
        status=ctx.strs(sec, "status", where),
        dev_size=ctx.int_(sec, "dev_size", where, default=0, hi=MAX_BYTES // SECTOR) * SECTOR,
        pe_start=ctx.int_(sec, "pe_start", where, hi=MAX_BYTES // SECTOR) * SECTOR,
        pe_count=ctx.int_(sec, "pe_count", where, hi=MAX_EXTENTS),
    )


def _lv(ctx: _Ctx, name: str, sec: Section, where: str) -> LV:
    count = ctx.int_(sec, "segment_count", where, lo=0, hi=1 << 20)
    found = sum(1 for k, v in sec.items() if isinstance(v, dict) and _SEGMENT_KEY.match(k))
    if found != count:
        # lvm2: "segment_count and actual number of segments disagree": the VG is not read
        raise ctx.error(f"{where}: segment_count {count} but {found} segment sections")
    segs: list[Segment] = []
    next_extent = 0
    for i in range(1, count + 1):
        s = ctx.section(sec, f"segment{i}", where)
        swhere = f"{where} segment{i}"
        _numbers_in_range(ctx, s, swhere)
        start = ctx.int_(s, "start_extent", swhere, hi=MAX_EXTENTS)
        n = ctx.int_(s, "extent_count", swhere, lo=1, hi=MAX_EXTENTS)
        if start != next_extent:
            raise ctx.error(f"{swhere}: start_extent {start}, expected {next_extent} (segments must be "
                            "contiguous)")
        next_extent = start + n
        full = ctx.str_(s, "type", swhere)
        base, *flags = full.split("+")
        if base == "striped":
            _striped_areas(ctx, s, swhere)
        segs.append(Segment(i, start, n, base, tuple(flags), s))
    ctime = sec.get("creation_time")
    return LV(
        name=name,
        id=ctx.str_(sec, "id", where),
        status=ctx.strs(sec, "status", where),
        tags=ctx.strs(sec, "tags", where),
        segments=tuple(segs),
        creation_time=ctime if isinstance(ctime, int) else None,
    )


def _unique(ctx: _Ctx, where: str, what: str, ids: dict[str, str]) -> None:
    """Two PVs (or LVs) with one id: lvm2 reports "Duplicate PV id" as an internal error."""
    seen: dict[str, str] = {}
    for name, ident in ids.items():
        if ident in seen:
            raise ctx.error(f"{where}: {what}s {seen[ident]} and {name} have the same id {ident} (conflicting "
                            "metadata)")
        seen[ident] = name


def _numbers_in_range(ctx: _Ctx, sec: Section, where: str) -> None:
    """Every number of a segment as lvm2 can hold it: unsigned, 32 bits for counts, sizes and the
    extent numbers of area lists, 64 bits otherwise."""
    for key, v in sec.items():
        items = v if isinstance(v, list) else [v]
        hi = MAX_U32 if key in U32_SEGMENT_KEYS or isinstance(v, list) else MAX_U64
        for x in items:
            if isinstance(x, int) and not 0 <= x <= hi:
                raise ctx.error(f"{where}: {key} value {x} out of range [0, {hi}]")


def _striped_areas(ctx: _Ctx, sec: Section, where: str) -> None:
    """A striped segment's stripe_count, stripe list and stripe_size agree (lvm2's striped import)."""
    areas = sec.get("stripes")
    if not isinstance(areas, list) or not areas or len(areas) % 2:
        raise ctx.error(f"{where}: stripes must be a non-empty list of (PV or LV, extent) pairs")
    count = ctx.int_(sec, "stripe_count", where, default=len(areas) // 2, lo=1, hi=MAX_U32)
    if count != len(areas) // 2:
        raise ctx.error(f"{where}: stripe_count {count} but {len(areas) // 2} stripes listed")
    if count > 1:
        ctx.int_(sec, "stripe_size", where, lo=1, hi=MAX_U32)
