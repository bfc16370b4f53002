# SPDX-License-Identifier: Apache-2.0
"""The block-source contract on real files: an LV map over a sparse file reports the file's holes
as HOLE ranges (gap-free, in order, for any window), reads exactly its bytes, and a file that shrank
or an error segment is an IOFailure naming the file, never zeros."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from euca2kvm.blocks import BlockSource, Kind, Range, data_bytes, merged
from euca2kvm.errors import IOFailure
from euca2kvm.lvm.extents import ExtentMap, FillMapper, LinearMapper
from euca2kvm.lvm.source import LvmSource, file_source

KiB, MiB = 1 << 10, 1 << 20


def sparse(path: Path, size: int, islands: list[tuple[int, bytes]]) -> bytes:
    whole = bytearray(size)
    with path.open("wb") as f:
        f.truncate(size)
        for off, data in islands:
            f.seek(off)
            f.write(data)
            whole[off : off + len(data)] = data
    return bytes(whole)


def test_ranges_report_file_holes_and_cover_every_window(tmp_path: Path) -> None:
    rnd = random.Random(4)
    f = tmp_path / "pv"
    whole = sparse(f, 8 * MiB, [(MiB, rnd.randbytes(64 * KiB)), (5 * MiB, rnd.randbytes(MiB))])
    emap = ExtentMap(10 * MiB, [LinearMapper(0, 8 * MiB, str(f), 0), FillMapper(8 * MiB, 2 * MiB, Kind.ZERO)])
    src = LvmSource(emap, "lv")
    assert isinstance(src, BlockSource)
    assert src.kinds() == {Kind.DATA, Kind.HOLE, Kind.ZERO}
    got = list(src.ranges(0, src.size))
    assert [(r.start, r.end, r.kind) for r in got] == [
        (0, MiB, Kind.HOLE), (MiB, MiB + 64 * KiB, Kind.DATA), (MiB + 64 * KiB, 5 * MiB, Kind.HOLE),
        (5 * MiB, 6 * MiB, Kind.DATA), (6 * MiB, 8 * MiB, Kind.HOLE), (8 * MiB, 10 * MiB, Kind.ZERO)]
    assert data_bytes(src) == MiB + 64 * KiB
    for _ in range(200):
        lo = rnd.randrange(src.size)
        hi = rnd.randrange(lo + 1, src.size + 1)
        rs = list(src.ranges(lo, hi))
        assert rs[0].start == lo and rs[-1].end == hi
        assert all(a.end == b.start and a.kind is not b.kind for a, b in zip(rs, rs[1:], strict=False))
        buf = bytearray(b"\xa5" * (hi - lo))  # garbage: every byte must be written
        src.read_into(lo, memoryview(buf))
        assert bytes(buf) == (whole + bytes(2 * MiB))[lo:hi]
    src.close()


def test_shrunk_file_and_error_segment_fail_naming_the_file(tmp_path: Path) -> None:
    f = tmp_path / "pv"
    sparse(f, 4 * MiB, [(0, os.urandom(4 * MiB))])
    src = file_source(str(f))
    os.truncate(f, 3 * MiB)
    with pytest.raises(IOFailure, match="shrank") as ei:
        list(src.ranges(2 * MiB, 4 * MiB))
    assert str(f) in str(ei.value)
    with pytest.raises(IOFailure, match="shrank"):
        src.read_into(3 * MiB - 10, memoryview(bytearray(20)))
    src.close()
    bad = LvmSource(ExtentMap(2 * MiB, [FillMapper(0, 2 * MiB, Kind.ERROR)]), "lv-err")
    assert bad.kinds() == {Kind.ERROR}
    with pytest.raises(IOFailure):
        bad.read_into(0, memoryview(bytearray(512)))


def test_merged_joins_neighbours_of_one_kind() -> None:
    rs = [Range(0, 1, Kind.HOLE), Range(1, 2, Kind.HOLE), Range(3, 1, Kind.DATA), Range(4, 4, Kind.ZERO),
          Range(8, 1, Kind.ZERO)]
    assert list(merged(rs)) == [Range(0, 3, Kind.HOLE), Range(3, 1, Kind.DATA), Range(4, 5, Kind.ZERO)]
    assert list(merged([])) == []
