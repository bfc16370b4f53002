# SPDX-License-Identifier: Apache-2.0
"""Legs of ``raid1`` and old ``mirror`` segments: which one to read, and whether they agree.

A mirrored segment is exported from ONE leg. The choice, in order:

* a leg is unusable when one of its PVs is missing (no scanned source, or marked ``MISSING`` in
  the VG metadata: lvm itself distrusts a PV that came back), when lvm flags the image
  ``REBUILD``, when it contains ``error`` segments (lost areas after ``vgreduce
  --removemissing``) or when it does not resolve;
* raid1 only: the dm-raid superblock at the start of each ``_rmeta_`` LV (Linux
  ``drivers/md/dm-raid.c``, ``struct dm_raid_superblock``) proves a leg in sync: valid magic,
  the highest ``events`` of all legs, its bit clear in ``failed_devices`` and
  ``disk_recovery_offset`` at MaxSector (recovery finished). A leg whose superblock proves it
  out of sync is never read; a leg whose superblock cannot be read is used only after the
  proven ones;
* otherwise the lowest index wins: leg 0 is the primary the kernel resyncs the others from
  (old mirrors with a core log resync everything from it at every activation; pvmove's source).

:func:`check_mirrors` compares every readable leg block by block (``--check-mirrors``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Protocol

from ..errors import FormatError, UsageError
from ..units import SECTOR
from .device import Device
from .extents import ExtentMap, FillMapper, Kind, LinearMapper, Mapper, ShiftedMapper
from .model import LV, VG, Segment
from .reader import ExtentReader
from .resolve import MAX_STACK_DEPTH, Context, area_target
from .segparams import seg_int, where


class ScannedGroup(Protocol):
    """What :func:`check_mirrors` needs of a scanned VG (``scan.VolumeGroup``), named structurally:
    ``scan`` imports the segment types, which import this module."""

    vg: VG
    devices: dict[str, Device | None]
    missing: dict[str, str]

RAID_SB_MAGIC = 0x64526D44  # "DmRd"
RAID_SB_SIZE = 48  # magic .. array_resync_offset: all this module reads
MAX_SECTOR = (1 << 64) - 1  # the kernel's MaxSector: "recovery complete"
# Legs are compared in blocks of this size: memory stays at legs x 1 MiB whatever the LV size.
COMPARE_BLOCK = 1 << 20
MAX_LEGS = 253  # dm-raid's limit (DEFAULT_RAID_MAX_IMAGES); old mirrors allow far fewer


@dataclass
class Leg:
    index: int
    name: str  # image LV (or PV for pvmove mirrors)
    base: int  # leg byte (LV map offset, or absolute file offset for a PV) of the segment's first byte
    target: ExtentMap | tuple[str, int] | None = None  # resolved map, or (path, offset) of a PV area
    problem: str | None = None  # why it must not be read
    in_sync: bool | None = None  # True/False when a raid superblock says so, None = unknown

    def mapper(self, start: int, length: int) -> Mapper:
        if isinstance(self.target, ExtentMap):
            return LegMapper(start, length, self.target, self.base, self.name)
        assert self.target is not None
        return LinearMapper(start, length, self.target[0], self.target[1])


@dataclass(frozen=True)
class LegMapper(ShiftedMapper):
    """The chosen leg of a mirrored segment (a :class:`ShiftedMapper` that names the leg)."""

    leg: str = ""

    def describe(self) -> dict[str, object]:
        d = super().describe()
        d["leg"] = self.leg
        return d


def raid_pairs(vg: VG, lv: LV, seg: Segment, key: str) -> list[tuple[str | None, str]]:
    """(rmeta or None, rimage) per device, parsed as lvm does: a ``_rmeta_`` name precedes its image."""
    raw = seg.param(key)
    w = where(vg, lv, seg)
    if not isinstance(raw, list) or not raw or not all(isinstance(x, str) for x in raw):
        raise FormatError(f"{w}: {key} must be a non-empty list of LV names, found {raw!r}")
    names = [str(x) for x in raw]
    out: list[tuple[str | None, str]] = []
    i = 0
    while i < len(names):
        meta: str | None = None
        if "_rmeta_" in names[i]:
            meta = names[i]
            i += 1
            if i == len(names):
                raise FormatError(f"{w}: {key} ends with metadata LV {meta} without its image")
        out.append((meta, names[i]))
        i += 1
    for m, img in out:
        for n in (m, img):
            if n is not None and n not in vg.lvs:
                raise FormatError(f"{w}: {key} names unknown LV {n!r}")
    if len(out) > MAX_LEGS:
        raise FormatError(f"{w}: {len(out)} images, more than dm-raid's {MAX_LEGS}")
    return out


def lv_pvs(vg: VG, name: str, depth: int = 0) -> set[str]:
    """PV names an LV's data (and any sub-LV's) lives on."""
    if depth > MAX_STACK_DEPTH:
        raise FormatError(f"VG {vg.name}: LV {name} is stacked more than {MAX_STACK_DEPTH} deep")
    lv = vg.lvs.get(name)
    if lv is None:
        return {name} if name in vg.pvs else set()
    out: set[str] = set()
    for seg in lv.segments:
        for value in seg.params.values():
            items = value if isinstance(value, list) else [value]
            for item in items:
                if isinstance(item, str) and item != name and (item in vg.pvs or item in vg.lvs):
                    out |= lv_pvs(vg, item, depth + 1)
    return out


def _raid_sb(ctx: Context, meta: str | None) -> tuple[int, int, int, int] | None:
    """(array_position, events, failed_devices, disk_recovery_offset) or None when unreadable."""
    if meta is None:
        return None
    try:
        with ExtentReader(ctx.lv_map(meta), f"{ctx.vg.name}/{meta}") as r:
            head = r.pread(0, RAID_SB_SIZE)
    except FormatError:
        return None
    if len(head) != RAID_SB_SIZE:
        return None
    magic, _compat, _num, pos, events, failed, recovery = struct.unpack_from("<IIIIQQQ", head)
    if magic != RAID_SB_MAGIC:
        return None
    return pos, events, failed, recovery


def _check_leg(ctx: Context, leg: Leg, length: int) -> None:
    vg = ctx.vg
    lv = vg.lvs.get(leg.name)
    if lv is not None and "REBUILD" in lv.status:
        leg.problem = "flagged REBUILD by lvm (being resynchronised)"
        return
    missing = sorted(p for p in lv_pvs(vg, leg.name)
                     if ctx.devices.get(p) is None or vg.pvs[p].missing_flag)
    if missing:
        leg.problem = "on missing PV " + ", ".join(
            f"{p} (uuid {vg.pvs[p].id}: {ctx.missing_reason.get(p, 'marked MISSING in the VG metadata')})"
            for p in missing)
        return
    if leg.target is None:
        leg.problem = "does not resolve"
        return
    if isinstance(leg.target, ExtentMap):
        if leg.base + length > leg.target.size:
            leg.problem = f"image of {leg.target.size} bytes is too small for the segment"
        elif Kind.ERROR in leg.target.kinds():
            leg.problem = "contains error segments (areas lost to a removed PV)"


def segment_legs(ctx: Context, lv: LV, seg: Segment) -> list[Leg]:
    """Every leg of a ``raid1`` or ``mirror`` segment, with ``problem``/``in_sync`` filled in."""
    vg = ctx.vg
    w = where(vg, lv, seg)
    length = seg.extent_count * vg.extent_size
    legs: list[Leg] = []
    metas: list[str | None] = []
    if seg.type == "raid1":
        pairs = raid_pairs(vg, lv, seg, "raids")
        count = seg_int(vg, lv, seg, "device_count", hi=MAX_LEGS)
        if count != len(pairs):
            raise FormatError(f"{w}: device_count {count} but {len(pairs)} images listed")
        base = seg_int(vg, lv, seg, "data_offset", default=0) * SECTOR
        for i, (meta, img) in enumerate(pairs):
            legs.append(Leg(i, img, base))
            metas.append(meta)
    elif seg.type == "mirror":
        raw = seg.param("mirrors")
        if not isinstance(raw, list) or not raw or len(raw) % 2:
            raise FormatError(f"{w}: mirrors must be a list of (name, extent) pairs, found {raw!r}")
        count = seg_int(vg, lv, seg, "mirror_count", hi=MAX_LEGS)
        if count != len(raw) // 2:
            raise FormatError(f"{w}: mirror_count {count} but {len(raw) // 2} legs listed")
        for i in range(0, len(raw), 2):
            name, le = raw[i], raw[i + 1]
            if not isinstance(name, str) or not isinstance(le, int) or isinstance(le, bool) or le < 0:
                raise FormatError(f"{w}: bad mirror area {name!r}, {le!r}")
            legs.append(Leg(i // 2, name, le * vg.extent_size))
            metas.append(None)
    else:
        raise UsageError(f"LV {vg.name}/{lv.name}: segment{seg.index} is {seg.type!r}, not raid1 or mirror")
    for leg in legs:
        try:
            if leg.name in vg.pvs:
                if ctx.devices.get(leg.name) is not None:
                    t = area_target(ctx, lv, seg, leg.name, leg.base // vg.extent_size, length)
                    if isinstance(t, ExtentMap):  # pragma: no cover - a PV name always gives a file area
                        raise FormatError(f"{w}: leg {leg.name} did not resolve to a PV area")
                    leg.target = (t[0].path, t[1])
            elif leg.name in vg.lvs:
                if not any(ctx.devices.get(p) is None for p in lv_pvs(vg, leg.name)):
                    leg.target = ctx.lv_map(leg.name)
            else:
                raise FormatError(f"{w}: leg {leg.name!r} is neither a PV nor an LV of the VG")
        except FormatError as e:
            if leg.name not in vg.pvs and leg.name not in vg.lvs:
                raise
            leg.problem = e.reason
        if leg.problem is None:
            _check_leg(ctx, leg, length)
    _raid_sync_state(ctx, legs, metas)
    return legs


def _raid_sync_state(ctx: Context, legs: list[Leg], metas: list[str | None]) -> None:
    sbs = {leg.index: _raid_sb(ctx, m) for leg, m in zip(legs, metas, strict=True)}
    known = {i: sb for i, sb in sbs.items() if sb is not None}
    if not known:
        return
    newest = max(known.values(), key=lambda sb: sb[1])
    for leg in legs:
        sb = known.get(leg.index)
        if sb is None:
            continue
        pos, events, _failed, recovery = sb
        failed_bit = leg.index < 64 and bool(newest[2] >> leg.index & 1)
        if pos != leg.index:
            why = f"its raid superblock says it is device {pos}"
        elif events < newest[1]:
            why = f"its raid superblock is stale (events {events} < {newest[1]})"
        elif failed_bit:
            why = "the array's superblock marks it failed"
        elif recovery != MAX_SECTOR:
            why = f"recovery stopped at sector {recovery}"
        else:
            leg.in_sync = True
            continue
        leg.in_sync = False
        if leg.problem is None:
            leg.problem = f"out of sync: {why}"


def pick_leg(ctx: Context, lv: LV, seg: Segment) -> tuple[Leg, list[Leg]]:
    """(leg to read, all legs) or FormatError naming every leg's problem."""
    legs = segment_legs(ctx, lv, seg)
    usable = [g for g in legs if g.problem is None]
    usable.sort(key=lambda g: (g.in_sync is not True, g.index))
    if not usable:
        detail = "; ".join(f"{g.name}: {g.problem}" for g in legs)
        raise FormatError(f"{where(ctx.vg, lv, seg)}: no readable in-sync leg ({detail})")
    return usable[0], legs


@dataclass
class MirrorReport:
    lv: str
    legs: list[str] = field(default_factory=list)  # legs compared (per segment, joined)
    skipped: dict[str, str] = field(default_factory=dict)  # leg -> why not compared
    bytes_compared: int = 0
    first_difference: int | None = None  # LV byte offset
    differing_legs: tuple[str, str] | None = None

    @property
    def identical(self) -> bool:
        return self.first_difference is None

    def summary(self) -> str:
        skipped = "".join(f"; skipped {k}: {v}" for k, v in self.skipped.items())
        if self.identical:
            legs = ", ".join(self.legs)
            return f"{self.lv}: legs {legs} identical over {self.bytes_compared} bytes{skipped}"
        a, b = self.differing_legs or ("?", "?")
        return f"{self.lv}: legs {a} and {b} differ first at LV byte {self.first_difference}{skipped}"

    def to_json(self) -> dict[str, object]:
        return {"lv": self.lv, "legs": self.legs, "skipped": self.skipped, "identical": self.identical,
                "bytes_compared": self.bytes_compared, "first_difference": self.first_difference,
                "differing_legs": list(self.differing_legs) if self.differing_legs else None}


def check_mirrors(group: ScannedGroup, lv_name: str, block: int = COMPARE_BLOCK) -> MirrorReport:
    """Compare all readable legs of every mirrored segment of ``lv_name`` (``group``: a scanned
    ``VolumeGroup``), in ``block``-sized reads; report the first differing LV byte."""
    vg = group.vg
    ctx = Context(vg, group.devices, group.missing)
    lv = vg.lvs.get(lv_name)
    if lv is None:
        raise UsageError(f"VG {vg.name} has no LV {lv_name!r}")
    if not any(s.type in ("raid1", "mirror") for s in lv.segments):
        raise UsageError(f"LV {vg.name}/{lv_name} is not mirrored (segment types: "
                         f"{', '.join(lv.segment_types)})")
    report = MirrorReport(f"{vg.name}/{lv_name}")
    for seg in lv.segments:
        if seg.type not in ("raid1", "mirror"):
            continue
        start = seg.start_extent * vg.extent_size
        length = seg.extent_count * vg.extent_size
        legs = segment_legs(ctx, lv, seg)
        readable = [g for g in legs if g.target is not None and (g.problem is None or g.in_sync is False)]
        for g in legs:
            if g not in readable:
                report.skipped[g.name] = g.problem or "unreadable"
        report.legs.extend(g.name for g in readable if g.name not in report.legs)
        if len(readable) < 2:
            continue
        readers = [ExtentReader(ExtentMap(start + length, _pad(start, g.mapper(start, length))), g.name)
                   for g in readable]
        try:
            diff = _compare(readers, start, start + length, block)
        finally:
            for r in readers:
                r.close()
        report.bytes_compared += length
        if diff is not None:
            report.first_difference = diff[0]
            report.differing_legs = (readable[0].name, readable[diff[1]].name)
            return report
    return report


def _pad(start: int, m: Mapper) -> list[Mapper]:
    """A leg mapper placed at ``start`` of an otherwise zero map (an ExtentMap starts at 0)."""
    return [FillMapper(0, start, Kind.ZERO), m] if start else [m]


def _compare(readers: list[ExtentReader], lo: int, hi: int, block: int) -> tuple[int, int] | None:
    """(first differing byte, index of the reader that differs from reader 0) or None."""
    for off in range(lo, hi, block):
        n = min(block, hi - off)
        ref = readers[0].pread(off, n)
        for i, r in enumerate(readers[1:], 1):
            other = r.pread(off, n)
            if other != ref:
                first = next(k for k in range(n) if ref[k] != other[k])
                return off + first, i
    return None
