# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from euca2kvm.lvm.extents import (
    Extent,
    ExtentMap,
    FillMapper,
    Kind,
    LinearMapper,
    ShiftedMapper,
    StripedMapper,
)


def naive_striped(b: int, chunk: int, areas: list[tuple[str, int]]) -> tuple[str, int]:
    """The dm-stripe formula, in sectors as lvm2/dm-stripe state it, for one byte."""
    s, within_sector = divmod(b, 512)
    stripe_size = chunk // 512
    c = s // stripe_size
    path, base = areas[c % len(areas)]
    phys_sector = (c // len(areas)) * stripe_size + s % stripe_size
    return path, base + phys_sector * 512 + within_sector


@settings(max_examples=150, deadline=None)
@given(n=st.integers(2, 5), chunk_sectors=st.sampled_from([8, 16, 128]), rows=st.integers(1, 6),
       lo=st.integers(0, 10**6), span=st.integers(1, 10**6))
def test_striped_matches_dm_formula(n: int, chunk_sectors: int, rows: int, lo: int, span: int) -> None:
    chunk = chunk_sectors * 512
    areas = [(f"f{i}", 1000 * i + 7) for i in range(n)]
    length = n * rows * chunk
    m = StripedMapper(0, length, chunk, tuple(areas))
    lo %= length
    hi = min(length, lo + span)
    pos = lo
    for e in m.extents(lo, hi):
        assert e.start == pos and e.length > 0
        for b in (e.start, e.end - 1, (e.start + e.end) // 2):
            assert (e.path, e.offset + (b - e.start)) == naive_striped(b, chunk, areas)
        pos = e.end
    assert pos == hi


def test_map_merges_contiguous_and_clips() -> None:
    m = ExtentMap(300, [LinearMapper(0, 100, "a", 1000), LinearMapper(100, 100, "a", 1100),
                        FillMapper(200, 50, Kind.ZERO), FillMapper(250, 50, Kind.ZERO)])
    assert list(m.extents()) == [Extent(0, 200, Kind.DATA, "a", 1000), Extent(200, 100, Kind.ZERO)]
    assert list(m.extents(150, 210)) == [Extent(150, 50, Kind.DATA, "a", 1150), Extent(200, 10, Kind.ZERO)]
    assert m.single_range() is None
    assert ExtentMap(10, [LinearMapper(0, 10, "x", 5)]).single_range() == ("x", 5)


def test_map_rejects_gaps() -> None:
    with pytest.raises(ValueError):
        ExtentMap(200, [LinearMapper(0, 100, "a", 0), LinearMapper(150, 50, "a", 0)])


def test_shifted_sub_lv() -> None:
    inner = ExtentMap(1000, [LinearMapper(0, 500, "p", 0), LinearMapper(500, 500, "q", 0)])
    outer = ExtentMap(400, [ShiftedMapper(0, 400, inner, 300)])
    assert list(outer.extents()) == [Extent(0, 200, Kind.DATA, "p", 300), Extent(200, 200, Kind.DATA, "q", 0)]
    assert outer.kinds() == {Kind.DATA}
