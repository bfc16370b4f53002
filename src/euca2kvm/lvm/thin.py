# SPDX-License-Identifier: Apache-2.0
"""dm-thin: read a thin LV through the pool's persistent-data metadata (the ``_tmeta`` LV).

On-disk format (Linux ``drivers/md/dm-thin-metadata.c`` and ``persistent-data/dm-btree*``),
all little-endian, in 4 KiB metadata blocks:

* block 0, the superblock: ``csum u32 | flags u32 | blocknr u64 | uuid[16] | magic u64 (27022010)
  | version u32 | time u32 | trans_id u64 | held_root u64 | data/metadata space-map roots
  (2 x 128 B) | data_mapping_root u64 @320 | device_details_root u64 @328 | data_block_size u32
  (sectors) @336 | metadata_block_size u32 @340 | metadata_nr_blocks u64 @344 | feature flags``.
* btree nodes: ``csum u32 | flags u32 (1 internal, 2 leaf) | blocknr u64 | nr_entries u32 |
  max_entries u32 | value_size u32 | pad u32``, then ``max_entries`` u64 keys, then the values.
  Internal values are u64 child block numbers; key i is the lowest key of child i.
* data mapping: btree dev_id -> root of the device's btree; that btree maps virtual block ->
  ``data_block << 24 | time``. Unmapped blocks read as zeros.
* device details: btree dev_id -> ``mapped_blocks u64 | transaction_id u64 | creation_time u32
  | snapshotted_time u32``.
* checksums: ``crc32c(seed 0xffffffff, no final inversion)`` of the block from byte 4 on, xored
  with 160774 (superblock) or 121107 (btree node).

Only the committed state (what the superblock points at) is read. The metadata is refused when
the superblock or any node visited fails its checksum or location check, when ``needs_check`` is
set, or when the transaction ids disagree (see :class:`ThinMapper`).

Memory: nothing is loaded up front beyond the superblock and two root lookups. Each
``extents()`` call walks only the btree nodes covering the asked range, with a small LRU cache of
verified nodes, so a 2 TiB thin LV costs the same memory as a 2 MiB one.
"""

from __future__ import annotations

import bisect
import struct
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from ..errors import FormatError
from .extents import Extent, ExtentMap, Kind, merged, translate

META_BLOCK = 4096  # dm persistent-data metadata block size (fixed by the kernel)
SB_MAGIC = 27022010
SB_CSUM_XOR = 160774
BTREE_CSUM_XOR = 121107
SUPPORTED_VERSIONS = (1, 2)  # THIN_MIN_VERSION..THIN_MAX_VERSION in the kernel
NEEDS_CHECK = 1  # superblock flags bit 0: the kernel saw an error; thin_check must run first
INTERNAL_NODE, LEAF_NODE = 1, 2
NODE_HEADER = 32
# A btree of 4 KiB nodes has fan-out >= 126, so 2**64 keys need fewer than 10 levels; deeper
# means a corrupt or hostile tree.
MAX_DEPTH = 16
# Verified nodes kept per metadata object: 256 x 4 KiB = 1 MiB, enough for every path a
# sequential reader revisits.
NODE_CACHE = 256
TIME_BITS = 24  # low bits of a mapping value hold the snapshot time, the rest the data block
DETAILS_SIZE = 24


class ByteSource(Protocol):
    """What the readers need from an LV: ``size`` and ``pread`` (e.g. ``ExtentReader``)."""

    size: int

    def pread(self, offset: int, length: int) -> bytes: ...


def _make_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1  # reflected Castagnoli polynomial
        table.append(c)
    return table


_CRC_TABLE = _make_table()


def dm_checksum(data: bytes, xor: int) -> int:
    """``dm_bm_checksum``: crc32c seeded with ~0, not inverted at the end, xored with ``xor``."""
    crc = 0xFFFFFFFF
    t = _CRC_TABLE
    for b in data:
        crc = t[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ xor


@dataclass(frozen=True)
class Superblock:
    flags: int
    version: int
    time: int
    trans_id: int
    data_mapping_root: int
    device_details_root: int
    data_block_bytes: int
    metadata_nr_blocks: int


@dataclass(frozen=True)
class DeviceDetails:
    mapped_blocks: int
    transaction_id: int
    creation_time: int
    snapshotted_time: int


@dataclass(frozen=True)
class _Node:
    leaf: bool
    keys: list[int]
    values: list[bytes]


class ThinMetadata:
    """Verified, bounded access to the committed dm-thin metadata in ``src``."""

    def __init__(self, src: ByteSource, name: str = "thin pool metadata") -> None:
        self.src = src
        self.name = name
        self._cache: OrderedDict[int, _Node] = OrderedDict()
        self.sb = self._superblock()

    def _err(self, msg: str, block: int | None = None) -> FormatError:
        return FormatError(msg, self.name, None if block is None else block * META_BLOCK)

    def _block(self, nr: int) -> bytes:
        data = self.src.pread(nr * META_BLOCK, META_BLOCK)
        if len(data) != META_BLOCK:
            raise self._err(f"metadata block {nr} lies beyond the end of the metadata LV", nr)
        return data

    def _superblock(self) -> Superblock:
        if self.src.size < META_BLOCK:
            raise self._err(f"metadata LV of {self.src.size} bytes is too small for a superblock")
        b = self._block(0)
        csum, flags, blocknr = struct.unpack_from("<IIQ", b, 0)
        magic, version, time, trans_id = struct.unpack_from("<QIIQ", b, 32)
        if magic != SB_MAGIC:
            raise self._err(f"bad thin superblock magic {magic} (want {SB_MAGIC}): not dm-thin metadata", 0)
        if dm_checksum(b[4:], SB_CSUM_XOR) != csum:
            raise self._err("thin superblock checksum mismatch (corrupt or torn metadata)", 0)
        if blocknr != 0:
            raise self._err(f"thin superblock claims block {blocknr}, found at block 0", 0)
        if version not in SUPPORTED_VERSIONS:
            raise self._err(f"unsupported thin metadata version {version}", 0)
        if flags & NEEDS_CHECK:
            raise self._err("thin pool metadata has the needs_check flag set: the kernel saw an error; "
                            "repair a copy with thin_check/thin_repair before exporting", 0)
        mroot, droot = struct.unpack_from("<QQ", b, 320)
        dbs, mbs, nr_blocks = struct.unpack_from("<IIQ", b, 336)
        if mbs != META_BLOCK // 512:
            raise self._err(f"unsupported metadata block size {mbs} sectors", 0)
        if dbs == 0:
            raise self._err("thin data block size is 0", 0)
        if nr_blocks == 0 or nr_blocks * META_BLOCK > self.src.size:
            raise self._err(f"superblock says {nr_blocks} metadata blocks, the LV holds "
                            f"{self.src.size // META_BLOCK}", 0)
        for root in (mroot, droot):
            if not 0 < root < nr_blocks:
                raise self._err(f"btree root {root} outside the metadata device", 0)
        return Superblock(flags, version, time, trans_id, mroot, droot, dbs * 512, nr_blocks)

    def node(self, nr: int, value_size: int) -> _Node:
        """Btree node ``nr``, verified (checksum, location, shape, key order)."""
        cached = self._cache.get(nr)
        if cached is not None:
            self._cache.move_to_end(nr)
            return cached
        if not 0 < nr < self.sb.metadata_nr_blocks:
            raise self._err(f"btree node pointer {nr} outside the metadata device")
        b = self._block(nr)
        csum, flags, blocknr, n, cap, vsize = struct.unpack_from("<IIQIII", b, 0)
        if dm_checksum(b[4:], BTREE_CSUM_XOR) != csum:
            raise self._err(f"btree node {nr} checksum mismatch", nr)
        if blocknr != nr:
            raise self._err(f"btree node at block {nr} claims block {blocknr}", nr)
        if flags not in (INTERNAL_NODE, LEAF_NODE):
            raise self._err(f"btree node {nr} has bad flags {flags:#x}", nr)
        leaf = flags == LEAF_NODE
        want = value_size if leaf else 8
        if vsize != want:
            raise self._err(f"btree node {nr} value size {vsize}, expected {want}", nr)
        if n > cap or NODE_HEADER + cap * (8 + vsize) > META_BLOCK or (n == 0 and not leaf):
            raise self._err(f"btree node {nr} has {n} of {cap} entries: does not fit a block", nr)
        keys = list(struct.unpack_from(f"<{n}Q", b, NODE_HEADER))
        if any(a >= c for a, c in zip(keys, keys[1:], strict=False)):
            raise self._err(f"btree node {nr} keys are not strictly increasing", nr)
        vbase = NODE_HEADER + cap * 8
        values = [b[vbase + i * vsize : vbase + (i + 1) * vsize] for i in range(n)]
        node = _Node(leaf, keys, values)
        self._cache[nr] = node
        if len(self._cache) > NODE_CACHE:
            self._cache.popitem(last=False)
        return node

    def range(self, root: int, lo: int, hi: int, value_size: int) -> Iterator[tuple[int, bytes]]:
        """(key, value) for keys in [lo, hi), ascending. Refuses cycles, shared nodes within one
        tree, depth beyond MAX_DEPTH and child keys outside their parent's key interval."""
        seen: set[int] = set()
        stack: list[tuple[int, int, int | None, int]] = [(root, 0, None, 0)]  # node, key_lo, key_hi, depth
        while stack:
            nr, klo, khi, depth = stack.pop()
            if depth > MAX_DEPTH:
                raise self._err(f"btree deeper than {MAX_DEPTH} levels (corrupt or cyclic)", nr)
            if nr in seen:
                raise self._err(f"btree node {nr} reached twice within one tree (cycle)", nr)
            seen.add(nr)
            node = self.node(nr, value_size)
            if node.keys and (node.keys[0] < klo or (khi is not None and node.keys[-1] >= khi)):
                raise self._err(f"btree node {nr} keys lie outside the parent's key interval", nr)
            if node.leaf:
                i = bisect.bisect_left(node.keys, lo)
                while i < len(node.keys) and node.keys[i] < hi:
                    yield node.keys[i], node.values[i]
                    i += 1
                continue
            first = max(0, bisect.bisect_right(node.keys, lo) - 1)
            last = bisect.bisect_left(node.keys, hi)  # children [first, last) can hold keys < hi
            children = []
            for i in range(first, last):
                child_hi = node.keys[i + 1] if i + 1 < len(node.keys) else khi
                children.append((struct.unpack("<Q", node.values[i])[0], node.keys[i], child_hi, depth + 1))
            stack.extend(reversed(children))  # pop in ascending key order

    def lookup(self, root: int, key: int, value_size: int) -> bytes | None:
        for k, v in self.range(root, key, key + 1, value_size):
            if k == key:
                return v
        return None

    def device_root(self, dev_id: int) -> int | None:
        v = self.lookup(self.sb.data_mapping_root, dev_id, 8)
        return None if v is None else struct.unpack("<Q", v)[0]

    def device_details(self, dev_id: int) -> DeviceDetails | None:
        v = self.lookup(self.sb.device_details_root, dev_id, DETAILS_SIZE)
        return None if v is None else DeviceDetails(*struct.unpack("<QQII", v))


class ThinMapper:
    """A thin LV segment: virtual blocks of ``device_id`` mapped into the pool's data LV.

    ``chunk_bytes`` is the pool's ``chunk_size`` from the VG metadata and must equal the
    superblock's data block size. Transaction rule: LVM bumps the pool ``transaction_id`` in
    the VG metadata and sends the kernel a message for every thin create/delete; when both
    commit, the VG's id equals the superblock's ``trans_id``. If ``expected_transaction_id``
    (the VG's) is given and differs, one side is from another transaction (an interrupted lvm
    command: lvm itself would replay or refuse), so the metadata is refused as stale. A device
    whose details record a transaction newer than the superblock's is refused as corrupt.
    """

    def __init__(self, start: int, length: int, meta_reader: ByteSource, data_map: ExtentMap,
                 device_id: int, chunk_bytes: int, expected_transaction_id: int | None = None,
                 name: str = "thin pool metadata") -> None:
        self.start = start
        self.length = length
        self.data_map = data_map
        self.device_id = device_id
        self.chunk = chunk_bytes
        self.meta = ThinMetadata(meta_reader, name)
        sb = self.meta.sb
        if chunk_bytes != sb.data_block_bytes:
            raise FormatError(f"pool chunk size {chunk_bytes} bytes disagrees with the metadata's data "
                              f"block size {sb.data_block_bytes}", name, 0)
        if expected_transaction_id is not None and expected_transaction_id != sb.trans_id:
            raise FormatError(f"pool metadata is at transaction {sb.trans_id} but the VG metadata expects "
                              f"{expected_transaction_id}: stale or unfinished thin pool update", name, 0)
        details = self.meta.device_details(device_id)
        root = self.meta.device_root(device_id)
        if details is None or root is None:
            raise FormatError(f"thin device {device_id} is not in the pool metadata", name)
        if details.transaction_id > sb.trans_id:
            raise FormatError(f"thin device {device_id} claims transaction {details.transaction_id}, newer "
                              f"than the pool's {sb.trans_id}", name)
        self.details = details
        self.root = root
        self.data_blocks = data_map.size // chunk_bytes

    def extents(self, lo: int, hi: int) -> Iterator[Extent]:
        return merged(self._parts(lo, hi))

    def _parts(self, lo: int, hi: int) -> Iterator[Extent]:
        c = self.chunk
        pos, end = lo - self.start, hi - self.start
        for vblock, value in self.meta.range(self.root, pos // c, -(-end // c), 8):
            data_block = struct.unpack("<Q", value)[0] >> TIME_BITS
            if data_block >= self.data_blocks:
                raise FormatError(f"thin device {self.device_id} block {vblock} maps to data block "
                                  f"{data_block}, beyond the pool's {self.data_blocks}", self.meta.name)
            vstart = vblock * c
            if vstart > pos:
                yield Extent(self.start + pos, vstart - pos, Kind.ZERO)
                pos = vstart
            seg_hi = min(end, vstart + c)
            inner_lo = data_block * c + (pos - vstart)
            yield from translate(self.data_map, inner_lo, seg_hi - pos, self.start + pos)
            pos = seg_hi
        if pos < end:
            yield Extent(self.start + pos, end - pos, Kind.ZERO)

    def paths(self) -> set[str]:
        return self.data_map.paths()

    def kinds(self) -> frozenset[Kind]:
        return self.data_map.kinds() | {Kind.ZERO}  # unprovisioned blocks read as zeros

    def describe(self) -> dict[str, object]:
        return {"type": "thin", "start": self.start, "length": self.length, "device_id": self.device_id,
                "chunk_size": self.chunk, "transaction_id": self.meta.sb.trans_id,
                "mapped_blocks": self.details.mapped_blocks, "data": self.data_map.describe()}
