# SPDX-License-Identifier: Apache-2.0
"""Page-cache behaviour of local source files: drop-behind releases what was read, only when asked."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from _env import missing, need_tools
from euca2kvm.lvm.source import LocalFile

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


@pytest.mark.parametrize("drop", [True, False])
def test_drop_behind_releases_what_was_read_and_only_then(tmp_path: Path, drop: bool) -> None:
    path = tmp_path / "src.img"
    data = cached_file(path, 8 * MiB + 4096)
    f = LocalFile(str(path), drop_behind=drop)
    try:
        assert read_all(f, len(data)) == data
    finally:
        f.close()
    pages = resident(path)
    if drop:
        assert pages == 0
    else:
        assert pages >= len(data) // PAGE // 2


@pytest.mark.parametrize("drop", [True, False])
def test_export_drop_behind_option(tmp_path: Path, drop: bool) -> None:
    vols = tmp_path / "volumes"
    vols.mkdir()
    src = vols / "snap-0dd0b0b1"
    data = cached_file(src, 12 * MiB)
    out = tmp_path / "out"
    out.mkdir()
    (out / "snap-0dd0b0b1.raw").write_bytes(os.urandom(MiB))  # garbage under the final name
    p = subprocess.run([sys.executable, "-m", "euca2kvm", "export", "snap-0dd0b0b1", "--source", str(vols), "-o",
                        str(out), *(["--drop-behind"] if drop else [])], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert (out / "snap-0dd0b0b1.raw").read_bytes() == data
    pages = resident(src)
    assert pages == 0 if drop else pages >= len(data) // PAGE // 2
