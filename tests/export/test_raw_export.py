# SPDX-License-Identifier: Apache-2.0
"""Raw export: exact bytes, holes stay holes, documented digest, nothing half-written."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _env import need_root, need_tools
from euca2kvm.errors import IOFailure
from euca2kvm.export.copy import copy_blocks
from euca2kvm.export.digest import DEFAULT, DIGEST_BLOCK
from euca2kvm.export.raw import export_raw, partial_name
from euca2kvm.lvm.extents import ExtentMap, FillMapper, Kind, LinearMapper, StripedMapper
from euca2kvm.lvm.source import LvmSource
from refdigest import blkdigest

MiB = 1 << 20


def sparse_source(path: Path, size: int, islands: list[tuple[int, bytes]]) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
        for off, data in islands:
            f.seek(off)
            f.write(data)


@pytest.fixture
def layout(tmp_path: Path) -> tuple[ExtentMap, bytes]:
    """A 3-segment LV: linear from a sparse file, zeros, and a 2-way stripe; data at start/middle/end."""
    rnd = random.Random(7)
    a, b = tmp_path / "pv-a", tmp_path / "pv-b"
    islands_a = [(MiB, rnd.randbytes(300_000)), (9 * MiB + 4097, rnd.randbytes(70_000)),
                 (17 * MiB - 5000, rnd.randbytes(5000))]
    sparse_source(a, 40 * MiB, islands_a)
    sparse_source(b, 8 * MiB, [(0, rnd.randbytes(2 * MiB)), (3 * MiB, rnd.randbytes(MiB))])
    # extend a with stripe area data
    with open(a, "r+b") as f:
        f.seek(20 * MiB)
        f.write(rnd.randbytes(2 * MiB))
    emap = ExtentMap(16 * MiB + 3 * MiB + 8 * MiB, [
        LinearMapper(0, 16 * MiB, str(a), MiB),
        FillMapper(16 * MiB, 3 * MiB, Kind.ZERO),
        StripedMapper(19 * MiB, 8 * MiB, 64 * 1024, ((str(a), 20 * MiB), (str(b), 0))),
    ])
    fa, fb = a.read_bytes(), b.read_bytes()
    expected = bytearray(fa[MiB : 17 * MiB]) + bytes(3 * MiB)
    for c in range(8 * MiB // 65536):
        src, base = ((fa, 20 * MiB), (fb, 0))[c % 2]
        off = base + (c // 2) * 65536
        expected += src[off : off + 65536]
    return emap, bytes(expected)


@pytest.mark.parametrize("workers", [1, 4])
def test_export_exact_sparse_and_digests(tmp_path: Path, layout: tuple[ExtentMap, bytes], workers: int) -> None:
    emap, expected = layout
    out = tmp_path / "out.raw"
    out.write_bytes(b"garbage!" * (4 * MiB))  # a previous file with the final name: must be replaced
    res = export_raw(LvmSource(emap), out, sha256=True, workers=workers)
    data = out.read_bytes()
    assert data == expected
    assert res.sha256 == hashlib.sha256(expected).hexdigest()
    assert res.digest == blkdigest(expected)
    nonzero = sum(1 for i in range(0, len(expected), 4096) if expected[i : i + 4096].strip(b"\0"))
    allocated = os.stat(out).st_blocks * 512
    assert allocated <= nonzero * 4096 * 1.01 + 64 * 1024, (allocated, nonzero * 4096)
    assert not partial_name(out).exists()


def test_verify_mode_reads_without_writing(layout: tuple[ExtentMap, bytes]) -> None:
    emap, expected = layout
    res = copy_blocks(LvmSource(emap), None)
    assert res.digest == blkdigest(expected) and res.bytes_written == 0


def test_all_zero_lv_costs_no_reads(tmp_path: Path) -> None:
    src = tmp_path / "hole"
    sparse_source(src, 64 * MiB, [])
    emap = ExtentMap(64 * MiB, [LinearMapper(0, 64 * MiB, str(src), 0)])
    res = export_raw(LvmSource(emap), tmp_path / "z.raw")
    assert res.bytes_read == 0 and res.bytes_written == 0
    assert res.digest == blkdigest(bytes(64 * MiB))
    assert os.stat(tmp_path / "z.raw").st_blocks == 0


def test_error_extent_refused_and_nothing_left(tmp_path: Path) -> None:
    src = tmp_path / "s"
    sparse_source(src, 8 * MiB, [(0, b"x" * MiB)])
    emap = ExtentMap(8 * MiB, [LinearMapper(0, 4 * MiB, str(src), 0), FillMapper(4 * MiB, 4 * MiB, Kind.ERROR)])
    out = tmp_path / "e.raw"
    with pytest.raises(IOFailure, match="error"):
        export_raw(LvmSource(emap), out)
    assert not out.exists() and not partial_name(out).exists()


def test_interrupt_leaves_no_partial_and_keeps_old_output(tmp_path: Path, layout: tuple[ExtentMap, bytes]) -> None:
    emap, _ = layout
    out = tmp_path / "i.raw"
    out.write_bytes(b"previous complete export")
    calls = 0

    def boom(n: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export_raw(LvmSource(emap), out, progress=boom)
    assert out.read_bytes() == b"previous complete export"
    assert not partial_name(out).exists()


def test_source_shrinking_is_an_error_not_zeros(tmp_path: Path) -> None:
    src = tmp_path / "s"
    sparse_source(src, 8 * MiB, [(0, os.urandom(8 * MiB))])
    emap = ExtentMap(8 * MiB, [LinearMapper(0, 8 * MiB, str(src), 0)])
    os.truncate(src, 6 * MiB + 5)
    out = tmp_path / "t.raw"
    with pytest.raises(IOFailure) as ei:  # a source that shrank after its scan: exit 5
        export_raw(LvmSource(emap), out)
    assert str(src) in str(ei.value)
    assert not out.exists() and not partial_name(out).exists()


def test_enospc_clear_error_and_no_partial(tmp_path: Path) -> None:
    need_root()
    need_tools("mount", "umount")
    src = tmp_path / "s"
    sparse_source(src, 8 * MiB, [(0, os.urandom(8 * MiB))])
    emap = ExtentMap(8 * MiB, [LinearMapper(0, 8 * MiB, str(src), 0)])
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True, timeout=30)
    try:
        out = mnt / "full.raw"
        with pytest.raises(IOFailure, match="no space left"):
            export_raw(LvmSource(emap), out)
        assert os.listdir(mnt) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=True, timeout=30)


def test_digest_block_constant() -> None:
    assert 4 * MiB == DIGEST_BLOCK and DEFAULT.name == "blkblake3-4m"


def _reference_nonzero(data: bytes, grain: int) -> list[tuple[int, int]]:
    """Grain by grain: merge the ranges of grains that are not all zero."""
    out: list[tuple[int, int]] = []
    for a in range(0, len(data), grain):
        b = min(a + grain, len(data))
        if data[a:b].count(0) != b - a:
            if out and out[-1][1] == a:
                out[-1] = (out[-1][0], b)
            else:
                out.append((a, b))
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["zero", "data", "zero-first-byte", "late-byte"]),
                          st.integers(1, 3)), max_size=12),
       st.integers(0, 4095))
def test_nonzero_grains_match_grain_by_grain(parts: list[tuple[str, int]], tail: int) -> None:
    from euca2kvm.export.copy import SPARSE_GRAIN, _nonzero_grains

    g = SPARSE_GRAIN
    chunks = {"zero": bytes(g), "data": b"\x01" + bytes(g - 1), "zero-first-byte": bytes(g - 1) + b"\x02",
              "late-byte": bytes(g // 2) + b"\x03" + bytes(g // 2 - 1)}
    data = b"".join(chunks[k] * n for k, n in parts) + bytes(tail)
    assert list(_nonzero_grains(memoryview(data))) == _reference_nonzero(data, g)


def test_buffer_path_without_digest_copies_exactly(tmp_path: Path, layout: tuple[ExtentMap, bytes]) -> None:
    """Every block goes through the buffer path (sources are never mapped); --no-verify there still
    copies exactly."""
    emap, expected = layout
    out = tmp_path / "nv.raw"
    with open(out, "wb") as f:
        f.truncate(emap.size)
        res = copy_blocks(LvmSource(emap), f.fileno(), digest=False, workers=2)
    assert res.digest is None and out.read_bytes() == expected
    with open(out, "wb") as f:
        f.truncate(emap.size)
        assert copy_blocks(LvmSource(emap), f.fileno(), workers=2).digest == blkdigest(expected)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(1, 3 * 512 * 1024)), min_size=1, max_size=6))
def test_write_groups_cap_each_call_and_write_every_byte(spec: list[tuple[int, int]]) -> None:
    """Writes are cut into calls of at most SYSCALL_BYTES (and IOV_MAX buffers) of contiguous bytes,
    and together they write every piece's bytes at its offset, each byte once."""
    from euca2kvm.export.copy import IOV_MAX, _write_groups
    from euca2kvm.readahead import SYSCALL_BYTES

    rng = random.Random(len(spec))
    pieces, pos = [], 0
    for gap, length in spec:
        pos += gap * 4096
        pieces.append((pos, memoryview(rng.randbytes(length))))
        pos += length
    expected, got = bytearray(pos), bytearray(pos)
    for off, view in pieces:
        expected[off : off + len(view)] = view
    total = 0
    for start, group in _write_groups(pieces):
        size = sum(len(b) for b in group)
        assert 0 < size <= SYSCALL_BYTES and len(group) <= IOV_MAX
        got[start : start + size] = b"".join(group)
        total += size
    assert total == sum(len(v) for _, v in pieces) and got == expected


def test_local_reads_larger_than_one_call_are_exact(tmp_path: Path) -> None:
    """A read of several SYSCALL_BYTES pieces at an odd offset is exact, and short only at EOF."""
    from euca2kvm.lvm.source import LocalFile
    from euca2kvm.readahead import SYSCALL_BYTES

    data = random.Random(7).randbytes(3 * SYSCALL_BYTES + 12345)
    p = tmp_path / "f"
    p.write_bytes(data)
    f = LocalFile(str(p))
    try:
        buf = bytearray(2 * SYSCALL_BYTES + 777)
        assert f.pread_into(4099, memoryview(buf)) == len(buf) and bytes(buf) == data[4099 : 4099 + len(buf)]
        tail = bytearray(SYSCALL_BYTES * 2)
        n = f.pread_into(len(data) - 100, memoryview(tail))
        assert n == 100 and bytes(tail[:100]) == data[-100:]
    finally:
        f.close()


@pytest.mark.parametrize("sha256", [False, True])
def test_sequential_source_is_read_by_one_thread_in_disk_order(
        tmp_path: Path, layout: tuple[ExtentMap, bytes], sha256: bool) -> None:
    """A source that asks for one reader (local files) is read by one thread, front to back, while
    the workers hash and write: the same bytes and digests as parallel readers, and no deadlock
    when the plain sha256 keeps blocks for the in-order consumer."""
    import threading

    emap, expected = layout
    reads: list[tuple[int, int]] = []

    class Recording(LvmSource):
        def read_into(self, offset: int, view: memoryview) -> None:
            reads.append((threading.get_ident(), offset))
            super().read_into(offset, view)

    results = {}
    for sequential in (True, False):
        reads.clear()
        out = tmp_path / f"seq-{sequential}.raw"
        out.write_bytes(os.urandom(emap.size))  # garbage, truncated below
        with open(out, "r+b") as f:
            f.truncate(0)
            f.truncate(emap.size)
            results[sequential] = copy_blocks(Recording(emap, sequential=sequential), f.fileno(), workers=3,
                                              sha256=sha256)
        assert out.read_bytes() == expected
        if sequential:
            offsets = [o for _, o in reads]
            assert len({t for t, _ in reads}) == 1 and offsets == sorted(offsets)
    assert results[True].digest == results[False].digest == blkdigest(expected)
    if sha256:
        assert results[True].sha256 == results[False].sha256 == hashlib.sha256(expected).hexdigest()
