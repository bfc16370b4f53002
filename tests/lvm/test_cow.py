# SPDX-License-Identifier: Apache-2.0
"""dm-snapshot (classic COW) reader against ground truth from the real kernel (tests/data/dm).

LV byte ranges come from the layout lvm reported inside the guest (truth.json).
"""

from __future__ import annotations

import random
import struct
from typing import TYPE_CHECKING

import pytest

from euca2kvm.errors import FormatError
from euca2kvm.lvm.cow import CowSnapshotMapper
from euca2kvm.lvm.extents import ExtentMap, Kind
from euca2kvm.lvm.reader import ExtentReader

if TYPE_CHECKING:
    from conftest import DmFixtures  # tests/lvm/conftest.py

MIB = 1 << 20
READ = MIB + 4096 + 512  # odd read size: ranges split COW chunks


def snap(fx: DmFixtures, lv: str, cow_reader: object = None,
         chunk: int | None = None) -> CowSnapshotMapper:
    info = fx.lv(lv)
    origin = fx.lv_map("vgcow/" + info["origin"])
    cow = fx.lv_map(lv)
    return CowSnapshotMapper(0, origin.size, origin, cow_reader or ExtentReader(cow), cow,
                             chunk or info["segments"][0]["chunk_size"])  # type: ignore[arg-type]


def cow_bytes(fx: DmFixtures, lv: str) -> bytearray:
    with ExtentReader(fx.lv_map(lv)) as r:
        return bytearray(r.pread(0, r.size))


@pytest.mark.parametrize("lv", ["vgcow/origin", "vgcow/origin2"])
def test_origin_matches_kernel(fx: DmFixtures, lv: str) -> None:
    assert fx.sha(fx.lv_map(lv), READ) == fx.lv(lv)["sha256"]


def test_snapshot_matches_kernel(fx: DmFixtures) -> None:
    info = fx.lv("vgcow/csnap")
    m = snap(fx, "vgcow/csnap")
    assert m.exceptions > 0
    emap = ExtentMap(m.length, [m])
    assert emap.size == info["kernel_size"]
    assert fx.sha(emap, READ) == info["sha256"]
    assert fx.sha(emap, 16 * MIB) == info["sha256"]
    assert info["sha256"] != fx.lv("vgcow/origin")["sha256"]
    ext = list(emap.extents())
    assert all(e.kind is Kind.DATA for e in ext) and sum(e.length for e in ext) == emap.size
    for a, b in zip(ext, ext[1:], strict=False):
        assert a.end == b.start and not (a.path == b.path and a.offset + a.length == b.offset)


def test_random_subranges_equal_whole_read(fx: DmFixtures) -> None:
    m = snap(fx, "vgcow/csnap")
    with ExtentReader(ExtentMap(m.length, [m])) as r:
        whole = r.pread(0, r.size)
        rnd = random.Random(2)
        for _ in range(200):
            lo = rnd.randrange(r.size)
            n = rnd.randrange(1, 100_000)
            assert r.pread(lo, n) == whole[lo : lo + n]


def test_overflowed_snapshot_is_refused(fx: DmFixtures) -> None:
    assert fx.lv("vgcow/full")["sha256"] == "FAIL"  # kernel: EIO
    with pytest.raises(FormatError, match="invalid"):
        snap(fx, "vgcow/full")


def test_header_checks(fx: DmFixtures) -> None:
    with pytest.raises(FormatError, match="chunk size"):
        snap(fx, "vgcow/csnap", chunk=8192)
    buf = cow_bytes(fx, "vgcow/csnap")
    buf[0] ^= 0xFF
    with pytest.raises(FormatError, match="magic"):
        snap(fx, "vgcow/csnap", fx.mem(buf))


def test_uninitialised_store_reads_as_origin(fx: DmFixtures) -> None:
    buf = cow_bytes(fx, "vgcow/csnap")
    buf[:16] = bytes(16)
    m = snap(fx, "vgcow/csnap", fx.mem(buf))
    assert m.exceptions == 0
    assert fx.sha(ExtentMap(m.length, [m]), READ) == fx.lv("vgcow/origin")["sha256"]


def test_exception_outside_store_is_refused(fx: DmFixtures) -> None:
    buf = cow_bytes(fx, "vgcow/csnap")
    chunk = 16 << 10
    struct.pack_into("<Q", buf, chunk + 8, 10**9)  # first exception's new_chunk
    with pytest.raises(FormatError, match="outside the COW"):
        snap(fx, "vgcow/csnap", fx.mem(buf))
    buf = cow_bytes(fx, "vgcow/csnap")
    struct.pack_into("<Q", buf, chunk, 10**9)  # first exception's old_chunk
    with pytest.raises(FormatError, match="beyond the origin"):
        snap(fx, "vgcow/csnap", fx.mem(buf))
