# SPDX-License-Identifier: Apache-2.0
"""Resolvers for the stacked LVM segment types, and the refusals for the ones not read.

Importing this module registers, in :data:`euca2kvm.lvm.resolve.RESOLVERS`:

* ``raid1`` and ``mirror``: one in-sync leg (see :mod:`.mirrors`), ``data_offset`` honoured;
* ``raid0``/``raid0_meta``: md raid0 over equal images is dm-stripe over the images;
* ``thin``: :class:`.thin.ThinMapper` over the pool's ``_tmeta``/``_tdata``; ``thin-pool``
  itself is refused (a pool is not a disk);
* ``snapshot`` (classic COW): :class:`.cow.CowSnapshotMapper` over origin + COW store;
* refusals naming the type and the risk: cache, cache-pool, writecache, vdo, vdo-pool,
  integrity, raid4/5/6/10.

How lvm2 stores a classic snapshot: the user's snapshot name (``lvcreate -s -n csnap``) is the
COW store LV, a plain linear LV without the ``VISIBLE`` flag; a hidden ``snapshotN`` LV carries
the ``VISIBLE`` flag and the ``snapshot`` segment (``origin``, ``cow_store``, ``chunk_size``).
lvm2 shows the COW LV as the snapshot (``lv_is_visible``). :func:`user_target` maps a name the
user sees to the LV whose extent map is that view, and :func:`user_visible` is lvm2's
visibility rule.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import FormatError, UnsupportedError
from ..units import SECTOR
from .cow import CowSnapshotMapper
from .extents import Extent, ExtentMap, Kind, Mapper, merged, translate
from .mirrors import pick_leg, raid_pairs
from .model import LV, VG, Segment
from .reader import ExtentReader
from .resolve import Context, resolver
from .segparams import seg_int, where
from .thin import ThinMapper

MAX_STRIPE_SECTORS = 1 << 31  # same bound as resolve.py's striped reader
MAX_THIN_CHUNK_SECTORS = 2097152  # 1 GiB: dm-thin's DATA_DEV_BLOCK_SIZE_MAX_SECTORS


@resolver("raid1", "mirror")
def _mirrored(ctx: Context, lv: LV, seg: Segment, start: int) -> Mapper:
    leg, _legs = pick_leg(ctx, lv, seg)
    return leg.mapper(start, seg.extent_count * ctx.vg.extent_size)


@dataclass(frozen=True)
class StripedLVMapper:
    """dm-stripe / md raid0 over sub-LV maps: chunk c lives in image c % N at row c // N."""

    start: int
    length: int
    chunk: int
    images: tuple[ExtentMap, ...]
    base: int = 0  # data_offset inside every image

    def extents(self, lo: int, hi: int) -> Iterator[Extent]:
        return merged(self._parts(lo, hi))

    def _parts(self, lo: int, hi: int) -> Iterator[Extent]:
        n, s = len(self.images), self.chunk
        b, end = lo - self.start, hi - self.start
        while b < end:
            c, within = divmod(b, s)
            take = min(s - within, end - b)
            yield from translate(self.images[c % n], self.base + (c // n) * s + within, take, self.start + b)
            b += take

    def paths(self) -> set[str]:
        return set().union(*(m.paths() for m in self.images))

    def kinds(self) -> frozenset[Kind]:
        return frozenset().union(*(m.kinds() for m in self.images))

    def describe(self) -> dict[str, object]:
        return {"type": "raid0", "start": self.start, "length": self.length, "stripe_size": self.chunk,
                "data_offset": self.base, "images": [m.describe() for m in self.images]}


@resolver("raid0", "raid0_meta")
def _raid0(ctx: Context, lv: LV, seg: Segment, start: int) -> Mapper:
    vg = ctx.vg
    w = where(vg, lv, seg)
    pairs = raid_pairs(vg, lv, seg, "raid0_lvs" if seg.type == "raid0" else "raids")
    count = seg_int(vg, lv, seg, "stripe_count", hi=len(pairs))
    if count != len(pairs):
        raise FormatError(f"{w}: stripe_count {count} but {len(pairs)} images listed")
    length = seg.extent_count * vg.extent_size
    if seg.extent_count % count:
        raise FormatError(f"{w}: {seg.extent_count} extents do not divide into {count} images")
    area = length // count
    chunk = seg_int(vg, lv, seg, "stripe_size", hi=MAX_STRIPE_SECTORS) * SECTOR
    if count > 1 and (chunk == 0 or area % chunk):
        raise UnsupportedError(f"{w}: image area of {area} bytes is not a multiple of the {chunk} byte "
                               "stripe size")
    base = seg_int(vg, lv, seg, "data_offset", default=0) * SECTOR
    images = tuple(ctx.lv_map(img) for _meta, img in pairs)
    for (_meta, img), m in zip(pairs, images, strict=True):
        if base + area > m.size:
            raise FormatError(f"{w}: image {img} of {m.size} bytes is too small for the segment")
    return StripedLVMapper(start, length, chunk or area, images, base)


def _closing_reader(emap: ExtentMap, name: str) -> ExtentReader:
    """A reader that holds no descriptor between reads: mappers live as long as their VG view, and an
    open descriptor would make the container look in use (and leak)."""
    return ExtentReader(emap, name, keep_open=False)


def _pool_of(ctx: Context, lv: LV, seg: Segment) -> tuple[LV, Segment]:
    vg = ctx.vg
    name = seg.param("thin_pool")
    pool = vg.lvs.get(name) if isinstance(name, str) else None
    if pool is None:
        raise FormatError(f"{where(vg, lv, seg)}: thin_pool {name!r} is not an LV of the VG")
    psegs = [s for s in pool.segments if s.type == "thin-pool"]
    if len(pool.segments) != 1 or len(psegs) != 1:
        raise UnsupportedError(f"LV {vg.name}/{lv.name}: pool {pool.name} is not a single thin-pool segment "
                               f"({', '.join(pool.segment_types)})")
    return pool, psegs[0]


@resolver("thin")
def _thin(ctx: Context, lv: LV, seg: Segment, start: int) -> Mapper:
    vg = ctx.vg
    w = where(vg, lv, seg)
    ext = seg.param("external_origin")
    if ext is not None:
        raise UnsupportedError(f"LV {vg.name}/{lv.name} is a thin volume with external origin {ext!r}: its "
                               "unprovisioned blocks read from that LV; not supported")
    merge = seg.param("merge")
    if merge is not None:
        raise UnsupportedError(f"LV {vg.name}/{lv.name}: a merge of thin snapshot {merge!r} into it is "
                               "pending (lvconvert --merge); activate it with lvm to finish the merge first")
    pool, pseg = _pool_of(ctx, lv, seg)
    pw = where(vg, pool, pseg)
    meta, data = pseg.param("metadata"), pseg.param("pool")
    if not isinstance(meta, str) or not isinstance(data, str):
        raise FormatError(f"{pw}: metadata/pool must name the _tmeta and _tdata LVs, found {meta!r}, "
                          f"{data!r}")
    chunk = seg_int(vg, pool, pseg, "chunk_size", hi=MAX_THIN_CHUNK_SECTORS) * SECTOR
    trans = seg_int(vg, pool, pseg, "transaction_id", hi=(1 << 64) - 1)
    dev_id = seg_int(vg, lv, seg, "device_id", hi=(1 << 24) - 1)  # dm-thin device ids are 24 bits
    if chunk == 0:
        raise FormatError(f"{pw}: chunk_size is 0")
    meta_map, data_map = ctx.lv_map(meta), ctx.lv_map(data)
    try:
        return ThinMapper(start, seg.extent_count * vg.extent_size,
                          _closing_reader(meta_map, f"{vg.name}/{meta}"), data_map, dev_id, chunk,
                          expected_transaction_id=trans, name=f"{vg.name}/{meta}")
    except FormatError as e:
        raise type(e)(f"{w}: thin pool {pool.name}: {e}") from e


@resolver("thin-pool")
def _thin_pool(ctx: Context, lv: LV, seg: Segment, start: int) -> Mapper:
    vols = sorted(t.name for t in ctx.vg.referrers("thin", "thin_pool", lv.name))
    which = f" ({', '.join(vols)})" if vols else " (it has none)"
    raise UnsupportedError(f"LV {ctx.vg.name}/{lv.name} is a thin pool: a thin pool is not a disk; "
                           f"export its thin volumes{which}")


@resolver("snapshot")
def _snapshot(ctx: Context, lv: LV, seg: Segment, start: int) -> Mapper:
    vg = ctx.vg
    w = where(vg, lv, seg)
    origin, cow, merging = seg.param("origin"), seg.param("cow_store"), seg.param("merging_store")
    if isinstance(merging, str):
        raise UnsupportedError(f"LV {vg.name}/{merging}: snapshot of {origin} is being merged back into it "
                               "(lvconvert --merge not finished): neither has a stable content; let lvm "
                               f"finish the merge, then export {origin}")
    if not isinstance(origin, str) or origin not in vg.lvs or not isinstance(cow, str) or cow not in vg.lvs:
        raise FormatError(f"{w}: origin {origin!r} / cow_store {cow!r} must name LVs of the VG")
    chunk = seg_int(vg, lv, seg, "chunk_size", hi=1 << 20) * SECTOR
    origin_map, cow_map = ctx.lv_map(origin), ctx.lv_map(cow)
    with ExtentReader(cow_map, f"{vg.name}/{cow}") as r:
        try:
            return CowSnapshotMapper(start, seg.extent_count * vg.extent_size, origin_map, r, cow_map, chunk,
                                     f"{vg.name}/{cow}")
        except FormatError as e:
            at = f" (COW store byte {e.offset})" if e.offset else ""
            raise type(e)(f"LV {vg.name}/{cow}: snapshot of {origin}: {e.reason}{at}") from e


_CACHE_RISK = ("a writeback cache can hold dirty blocks that exist only in the cache, so the origin alone "
               "may be stale; euca2kvm always refuses cached LVs (it does not read the cache metadata to "
               "prove them clean)")
_REFUSALS: dict[str, str] = {
    "cache": f"is cached (dm-cache): {_CACHE_RISK}; run 'lvconvert --uncache' with lvm, then export",
    "writecache": f"has a writecache (dm-writecache): {_CACHE_RISK}; run 'lvconvert --splitcache' with lvm, "
                  "then export",
    "cache-pool": "is a cache pool: not a disk (export the LV it caches, once uncached)",
    "vdo": "is a VDO volume (deduplicated and compressed): its blocks live in the VDO index; not supported",
    "vdo-pool": "is a VDO pool: not a disk, and VDO is not supported",
    "integrity": "has a dm-integrity layer: newer data may sit in its journal; not supported",
}
_RAID_LEVELS = ("raid4", "raid5", "raid5_n", "raid5_la", "raid5_ra", "raid5_ls", "raid5_rs", "raid6",
                "raid6_zr", "raid6_nr", "raid6_nc", "raid6_n_6", "raid6_la_6", "raid6_ra_6", "raid6_ls_6",
                "raid6_rs_6", "raid10", "raid10_near", "raid10_far", "raid10_offset")


def _refuser(ctx: Context, lv: LV, seg: Segment, start: int) -> Mapper:
    why = _REFUSALS.get(seg.type) or (f"is {seg.type} (parity or striped-mirror RAID): not supported; only "
                                      "linear, striped, raid0, raid1, mirror, thin and snapshot LVs are read")
    raise UnsupportedError(f"LV {ctx.vg.name}/{lv.name} segment{seg.index} ({seg.type!r}) {why}")


resolver(*_REFUSALS, *_RAID_LEVELS)(_refuser)


def snapshot_of_cow(vg: VG, cow: str) -> LV | None:
    """The hidden ``snapshotN`` LV whose COW store (or merging store) is LV ``cow``."""
    cands = vg.referrers("snapshot", "cow_store", cow) + vg.referrers("snapshot", "merging_store", cow)
    if len(cands) < 2:
        return cands[0] if cands else None
    return min(cands, key=lambda lv: vg.position[lv.name])  # the first in metadata order


def user_visible(vg: VG, lv: LV) -> bool:
    """lvm2's ``lv_is_visible``: ``snapshotN`` never, a COW store as its origin, else ``VISIBLE``."""
    if any(s.type == "snapshot" for s in lv.segments):
        return False
    snap = snapshot_of_cow(vg, lv.name)
    if snap is None:
        return lv.visible
    seg = snap.segments[0]
    if seg.param("merging_store") == lv.name:
        return False
    origin = vg.lvs.get(str(seg.param("origin")))
    if origin is None:
        return False
    if all(s.type == "zero" for s in origin.segments):
        return True  # virtual origin (lvcreate -s --virtualsize): the snapshot is the volume
    return origin.visible


def user_target(vg: VG, name: str) -> str:
    """The LV whose map is what the user means by ``name``: the snapshot view for a COW store.

    Refuses an origin with a snapshot merging into it (its blocks are half merged on disk).
    """
    snap = snapshot_of_cow(vg, name)
    if snap is not None:
        return snap.name
    for lv in vg.referrers("snapshot", "origin", name):
        for s in lv.segments:
            merging = s.param("merging_store")
            if s.type == "snapshot" and s.param("origin") == name and isinstance(merging, str):
                raise UnsupportedError(f"LV {vg.name}/{name}: snapshot {merging} is being merged into it "
                                       "(lvconvert --merge not finished): its blocks are half merged on "
                                       "disk; let lvm finish the merge, then export it")
    return name
