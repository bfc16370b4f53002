# SPDX-License-Identifier: Apache-2.0
"""readahead: advise is a hint that never changes what is read and starts no I/O by itself; release
drops every page read behind the reader; both are refused quietly by descriptors that take no advice
(a pipe) and loudly for a bad descriptor; READ_CHUNK fits the digest block and O_DIRECT alignment."""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import random
import socket
import subprocess
import time
from pathlib import Path

import pytest

from _env import missing, need_tools
from euca2kvm.export.digest import DIGEST_BLOCK
from euca2kvm.readahead import READ_CHUNK, CacheProbe, Writeback, advise, release

MiB = 1 << 20


def _file(path: Path, size: int) -> bytes:
    data = random.Random(size).randbytes(size)
    path.write_bytes(data)
    return data


def test_advised_file_reads_back_every_byte_unchanged(tmp_path: Path) -> None:
    src = tmp_path / "src"
    data = _file(src, 2 * READ_CHUNK + 12345)  # a short last chunk
    before = os.stat(src)
    fd = os.open(src, os.O_RDONLY)
    try:
        assert advise(fd) is True
        assert advise(fd, 4096, 8192) is True  # a range, as a worker advises its share
        buf = bytearray(READ_CHUNK)
        view = memoryview(buf)
        h = hashlib.sha256()
        off = 0
        while n := os.preadv(fd, [view], off):
            h.update(view[:n])
            off += n
    finally:
        os.close(fd)
    assert off == len(data)
    assert h.digest() == hashlib.sha256(data).digest()
    after = os.stat(src)
    assert (after.st_size, after.st_mtime_ns, after.st_ctime_ns) == (before.st_size, before.st_mtime_ns,
                                                                     before.st_ctime_ns)


def test_advice_starts_no_read_by_itself(tmp_path: Path) -> None:
    """Unlike WILLNEED or readahead(2), which the study found slower, the hint reads nothing up front."""
    need_tools("fincore")
    src = tmp_path / "src"
    _file(src, 8 * MiB)
    fd = os.open(src, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)

        if _cached(src) != 0:
            missing("the page cache kept the file's pages (nothing to compare against)")
        assert advise(fd) is True
        assert _cached(src) == 0
        os.pread(fd, 4096, 0)  # a read does go through the cache (the check can see pages)
        assert _cached(src) > 0
    finally:
        os.close(fd)


def _cached(path: Path) -> int:
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    return int(out.split()[0])


def test_release_behind_the_reader_leaves_no_page_cached_and_the_bytes_unchanged(tmp_path: Path) -> None:
    need_tools("fincore")
    src = tmp_path / "src"
    data = _file(src, 3 * READ_CHUNK + 777)
    os.sync()  # clean pages: DONTNEED drops only those
    fd = os.open(src, os.O_RDONLY)
    try:
        advise(fd)
        view = memoryview(bytearray(READ_CHUNK))
        h = hashlib.sha256()
        off = 0
        while n := os.preadv(fd, [view], off):
            h.update(view[:n])
            release(fd, off, n)
            off += n
        # every block read was dropped, and readahead found nothing beyond the end of the file
        assert _cached(src) == 0
        assert h.digest() == hashlib.sha256(data).digest()
        assert os.pread(fd, len(data) + 1, 0) == data  # a later reader gets the same bytes from the disk
    finally:
        os.close(fd)


def test_pipe_and_socket_take_no_advice_and_still_read() -> None:
    r, w = os.pipe()
    a, b = socket.socketpair()
    try:
        assert advise(r) is False  # ESPIPE
        assert advise(a.fileno()) in (True, False)  # the kernel may accept it and ignore it: never an error
        release(r, 0, 4096)  # refused quietly too
        os.write(w, b"still readable")
        assert os.read(r, 64) == b"still readable"
    finally:
        for fd in (r, w):
            os.close(fd)
        a.close()
        b.close()


def test_bad_descriptor_and_negative_range_are_errors(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY)
    os.close(fd)
    for call in (lambda: advise(fd), lambda: release(fd, 0, 4096)):
        with pytest.raises(OSError) as e:
            call()
        assert e.value.errno == errno.EBADF
    src = tmp_path / "f"
    _file(src, 4096)
    fd = os.open(src, os.O_RDONLY)
    try:
        with pytest.raises(ValueError):
            advise(fd, -1, 0)
        with pytest.raises(ValueError):
            advise(fd, 0, -4096)
        with pytest.raises(ValueError):
            release(fd, 0, 0)
    finally:
        os.close(fd)


def test_read_chunk_is_whole_digest_blocks_and_direct_io_aligned() -> None:
    assert READ_CHUNK > 0
    assert DIGEST_BLOCK % READ_CHUNK == 0 or READ_CHUNK % DIGEST_BLOCK == 0
    assert READ_CHUNK % mmap.PAGESIZE == 0
    assert READ_CHUNK % 4096 == 0  # the largest logical block size O_DIRECT may need


def test_writeback_starts_without_waiting_and_stops_where_refused(tmp_path: Path) -> None:
    """Writeback.start makes the kernel write a dirty range back now (dirty pages reach 0 long before
    the 30 s dirty expiry); a pipe gets no kicker; a refused call turns kicking off and raises nothing."""
    data = _file(tmp_path / "seed", 8 * MiB)
    fd = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, data, 0)
        probe = CacheProbe(fd)
        if probe.dirty(0, len(data)) is None:
            missing("no cachestat(2) here: the dirty pages cannot be counted")
        wb = Writeback.of_file(fd)
        assert wb is not None and wb.start(0, len(data)) is True
        deadline = time.monotonic() + 20
        while probe.dirty(0, len(data)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert probe.dirty(0, len(data)) == 0
        assert os.pread(fd, len(data), 0) == data
        wb._fd = -1  # EBADF from the kernel: refused, quietly, and never tried again
        assert wb.start(0, 4096) is False and wb.enabled is False
        assert wb.start(0, 4096) is False
    finally:
        os.close(fd)
    r, w = os.pipe()
    try:
        assert Writeback.of_file(w) is None
    finally:
        os.close(r)
        os.close(w)
