# SPDX-License-Identifier: Apache-2.0
"""dm-snapshot (classic COW) reader against ground truth from the real kernel (tests/data/dm).

LV byte ranges come from the layout lvm reported inside the guest (truth.json).
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
from euca2kvm.lvm.cow import CowSnapshotMapper
from euca2kvm.lvm.extents import ExtentMap, Kind, LinearMapper
from euca2kvm.lvm.reader import ExtentReader

DATA = Path(__file__).resolve().parent.parent / "data" / "dm"
MIB = 1 << 20
READ = MIB + 4096 + 512  # odd read size: ranges split COW chunks


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
    d = tmp_path_factory.mktemp("dmcow")
    c = truth["containers"]["dm-cow.img"]
    unpack(DATA / c["xz"], d / "dm-cow.img")
    return {"truth": truth, "dir": d}


def lv_map(fx: dict[str, object], lv: str) -> ExtentMap:
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
    def __init__(self, data: bytes | bytearray) -> None:
        self.data = bytes(data)
        self.size = len(self.data)

    def pread(self, offset: int, length: int) -> bytes:
        return self.data[offset : offset + length]


def snap(fx: dict[str, object], lv: str, cow_reader: object = None,
         chunk: int | None = None) -> CowSnapshotMapper:
    info = fx["truth"]["lvs"][lv]  # type: ignore[index]
    origin = lv_map(fx, "vgcow/" + info["origin"])
    cow = lv_map(fx, lv)
    return CowSnapshotMapper(0, origin.size, origin, cow_reader or ExtentReader(cow), cow,
                             chunk or info["segments"][0]["chunk_size"])  # type: ignore[arg-type]


def sha(emap: ExtentMap, step: int = READ) -> str:
    h = hashlib.sha256()
    with ExtentReader(emap) as r:
        for off in range(0, emap.size, step):
            h.update(r.pread(off, min(step, emap.size - off)))
    return h.hexdigest()


def cow_bytes(fx: dict[str, object], lv: str) -> bytearray:
    with ExtentReader(lv_map(fx, lv)) as r:
        return bytearray(r.pread(0, r.size))


@pytest.mark.parametrize("lv", ["vgcow/origin", "vgcow/origin2"])
def test_origin_matches_kernel(fx: dict[str, object], lv: str) -> None:
    assert sha(lv_map(fx, lv)) == fx["truth"]["lvs"][lv]["sha256"]  # type: ignore[index]


def test_snapshot_matches_kernel(fx: dict[str, object]) -> None:
    info = fx["truth"]["lvs"]["vgcow/csnap"]  # type: ignore[index]
    m = snap(fx, "vgcow/csnap")
    assert m.exceptions > 0
    emap = ExtentMap(m.length, [m])
    assert emap.size == info["kernel_size"]
    assert sha(emap) == info["sha256"]
    assert sha(emap, 16 * MIB) == info["sha256"]
    assert info["sha256"] != fx["truth"]["lvs"]["vgcow/origin"]["sha256"]  # type: ignore[index]
    ext = list(emap.extents())
    assert all(e.kind is Kind.DATA for e in ext) and sum(e.length for e in ext) == emap.size
    for a, b in zip(ext, ext[1:], strict=False):
        assert a.end == b.start and not (a.path == b.path and a.offset + a.length == b.offset)


def test_random_subranges_equal_whole_read(fx: dict[str, object]) -> None:
    m = snap(fx, "vgcow/csnap")
    with ExtentReader(ExtentMap(m.length, [m])) as r:
        whole = r.pread(0, r.size)
        rnd = random.Random(2)
        for _ in range(200):
            lo = rnd.randrange(r.size)
            n = rnd.randrange(1, 100_000)
            assert r.pread(lo, n) == whole[lo : lo + n]


def test_overflowed_snapshot_is_refused(fx: dict[str, object]) -> None:
    assert fx["truth"]["lvs"]["vgcow/full"]["sha256"] == "FAIL"  # type: ignore[index]  # kernel: EIO
    with pytest.raises(FormatError, match="invalid"):
        snap(fx, "vgcow/full")


def test_header_checks(fx: dict[str, object]) -> None:
    with pytest.raises(FormatError, match="chunk size"):
        snap(fx, "vgcow/csnap", chunk=8192)
    buf = cow_bytes(fx, "vgcow/csnap")
    buf[0] ^= 0xFF
    with pytest.raises(FormatError, match="magic"):
        snap(fx, "vgcow/csnap", Mem(buf))


def test_uninitialised_store_reads_as_origin(fx: dict[str, object]) -> None:
    buf = cow_bytes(fx, "vgcow/csnap")
    buf[:16] = bytes(16)
    m = snap(fx, "vgcow/csnap", Mem(buf))
    assert m.exceptions == 0
    origin = fx["truth"]["lvs"]["vgcow/origin"]  # type: ignore[index]
    assert sha(ExtentMap(m.length, [m])) == origin["sha256"]


def test_exception_outside_store_is_refused(fx: dict[str, object]) -> None:
    buf = cow_bytes(fx, "vgcow/csnap")
    chunk = 16 << 10
    struct.pack_into("<Q", buf, chunk + 8, 10**9)  # first exception's new_chunk
    with pytest.raises(FormatError, match="outside the COW"):
        snap(fx, "vgcow/csnap", Mem(buf))
    buf = cow_bytes(fx, "vgcow/csnap")
    struct.pack_into("<Q", buf, chunk, 10**9)  # first exception's old_chunk
    with pytest.raises(FormatError, match="beyond the origin"):
        snap(fx, "vgcow/csnap", Mem(buf))
