# SPDX-License-Identifier: Apache-2.0
"""Page-cache behaviour of local source files: what is dropped behind the reader in each mode."""

from __future__ import annotations

import errno
import fcntl
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from _env import missing, need_tools
from euca2kvm import membuf, readahead
from euca2kvm.lvm.source import DropBehind, LocalFile

MiB = 1 << 20
PAGE = os.sysconf("SC_PAGE_SIZE")


def resident(path: Path) -> int:
    """Pages of ``path`` in the page cache (util-linux fincore)."""
    need_tools("fincore")
    out = subprocess.run(["fincore", "-n", "-b", "-o", "PAGES", str(path)], capture_output=True, text=True,
                         check=True, timeout=30).stdout
    return int(out.split()[0])


def cached_file(path: Path, size: int) -> bytes:
    """A file of random bytes, written back (clean pages can be dropped) and read into the cache."""
    data = random.Random(str(path)).randbytes(size)
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    assert path.read_bytes() == data
    if resident(path) < size // PAGE // 2:
        missing("the page cache does not keep this file (memory pressure)")
    return data


def read_all(f: LocalFile, size: int) -> bytes:
    buf = bytearray(size)
    view = memoryview(buf)
    for off in range(0, size, 4 * MiB):
        assert f.pread_into(off, view[off : off + 4 * MiB]) == min(4 * MiB, size - off)
    return bytes(buf)


@pytest.mark.parametrize("mode", [DropBehind.ALL, DropBehind.KEEP, DropBehind.UNCACHED])
def test_drop_behind_modes_on_a_cached_file(tmp_path: Path, mode: DropBehind) -> None:
    """A file cached before the read: ALL drops it, KEEP and UNCACHED (the default) leave it cached."""
    path = tmp_path / "src.img"
    data = cached_file(path, 8 * MiB + 4096)
    f = LocalFile(str(path), drop_behind=mode)
    try:
        assert read_all(f, len(data)) == data
    finally:
        f.close()
    pages = resident(path)
    if mode is DropBehind.ALL:
        assert pages == 0
    else:
        assert pages >= len(data) // PAGE // 2


def test_default_drops_only_what_it_brought_in(tmp_path: Path) -> None:
    """Half a file cached by another reader before the export: that half stays cached, the half
    this read brought in is dropped behind it."""
    path = tmp_path / "src.img"
    data = cached_file(path, 16 * MiB)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        assert resident(path) == 0
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # no readahead past what "the other reader" reads
        assert os.pread(fd, 8 * MiB, 0) == data[: 8 * MiB]
    finally:
        os.close(fd)
    if resident(path) != 8 * MiB // PAGE:
        missing("the page cache does not keep this file (memory pressure)")
    f = LocalFile(str(path))  # the default mode
    try:
        if f.drop_behind is not DropBehind.UNCACHED:
            pytest.fail("the default should drop only what was not cached")
        assert read_all(f, len(data)) == data
        probed = f._probing
    finally:
        f.close()
    if not probed:
        missing("this kernel has no cachestat(2)")
    assert resident(path) == 8 * MiB // PAGE


@pytest.mark.parametrize("option", ["--drop-behind", "--keep-cache", None])
def test_export_page_cache_options(tmp_path: Path, option: str | None) -> None:
    vols = tmp_path / "volumes"
    vols.mkdir()
    src = vols / "snap-0dd0b0b1"
    data = cached_file(src, 12 * MiB)
    out = tmp_path / "out"
    out.mkdir()
    (out / "snap-0dd0b0b1.raw").write_bytes(os.urandom(MiB))  # garbage under the final name
    p = subprocess.run([sys.executable, "-m", "euca2kvm", "export", "snap-0dd0b0b1", "--source", str(vols), "-o",
                        str(out), *([option] if option else [])], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert (out / "snap-0dd0b0b1.raw").read_bytes() == data
    pages = resident(src)
    assert pages == 0 if option == "--drop-behind" else pages >= len(data) // PAGE // 2


def evicted_file(path: Path, size: int) -> bytes:
    """A file of random bytes on the disk, none of it in the page cache."""
    data = cached_file(path, size)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    if resident(path):
        missing("the page cache keeps this file after POSIX_FADV_DONTNEED")
    return data


class Reads:
    """os.preadv calls of one LocalFile, by descriptor: (offset, length) each."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail_direct: bool = False) -> None:
        self.calls: list[tuple[int, int, int]] = []
        real = os.preadv

        def preadv(fd: int, bufs: list[memoryview], offset: int) -> int:
            self.calls.append((fd, offset, sum(len(b) for b in bufs)))
            if fail_direct and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
                raise OSError(errno.EINVAL, "Invalid argument")
            return real(fd, bufs, offset)

        monkeypatch.setattr(os, "preadv", preadv)

    def on(self, fd: int | None) -> list[tuple[int, int]]:
        return [(off, n) for d, off, n in self.calls if d == fd]


def read_aligned(f: LocalFile, size: int, shift: int = 0) -> bytes:
    """The whole file read in 4 MiB requests into a page-aligned buffer (``shift`` bytes into it)."""
    buf = membuf.aligned(4 * MiB + shift)
    out = bytearray()
    for off in range(0, size, 4 * MiB):
        n = min(4 * MiB, size - off)
        assert f.pread_into(off, buf[shift : shift + n]) == n
        out += buf[shift : shift + n]
    return bytes(out)


def test_uncached_blocks_are_read_direct(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What no one had cached is read with O_DIRECT in whole requests, the tail past the last 4 KiB
    block through the page cache (dropped behind); the bytes are the file's and none stay cached."""
    path = tmp_path / "src.img"
    data = evicted_file(path, 12 * MiB + 1000)
    reads = Reads(monkeypatch)
    f = LocalFile(str(path))
    buffered = f.fd
    try:
        assert read_aligned(f, len(data)) == data
        probed, direct = f._probing, f._dfd
        assert direct is None or fcntl.fcntl(direct, fcntl.F_GETFL) & os.O_DIRECT
    finally:
        f.close()
    if not probed:
        missing("this kernel has no cachestat(2)")
    assert direct is not None, "ext4 and xfs take O_DIRECT reads"
    assert reads.on(direct) == [(0, 4 * MiB), (4 * MiB, 4 * MiB), (8 * MiB, 4 * MiB)], reads.calls
    assert reads.on(buffered) == [(12 * MiB, 1000)] and resident(path) == 0


def test_cached_blocks_and_unaligned_buffers_go_through_the_page_cache(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "src.img"
    data = cached_file(path, 8 * MiB)
    reads = Reads(monkeypatch)
    f = LocalFile(str(path))
    try:
        assert read_aligned(f, len(data)) == data  # cached: read through the cache, left there
        assert f._dfd is None
    finally:
        f.close()
    assert resident(path) >= len(data) // PAGE // 2
    data = evicted_file(path, 8 * MiB)
    f = LocalFile(str(path))
    try:
        assert read_aligned(f, len(data), shift=512) == data  # a buffer 512 bytes into a page: not direct
        assert f._dfd is None and len(reads.calls) == 2 * 2 * 8  # 512 KiB calls, both reads
    finally:
        f.close()


def test_direct_reads_off_or_refused_read_through_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EUCA2KVM_DIRECT=0, a filesystem that cannot open O_DIRECT, and one that refuses the read (EINVAL):
    the same bytes, read through the page cache (and dropped behind)."""
    path = tmp_path / "src.img"
    monkeypatch.setattr(readahead, "DIRECT", False)
    data = evicted_file(path, 8 * MiB)
    f = LocalFile(str(path))
    try:
        assert read_aligned(f, len(data)) == data and f._dfd is None
    finally:
        f.close()
    monkeypatch.setattr(readahead, "DIRECT", True)
    monkeypatch.setattr(readahead, "open_direct", lambda fd: None)
    data = evicted_file(path, 8 * MiB)
    f = LocalFile(str(path))
    try:
        assert read_aligned(f, len(data)) == data and f._dfd is None and not f._try_direct
    finally:
        f.close()
    monkeypatch.undo()
    data = evicted_file(path, 8 * MiB)
    reads = Reads(monkeypatch, fail_direct=True)
    f = LocalFile(str(path))
    try:
        assert read_aligned(f, len(data)) == data
        assert not f._try_direct and len(reads.on(f._dfd)) == 1  # tried once
    finally:
        f.close()
    assert resident(path) == 0

