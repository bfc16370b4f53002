# SPDX-License-Identifier: Apache-2.0
"""dm-thin reader against ground truth from the real kernel (tests/data/dm, see its README).

LV byte ranges come from the layout lvm itself reported inside the guest (truth.json), so these
tests do not depend on the project's VG metadata reader.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import random
import struct
from pathlib import Path

import pytest

from euca2kvm.errors import FormatError
from euca2kvm.lvm.extents import ExtentMap, Kind, LinearMapper
from euca2kvm.lvm.reader import ExtentReader
from euca2kvm.lvm.thin import BTREE_CSUM_XOR, META_BLOCK, SB_CSUM_XOR, ThinMapper, ThinMetadata, dm_checksum

DATA = Path(__file__).resolve().parent.parent / "data" / "dm"
MIB = 1 << 20
READ = 3 * MIB + 4096 + 512  # odd read size: exercises ranges that split thin chunks


def unpack(src: Path, dst: Path) -> None:
    """xz -> sparse file (zero 64 KiB runs become holes)."""
    with lzma.open(src) as fi, dst.open("wb") as fo:
        while chunk := fi.read(64 << 10):
            if chunk.count(0) == len(chunk):
                fo.seek(len(chunk), 1)
            else:
                fo.write(chunk)
        fo.truncate()


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    truth = json.loads((DATA / "truth.json").read_text())
    d = tmp_path_factory.mktemp("dm")
    for name, c in truth["containers"].items():
        unpack(DATA / c["xz"], d / name)
        assert (d / name).stat().st_size == c["size"]
    return {"truth": truth, "dir": d}


def lv_map(fx: dict[str, object], lv: str) -> ExtentMap:
    """ExtentMap of a linear LV from lvm's own segment report (pe_start + PE ranges)."""
    truth = fx["truth"]
    assert isinstance(truth, dict)
    info = truth["lvs"][lv]
    mappers = []
    for seg in info["segments"]:
        assert seg["type"] == "linear" and len(seg["pe_ranges"]) == 1
        r = seg["pe_ranges"][0]
        off = truth["pvs"][r["pv"]]["pe_start"] + r["first"] * info["extent_size"]
        mappers.append(LinearMapper(seg["start"], seg["size"], str(fx["dir"] / r["pv"]), off))
    return ExtentMap(info["size"], mappers)


class Mem:
    """An in-memory LV (for corrupted copies of the metadata)."""

    def __init__(self, data: bytes | bytearray) -> None:
        self.data = bytes(data)
        self.size = len(self.data)

    def pread(self, offset: int, length: int) -> bytes:
        return self.data[offset : offset + length]


def thin(fx: dict[str, object], lv: str, meta: object = None, **kw: object) -> ThinMapper:
    truth = fx["truth"]
    assert isinstance(truth, dict)
    info = truth["lvs"][lv]
    pool = truth["lvs"]["vgthin/" + info["pool_lv"]]
    args: dict[str, object] = {"expected_transaction_id": pool["transaction_id"]}
    args.update(kw)
    return ThinMapper(0, info["size"], meta or ExtentReader(lv_map(fx, "vgthin/pool_tmeta")),
                      lv_map(fx, "vgthin/pool_tdata"), info["thin_id"], pool["segments"][0]["chunk_size"],
                      **args)  # type: ignore[arg-type]


def sha(emap: ExtentMap, step: int = READ) -> str:
    h = hashlib.sha256()
    with ExtentReader(emap) as r:
        for off in range(0, emap.size, step):
            h.update(r.pread(off, min(step, emap.size - off)))
    return h.hexdigest()


def tmeta_bytes(fx: dict[str, object]) -> bytearray:
    with ExtentReader(lv_map(fx, "vgthin/pool_tmeta")) as r:
        return bytearray(r.pread(0, r.size))


def reseal(buf: bytearray, block: int, xor: int) -> None:
    b = block * META_BLOCK
    struct.pack_into("<I", buf, b, dm_checksum(bytes(buf[b + 4 : b + META_BLOCK]), xor))


def test_checksum_is_crc32c_without_final_inversion() -> None:
    assert dm_checksum(b"123456789", 0) == 0xE3069283 ^ 0xFFFFFFFF  # CRC-32C check value


@pytest.mark.parametrize("lv", ["vgthin/thin1", "vgthin/thin2", "vgthin/snap1"])
def test_thin_lv_matches_kernel(fx: dict[str, object], lv: str) -> None:
    info = fx["truth"]["lvs"][lv]  # type: ignore[index]
    m = thin(fx, lv)
    emap = ExtentMap(info["size"], [m])
    assert info["kernel_size"] == info["size"]
    assert sha(emap) == info["sha256"]
    assert sha(emap, 32 * MIB) == info["sha256"]
    ext = list(emap.extents())
    assert {e.kind for e in ext} == {Kind.DATA, Kind.ZERO}
    assert sum(e.length for e in ext) == info["size"]
    for a, b in zip(ext, ext[1:], strict=False):  # neighbours are merged
        assert a.end == b.start
        assert not (a.kind is b.kind and (a.kind is Kind.ZERO or (a.path == b.path and a.offset + a.length
                                                                    == b.offset)))


def test_snapshot_and_origin_differ_as_in_kernel(fx: dict[str, object]) -> None:
    lvs = fx["truth"]["lvs"]  # type: ignore[index]
    assert lvs["vgthin/thin1"]["sha256"] != lvs["vgthin/snap1"]["sha256"]
    a = list(ExtentMap(32 * MIB, [thin(fx, "vgthin/thin1")]).extents())
    b = list(ExtentMap(32 * MIB, [thin(fx, "vgthin/snap1")]).extents())
    assert a != b


def test_random_subranges_equal_whole_read(fx: dict[str, object]) -> None:
    emap = ExtentMap(32 * MIB, [thin(fx, "vgthin/thin1")])
    with ExtentReader(emap) as r:
        whole = r.pread(0, emap.size)
        rnd = random.Random(1)
        for _ in range(200):
            lo = rnd.randrange(emap.size)
            n = rnd.randrange(1, 300_000)
            assert r.pread(lo, n) == whole[lo : lo + n]


def test_superblock_fields(fx: dict[str, object]) -> None:
    md = ThinMetadata(ExtentReader(lv_map(fx, "vgthin/pool_tmeta")))
    assert md.sb.data_block_bytes == 64 << 10
    assert md.sb.trans_id == fx["truth"]["lvs"]["vgthin/pool"]["transaction_id"]  # type: ignore[index]
    assert md.sb.metadata_nr_blocks * META_BLOCK == 4 * MIB


def test_flipped_superblock_byte_is_refused(fx: dict[str, object]) -> None:
    buf = tmeta_bytes(fx)
    buf[333] ^= 0x01
    with pytest.raises(FormatError, match="checksum"):
        thin(fx, "vgthin/thin1", Mem(buf))


def test_bad_magic_and_needs_check_are_refused(fx: dict[str, object]) -> None:
    buf = tmeta_bytes(fx)
    buf[32] ^= 0xFF
    with pytest.raises(FormatError, match="magic"):
        ThinMetadata(Mem(buf))
    buf = tmeta_bytes(fx)
    buf[4] |= 1
    reseal(buf, 0, SB_CSUM_XOR)
    with pytest.raises(FormatError, match="needs_check"):
        ThinMetadata(Mem(buf))


def test_transaction_and_chunk_mismatch_are_refused(fx: dict[str, object]) -> None:
    with pytest.raises(FormatError, match="transaction"):
        thin(fx, "vgthin/thin1", expected_transaction_id=2)
    info = fx["truth"]["lvs"]["vgthin/thin1"]  # type: ignore[index]
    with pytest.raises(FormatError, match="chunk size"):
        ThinMapper(0, info["size"], ExtentReader(lv_map(fx, "vgthin/pool_tmeta")),
                   lv_map(fx, "vgthin/pool_tdata"), 1, 128 << 10)
    with pytest.raises(FormatError, match="not in the pool"):
        ThinMapper(0, info["size"], ExtentReader(lv_map(fx, "vgthin/pool_tmeta")),
                   lv_map(fx, "vgthin/pool_tdata"), 77, 64 << 10)


def test_data_block_beyond_pool_is_refused(fx: dict[str, object]) -> None:
    small = ExtentMap(MIB, [LinearMapper(0, MIB, "/nonexistent", 0)])
    m = ThinMapper(0, 32 * MIB, ExtentReader(lv_map(fx, "vgthin/pool_tmeta")), small, 1, 64 << 10)
    with pytest.raises(FormatError, match="beyond the pool"):
        list(m.extents(0, 32 * MIB))


def _device_root(buf: bytearray, dev: int) -> int:
    return ThinMetadata(Mem(buf)).device_root(dev) or 0


def test_flipped_btree_byte_is_refused(fx: dict[str, object]) -> None:
    buf = tmeta_bytes(fx)
    root = _device_root(buf, 1)
    buf[root * META_BLOCK + 40] ^= 0x80
    m = thin(fx, "vgthin/thin1", Mem(buf))
    with pytest.raises(FormatError, match=f"node {root} checksum"):
        list(m.extents(0, m.length))


def test_btree_cycle_is_refused_not_a_hang(fx: dict[str, object]) -> None:
    buf = tmeta_bytes(fx)
    root = _device_root(buf, 1)
    b = root * META_BLOCK
    cap = struct.unpack_from("<I", buf, b + 20)[0]
    # Turn the device's root leaf into an internal node whose only child is itself.
    struct.pack_into("<IIQIII", buf, b, 0, 1, root, 1, cap, 8)
    struct.pack_into("<Q", buf, b + 32, 0)
    struct.pack_into("<Q", buf, b + 32 + cap * 8, root)
    reseal(buf, root, BTREE_CSUM_XOR)
    m = thin(fx, "vgthin/thin1", Mem(buf))
    with pytest.raises(FormatError, match="twice|deeper"):
        list(m.extents(0, m.length))


def test_child_keys_outside_parent_interval_are_refused(fx: dict[str, object]) -> None:
    buf = tmeta_bytes(fx)
    root = _device_root(buf, 1)
    # A new internal root in an unused block, claiming its only child starts at key 20
    # (the child leaf starts at block 16: 1 MiB / 64 KiB).
    free = ThinMetadata(Mem(buf)).sb.metadata_nr_blocks - 1
    assert buf[free * META_BLOCK : (free + 1) * META_BLOCK].count(0) == META_BLOCK
    b = free * META_BLOCK
    cap = 126
    struct.pack_into("<IIQIII", buf, b, 0, 1, free, 1, cap, 8)
    struct.pack_into("<Q", buf, b + 32, 20)
    struct.pack_into("<Q", buf, b + 32 + cap * 8, root)
    reseal(buf, free, BTREE_CSUM_XOR)
    info = fx["truth"]["lvs"]["vgthin/thin1"]  # type: ignore[index]
    m = thin(fx, "vgthin/thin1", Mem(buf))
    m.root = free
    with pytest.raises(FormatError, match="outside the parent"):
        list(m.extents(0, info["size"]))
