# SPDX-License-Identifier: Apache-2.0
"""LV segments -> extent map.

Each segment type has a resolver in :data:`RESOLVERS`; a type without one is refused for that
LV only, naming the type. Areas of a segment name a PV (bytes of a file) or another LV of the
same VG (stacked layouts: raid images, thin-pool data), which is resolved recursively.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import FormatError, UnsupportedError
from .device import Device
from .extents import ExtentMap, FillMapper, Kind, LinearMapper, Mapper, ShiftedMapper, StripedMapper
from .model import LV, VG, Segment
from .segparams import where as segment_name

MAX_STACK_DEPTH = 8  # thin on raid on striped is 3 levels; deeper is a loop or garbage

# Type flags ("striped+FLAG") a resolver may ignore because they do not change where data lives.
HARMLESS_FLAGS: frozenset[str] = frozenset()


@dataclass
class Context:
    vg: VG
    devices: dict[str, Device | None]  # PV name -> device (None = missing or ambiguous)
    missing_reason: dict[str, str]
    depth: int = 0
    _cache: dict[str, ExtentMap] | None = None

    def lv_map(self, name: str) -> ExtentMap:
        """Extent map of LV ``name`` of this VG (hidden sub-LVs included)."""
        if self._cache is None:
            self._cache = {}
        if name in self._cache:
            return self._cache[name]
        lv = self.vg.lvs.get(name)
        if lv is None:
            raise FormatError(f"VG {self.vg.name}: segment refers to unknown LV {name!r}")
        if self.depth >= MAX_STACK_DEPTH:
            raise FormatError(f"VG {self.vg.name}: LV {name} is stacked more than {MAX_STACK_DEPTH} deep "
                              "(a loop in the metadata?)")
        self.depth += 1
        try:
            emap = resolve_lv(self, lv)
        finally:
            self.depth -= 1
        self._cache[name] = emap
        return emap


Resolver = Callable[[Context, LV, Segment, int], Mapper]
RESOLVERS: dict[str, Resolver] = {}


def resolver(*types: str) -> Callable[[Resolver], Resolver]:
    def deco(fn: Resolver) -> Resolver:
        for t in types:
            RESOLVERS[t] = fn
        return fn
    return deco


def resolve_lv(ctx: Context, lv: LV) -> ExtentMap:
    vg = ctx.vg
    mappers: list[Mapper] = []
    for seg in lv.segments:
        fn = RESOLVERS.get(seg.type)
        if fn is None:
            raise UnsupportedError(f"LV {vg.name}/{lv.name}: segment type {seg.type!r} is not supported "
                                   f"(segment{seg.index})")
        unknown = [f for f in seg.flags if f not in HARMLESS_FLAGS]
        if unknown:
            raise UnsupportedError(f"LV {vg.name}/{lv.name}: segment type flag(s) {'+'.join(unknown)} on "
                                   f"{seg.type!r} are not supported (segment{seg.index})")
        mappers.append(fn(ctx, lv, seg, seg.start_extent * vg.extent_size))
    return ExtentMap(vg.lv_size(lv), mappers)


def area_target(ctx: Context, lv: LV, seg: Segment, name: str, start_pe: int,
                length: int) -> tuple[Device, int] | ExtentMap:
    """Where an area's bytes live: (device, absolute byte offset) for a PV, or an LV's map."""
    vg = ctx.vg
    where = segment_name(vg, lv, seg)
    if name in vg.pvs:
        pv = vg.pvs[name]
        dev = ctx.devices.get(name)
        if dev is None:
            why = ctx.missing_reason.get(name, "not found among the sources")
            raise FormatError(f"{where} needs PV {name} (uuid {pv.id}), which is missing: {why}")
        extents = length // vg.extent_size
        if start_pe + extents > pv.pe_count:
            raise FormatError(f"{where}: extents {start_pe}..{start_pe + extents - 1} beyond PV {name}'s "
                              f"{pv.pe_count} extents")
        offset = pv.pe_start + start_pe * vg.extent_size
        if offset + length > dev.size:
            raise FormatError(f"{where}: data runs to byte {offset + length} but the file ends at "
                              f"{dev.size} (truncated container?)", dev.path, dev.base + dev.size)
        return dev, dev.base + offset
    if name in vg.lvs:
        inner = ctx.lv_map(name)
        base = start_pe * vg.extent_size
        if base + length > inner.size:
            raise FormatError(f"{where}: area beyond the end of sub-LV {name}")
        return inner
    raise FormatError(f"{where}: area refers to unknown PV or LV {name!r}")


def _areas(ctx: Context, lv: LV, seg: Segment) -> list[tuple[str, int]]:
    raw = seg.param("stripes")
    where = segment_name(ctx.vg, lv, seg)
    if not isinstance(raw, list) or len(raw) % 2 or not raw:
        raise FormatError(f"{where}: stripes must be a list of (name, extent) pairs, found {raw!r}")
    out: list[tuple[str, int]] = []
    for i in range(0, len(raw), 2):
        name, pe = raw[i], raw[i + 1]
        if not isinstance(name, str) or not isinstance(pe, int) or pe < 0:
            raise FormatError(f"{where}: bad stripe area {name!r}, {pe!r}")
        out.append((name, pe))
    return out


@resolver("striped", "linear")
def _striped(ctx: Context, lv: LV, seg: Segment, start: int) -> Mapper:
    vg = ctx.vg
    where = segment_name(vg, lv, seg)
    areas = _areas(ctx, lv, seg)
    count = seg.param("stripe_count")
    if count is None:
        count = len(areas)
    if not isinstance(count, int) or count != len(areas):
        raise FormatError(f"{where}: stripe_count {count!r} does not match {len(areas)} areas")
    if seg.extent_count % count:
        raise FormatError(f"{where}: {seg.extent_count} extents do not divide into {count} stripes")
    length = seg.extent_count * vg.extent_size
    area_len = length // count
    targets = [area_target(ctx, lv, seg, name, pe, area_len) for name, pe in areas]
    if count == 1:
        t = targets[0]
        if isinstance(t, ExtentMap):
            return ShiftedMapper(start, length, t, areas[0][1] * vg.extent_size)
        return LinearMapper(start, length, t[0].path, t[1])
    stripe_size = seg.param("stripe_size")
    if not isinstance(stripe_size, int) or stripe_size <= 0 or stripe_size > (1 << 31):
        raise FormatError(f"{where}: invalid stripe_size {stripe_size!r}")
    chunk = stripe_size * 512
    if area_len % chunk:
        raise UnsupportedError(f"{where}: stripe area of {area_len} bytes is not a multiple of the "
                               f"{chunk} byte stripe size")
    direct: list[tuple[str, int]] = []
    for t in targets:
        if isinstance(t, ExtentMap):
            raise UnsupportedError(f"{where}: striping over sub-LVs is not supported")
        direct.append((t[0].path, t[1]))
    return StripedMapper(start, length, chunk, tuple(direct))


@resolver("zero")
def _zero(ctx: Context, lv: LV, seg: Segment, start: int) -> Mapper:
    return FillMapper(start, seg.extent_count * ctx.vg.extent_size, Kind.ZERO)


@resolver("error")
def _error(ctx: Context, lv: LV, seg: Segment, start: int) -> Mapper:
    return FillMapper(start, seg.extent_count * ctx.vg.extent_size, Kind.ERROR)
