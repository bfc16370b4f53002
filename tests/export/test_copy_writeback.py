# SPDX-License-Identifier: Apache-2.0
"""The mover starts each written block's writeback (readahead.Writeback, sync_file_range): the bytes
are still the source's, the call is really made by a CLI export, and a kernel that refuses it (or a
call that raises) changes nothing but the kick itself."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from _env import missing, need_tools
from euca2kvm import readahead
from euca2kvm.export import copy
from euca2kvm.export.copy import copy_blocks
from euca2kvm.lvm.extents import ExtentMap, LinearMapper
from euca2kvm.lvm.source import LvmSource
from export.test_export_cli import dense_volume

MiB = 1 << 20
SIZE = 20 * MiB + 12345  # five whole blocks and a short last one


def _source(tmp_path: Path) -> tuple[LvmSource, bytes]:
    data = bytearray(random.Random(3).randbytes(SIZE))
    data[4 * MiB : 8 * MiB] = bytes(4 * MiB)  # a zero block: a hole, never written nor kicked
    src = tmp_path / "pv"
    src.write_bytes(data)
    return LvmSource(ExtentMap(SIZE, [LinearMapper(0, SIZE, str(src), 0)])), bytes(data)


def _export(tmp_path: Path, source: LvmSource) -> bytes:
    out = tmp_path / "out.raw"
    out.write_bytes(b"garbage" * 1000)
    fd = os.open(out, os.O_RDWR | os.O_TRUNC)
    try:
        os.ftruncate(fd, source.size)
        copy_blocks(source, fd)
    finally:
        os.close(fd)
    return out.read_bytes()


@pytest.fixture(autouse=True)
def kick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(copy, "KICK", True)  # whatever EUCA2KVM_KICK the test run has


def test_kicked_blocks_are_the_sources_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []
    real = readahead.Writeback.start

    def counting(self: readahead.Writeback, offset: int, length: int) -> bool:
        calls.append((offset, length))
        return real(self, offset, length)

    monkeypatch.setattr(readahead.Writeback, "start", counting)
    source, data = _source(tmp_path)
    got = _export(tmp_path, source)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    # every written block was kicked, once, over the bytes written, and the zero block never
    assert sorted(o // (4 * MiB) for o, _ in calls) == [0, 2, 3, 4, 5]
    assert all(o % (4 * MiB) + n <= 4 * MiB for o, n in calls)


@pytest.mark.parametrize("fail", ["errno", "raise"])
def test_a_refused_kick_stops_kicking_and_the_export_succeeds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              fail: str) -> None:
    tries: list[Any] = []

    def refusing(*args: Any) -> int:
        tries.append(args)
        if fail == "raise":
            raise OSError(errno.ENOSYS, "sync_file_range")
        return -1  # what libc returns with errno ENOSYS / EINVAL / ESPIPE

    real_init = readahead.Writeback.__init__

    def init(self: readahead.Writeback, fd: int) -> None:
        real_init(self, fd)
        self._call = refusing  # type: ignore[assignment]

    monkeypatch.setattr(readahead.Writeback, "__init__", init)
    source, data = _source(tmp_path)
    assert _export(tmp_path, source) == data
    assert len(tries) == 1  # the first refusal turned it off


def test_no_kick_for_a_pipe_or_when_switched_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    r, w = os.pipe()
    try:
        assert copy._Dest(w).writeback is None  # not a regular file
    finally:
        os.close(r)
        os.close(w)
    monkeypatch.setattr(copy, "KICK", False)
    with open(tmp_path / "f", "wb") as f:
        assert copy._Dest(f.fileno()).writeback is None


@pytest.mark.parametrize("kicked", [True, False])
def test_a_cli_export_starts_writeback_of_its_output_unless_switched_off(tmp_path: Path, kicked: bool) -> None:
    need_tools("strace")
    vols, out, log = tmp_path / "vols", tmp_path / "out", tmp_path / "strace.log"
    vols.mkdir()
    dense_volume(vols, "vol-c1c10001", 16)
    env = {k: v for k, v in os.environ.items() if k != "EUCA2KVM_KICK"} | ({} if kicked else {"EUCA2KVM_KICK": "0"})
    # -ff: one log per thread, so two threads' calls never print as "<unfinished ...>" / "resumed" halves
    p = subprocess.run(["strace", "-ff", "-qq", "-y", "-e", "trace=sync_file_range", "-o", str(log),
                        sys.executable, "-m", "euca2kvm", "export", "vol-c1c10001", "--source", str(vols),
                        "-o", str(out)], capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr[-2000:]
    lv = (vols / "vol-c1c10001").read_bytes()[-16 * MiB :]  # the LV's extents end the container
    assert hashlib.sha256((out / "vol-c1c10001.raw").read_bytes()).digest() == hashlib.sha256(lv).digest()
    lines = [ln for f in tmp_path.glob("strace.log.*") for ln in f.read_text().splitlines()]
    calls = [ln for ln in lines if "sync_file_range(" in ln and "= 0" in ln]
    assert len(calls) == (4 if kicked else 0), calls  # one per 4 MiB block of the 16 MiB volume
    assert all("/image>" in c for c in calls), calls  # the output's temporary, nothing else


BLOCKS = copy.DROP_LAG + 8


def _cached_pages(path: Path, offset: int, length: int) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        n = readahead.CacheProbe(fd).pages(offset, length)
    finally:
        os.close(fd)
    if n is None:
        missing("no cachestat(2) here: the cached pages cannot be counted")
    assert n is not None
    return n


def _big_export(tmp_path: Path) -> tuple[Path, bytes]:
    size = BLOCKS * copy.DIGEST_BLOCK
    data = random.Random(5).randbytes(size)
    src = tmp_path / "pv"
    src.write_bytes(data)
    source = LvmSource(ExtentMap(size, [LinearMapper(0, size, str(src), 0)]))
    out = tmp_path / "out.raw"
    out.write_bytes(b"garbage" * 1000)
    fd = os.open(out, os.O_RDWR | os.O_TRUNC)
    try:
        os.ftruncate(fd, size)
        copy_blocks(source, fd)
    finally:
        os.close(fd)
        source.close()
    return out, data


@pytest.mark.parametrize("mode", [readahead.DropBehind.UNCACHED, readahead.DropBehind.ALL])
def test_written_blocks_leave_the_page_cache_behind_the_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               mode: readahead.DropBehind) -> None:
    """Each block DROP_LAG blocks behind the one just written is waited for and dropped: none of those
    is cached after the copy (deterministic: the drop waits for the block's writeback), the last
    DROP_LAG are, and the output holds the source's bytes (read back from the disk)."""
    monkeypatch.setattr(readahead, "_MODE", mode)
    out, data = _big_export(tmp_path)
    behind = (BLOCKS - copy.DROP_LAG) * copy.DIGEST_BLOCK
    assert _cached_pages(out, 0, behind) == 0
    assert _cached_pages(out, behind, len(data) - behind) > 0
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(data).digest()


def test_keep_cache_keeps_the_outputs_pages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(readahead, "_MODE", readahead.DropBehind.KEEP)
    out, data = _big_export(tmp_path)
    assert _cached_pages(out, 0, len(data)) == len(data) // 4096
    assert out.read_bytes() == data


def test_no_drop_without_the_kick(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(copy, "KICK", False)
    dropped: list[int] = []
    monkeypatch.setattr(readahead.Writeback, "drop", lambda self, o, n: dropped.append(o) or True)
    out, data = _big_export(tmp_path)
    assert dropped == [] and out.read_bytes() == data


def test_a_refused_wait_stops_dropping(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def refusing(self: readahead.Writeback, offset: int, length: int, flags: int) -> bool:
        calls.append(flags)
        return flags == readahead.SYNC_FILE_RANGE_WRITE  # the kick works, the waiting call fails

    monkeypatch.setattr(readahead.Writeback, "_range", refusing)
    out, data = _big_export(tmp_path)
    waits = [f for f in calls if f != readahead.SYNC_FILE_RANGE_WRITE]
    assert len(waits) == 1  # tried once, then no more
    assert out.read_bytes() == data
