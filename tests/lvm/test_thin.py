# SPDX-License-Identifier: Apache-2.0
"""dm-thin reader against ground truth from the real kernel (tests/data/dm, see its README).

LV byte ranges come from the layout lvm itself reported inside the guest (truth.json), so these
tests do not depend on the project's VG metadata reader.
"""

from __future__ import annotations

import random
import struct
from typing import TYPE_CHECKING

import pytest

from euca2kvm.errors import FormatError
from euca2kvm.lvm.extents import ExtentMap, Kind, LinearMapper
from euca2kvm.lvm.reader import ExtentReader
from euca2kvm.lvm.thin import BTREE_CSUM_XOR, META_BLOCK, SB_CSUM_XOR, ThinMapper, ThinMetadata, dm_checksum

if TYPE_CHECKING:
    from conftest import DmFixtures  # tests/lvm/conftest.py

MIB = 1 << 20
READ = 3 * MIB + 4096 + 512  # odd read size: exercises ranges that split thin chunks


def thin(fx: DmFixtures, lv: str, meta: object = None, **kw: object) -> ThinMapper:
    info = fx.lv(lv)
    pool = fx.lv("vgthin/" + info["pool_lv"])
    args: dict[str, object] = {"expected_transaction_id": pool["transaction_id"]}
    args.update(kw)
    return ThinMapper(0, info["size"], meta or ExtentReader(fx.lv_map("vgthin/pool_tmeta")),
                      fx.lv_map("vgthin/pool_tdata"), info["thin_id"], pool["segments"][0]["chunk_size"],
                      **args)  # type: ignore[arg-type]


def tmeta_bytes(fx: DmFixtures) -> bytearray:
    with ExtentReader(fx.lv_map("vgthin/pool_tmeta")) as r:
        return bytearray(r.pread(0, r.size))


def reseal(buf: bytearray, block: int, xor: int) -> None:
    b = block * META_BLOCK
    struct.pack_into("<I", buf, b, dm_checksum(bytes(buf[b + 4 : b + META_BLOCK]), xor))


def test_checksum_is_crc32c_without_final_inversion() -> None:
    assert dm_checksum(b"123456789", 0) == 0xE3069283 ^ 0xFFFFFFFF  # CRC-32C check value


@pytest.mark.parametrize("lv", ["vgthin/thin1", "vgthin/thin2", "vgthin/snap1"])
def test_thin_lv_matches_kernel(fx: DmFixtures, lv: str) -> None:
    info = fx.lv(lv)
    m = thin(fx, lv)
    emap = ExtentMap(info["size"], [m])
    assert info["kernel_size"] == info["size"]
    assert fx.sha(emap, READ) == info["sha256"]
    assert fx.sha(emap, 32 * MIB) == info["sha256"]
    ext = list(emap.extents())
    assert {e.kind for e in ext} == {Kind.DATA, Kind.ZERO}
    assert sum(e.length for e in ext) == info["size"]
    for a, b in zip(ext, ext[1:], strict=False):  # neighbours are merged
        assert a.end == b.start
        assert not (a.kind is b.kind and (a.kind is Kind.ZERO or (a.path == b.path and a.offset + a.length
                                                                    == b.offset)))


def test_snapshot_and_origin_differ_as_in_kernel(fx: DmFixtures) -> None:
    assert fx.lv("vgthin/thin1")["sha256"] != fx.lv("vgthin/snap1")["sha256"]
    a = list(ExtentMap(32 * MIB, [thin(fx, "vgthin/thin1")]).extents())
    b = list(ExtentMap(32 * MIB, [thin(fx, "vgthin/snap1")]).extents())
    assert a != b


def test_random_subranges_equal_whole_read(fx: DmFixtures) -> None:
    emap = ExtentMap(32 * MIB, [thin(fx, "vgthin/thin1")])
    with ExtentReader(emap) as r:
        whole = r.pread(0, emap.size)
        rnd = random.Random(1)
        for _ in range(200):
            lo = rnd.randrange(emap.size)
            n = rnd.randrange(1, 300_000)
            assert r.pread(lo, n) == whole[lo : lo + n]


def test_superblock_fields(fx: DmFixtures) -> None:
    md = ThinMetadata(ExtentReader(fx.lv_map("vgthin/pool_tmeta")))
    assert md.sb.data_block_bytes == 64 << 10
    assert md.sb.trans_id == fx.lv("vgthin/pool")["transaction_id"]
    assert md.sb.metadata_nr_blocks * META_BLOCK == 4 * MIB


def test_flipped_superblock_byte_is_refused(fx: DmFixtures) -> None:
    buf = tmeta_bytes(fx)
    buf[333] ^= 0x01
    with pytest.raises(FormatError, match="checksum"):
        thin(fx, "vgthin/thin1", fx.mem(buf))


def test_bad_magic_and_needs_check_are_refused(fx: DmFixtures) -> None:
    buf = tmeta_bytes(fx)
    buf[32] ^= 0xFF
    with pytest.raises(FormatError, match="magic"):
        ThinMetadata(fx.mem(buf))
    buf = tmeta_bytes(fx)
    buf[4] |= 1
    reseal(buf, 0, SB_CSUM_XOR)
    with pytest.raises(FormatError, match="needs_check"):
        ThinMetadata(fx.mem(buf))


def test_transaction_and_chunk_mismatch_are_refused(fx: DmFixtures) -> None:
    with pytest.raises(FormatError, match="transaction"):
        thin(fx, "vgthin/thin1", expected_transaction_id=2)
    info = fx.lv("vgthin/thin1")
    with pytest.raises(FormatError, match="chunk size"):
        ThinMapper(0, info["size"], ExtentReader(fx.lv_map("vgthin/pool_tmeta")),
                   fx.lv_map("vgthin/pool_tdata"), 1, 128 << 10)
    with pytest.raises(FormatError, match="not in the pool"):
        ThinMapper(0, info["size"], ExtentReader(fx.lv_map("vgthin/pool_tmeta")),
                   fx.lv_map("vgthin/pool_tdata"), 77, 64 << 10)


def test_data_block_beyond_pool_is_refused(fx: DmFixtures) -> None:
    small = ExtentMap(MIB, [LinearMapper(0, MIB, "/nonexistent", 0)])
    m = ThinMapper(0, 32 * MIB, ExtentReader(fx.lv_map("vgthin/pool_tmeta")), small, 1, 64 << 10)
    with pytest.raises(FormatError, match="beyond the pool"):
        list(m.extents(0, 32 * MIB))


def _device_root(fx: DmFixtures, buf: bytearray, dev: int) -> int:
    return ThinMetadata(fx.mem(buf)).device_root(dev) or 0


def test_flipped_btree_byte_is_refused(fx: DmFixtures) -> None:
    buf = tmeta_bytes(fx)
    root = _device_root(fx, buf, 1)
    buf[root * META_BLOCK + 40] ^= 0x80
    m = thin(fx, "vgthin/thin1", fx.mem(buf))
    with pytest.raises(FormatError, match=f"node {root} checksum"):
        list(m.extents(0, m.length))


def test_btree_cycle_is_refused_not_a_hang(fx: DmFixtures) -> None:
    buf = tmeta_bytes(fx)
    root = _device_root(fx, buf, 1)
    b = root * META_BLOCK
    cap = struct.unpack_from("<I", buf, b + 20)[0]
    # Turn the device's root leaf into an internal node whose only child is itself.
    struct.pack_into("<IIQIII", buf, b, 0, 1, root, 1, cap, 8)
    struct.pack_into("<Q", buf, b + 32, 0)
    struct.pack_into("<Q", buf, b + 32 + cap * 8, root)
    reseal(buf, root, BTREE_CSUM_XOR)
    m = thin(fx, "vgthin/thin1", fx.mem(buf))
    with pytest.raises(FormatError, match="twice|deeper"):
        list(m.extents(0, m.length))


def test_child_keys_outside_parent_interval_are_refused(fx: DmFixtures) -> None:
    buf = tmeta_bytes(fx)
    root = _device_root(fx, buf, 1)
    # A new internal root in an unused block, claiming its only child starts at key 20
    # (the child leaf starts at block 16: 1 MiB / 64 KiB).
    free = ThinMetadata(fx.mem(buf)).sb.metadata_nr_blocks - 1
    assert buf[free * META_BLOCK : (free + 1) * META_BLOCK].count(0) == META_BLOCK
    b = free * META_BLOCK
    cap = 126
    struct.pack_into("<IIQIII", buf, b, 0, 1, free, 1, cap, 8)
    struct.pack_into("<Q", buf, b + 32, 20)
    struct.pack_into("<Q", buf, b + 32 + cap * 8, root)
    reseal(buf, free, BTREE_CSUM_XOR)
    info = fx.lv("vgthin/thin1")
    m = thin(fx, "vgthin/thin1", fx.mem(buf))
    m.root = free
    with pytest.raises(FormatError, match="outside the parent"):
        list(m.extents(0, info["size"]))
