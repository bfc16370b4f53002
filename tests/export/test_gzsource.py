# SPDX-License-Identifier: Apache-2.0
"""gzip'd snapshot objects (concatenated gzip members, as a multipart snapshot upload) as a source."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import subprocess
import tracemalloc
import zlib
from pathlib import Path

import pytest

from _env import need_tools
from euca2kvm.errors import FormatError
from euca2kvm.export import manifest
from euca2kvm.export.formats import output_format
from euca2kvm.export.gzsource import GzResult, decompress, export_gz, gz_id, is_gzip, split_sources
from euca2kvm.export.pipeline import ExportOptions
from refdigest import blkdigest

MiB = 1 << 20
PART = 5 * MiB  # uncompressed bytes per gzip member (Eucalyptus uses snapshot_part_size_mb, 100 by default)


def disk_image(size: int = 24 * MiB + 12345) -> bytes:
    """Data, long zero runs (holes in a sparse copy) and an odd size."""
    rng = random.Random("gzsource")
    img = bytearray(size)
    for off in (0, 3 * MiB - 100, 9 * MiB + 4097, size - 70000):
        n = min(200_000, size - off)
        img[off : off + n] = rng.randbytes(n)
    return bytes(img)


def multipart_gz(path: Path, data: bytes, part: int = PART) -> int:
    """One fresh gzip member per part, concatenated; returns the member count."""
    with open(path, "wb") as f:
        for i in range(0, len(data), part):
            f.write(gzip.compress(data[i : i + part], compresslevel=1, mtime=0))
    return (len(data) + part - 1) // part


def inflate(path: Path, into: Path) -> GzResult:
    """decompress() into a new file ``into``."""
    fd = os.open(into, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        return decompress(str(path), fd)
    finally:
        os.close(fd)


@pytest.fixture
def snap(tmp_path: Path) -> tuple[Path, bytes, int]:
    data = disk_image()
    p = tmp_path / "snap-5e6f7a8b.gz"
    members = multipart_gz(p, data)
    return p, data, members


def test_raw_export_is_exact_sparse_and_digested(snap: tuple[Path, bytes, int], tmp_path: Path) -> None:
    path, data, members = snap
    assert members == 5 and gz_id(str(path)) == "snap-5e6f7a8b" and is_gzip(str(path))
    out = tmp_path / "out"
    out.mkdir()
    entry, reused = export_gz(str(path), out, ExportOptions(fmt=output_format("raw"), sha256=True))
    img = out / "snap-5e6f7a8b.raw"
    assert not reused and img.read_bytes() == data
    assert entry["digest"] == blkdigest(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert entry["gzip_members"] == members and entry["size"] == len(data) and entry["files"] == [str(path)]
    assert img.stat().st_blocks * 512 < len(data) // 2  # zero runs stayed holes
    assert entry["bytes_written"] < len(data) // 2
    assert [e["id"] for e in manifest.load(out)["volumes"]] == ["snap-5e6f7a8b"]
    again, reused = export_gz(str(path), out, ExportOptions(fmt=output_format("raw")))
    assert reused and again["digest"] == entry["digest"]


def test_qcow2_goes_through_a_raw_temporary(snap: tuple[Path, bytes, int], tmp_path: Path) -> None:
    need_tools("qemu-img")
    path, data, _ = snap
    out = tmp_path / "out"
    out.mkdir()
    entry, _ = export_gz(str(path), out, ExportOptions(fmt=output_format("qcow2")))
    assert entry["format"] == "qcow2" and entry["digest"] == blkdigest(data) and entry["verified"]
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        "snap-5e6f7a8b.qcow2",
    ]  # temp raw removed
    raw = tmp_path / "back.raw"
    subprocess.run(
        ["qemu-img", "convert", "-O", "raw", str(out / "snap-5e6f7a8b.qcow2"), str(raw)],
        check=True,
        timeout=60,
    )
    back = raw.read_bytes()  # qemu-img sizes images in 512-byte sectors: an odd tail reads back zero-padded
    assert (
        back[: len(data)] == data
        and len(back) == -(-len(data) // 512) * 512
        and not back[len(data) :].strip(b"\0")
    )


def test_explicit_file_with_gzip_magic_and_directory_scan(
    snap: tuple[Path, bytes, int], tmp_path: Path
) -> None:
    path, data, _ = snap
    other = tmp_path / "download.bin"
    other.write_bytes(path.read_bytes())
    plain = tmp_path / "plain.img"
    plain.write_bytes(b"\0" * 4096)
    gz, rest = split_sources([str(other), str(plain), str(tmp_path)])
    assert gz == [str(other.resolve()), str(path.resolve())] and rest == [str(plain), str(tmp_path)]
    assert gz_id(str(other)) == "download.bin"


def test_bounded_memory_on_a_highly_compressible_stream(tmp_path: Path) -> None:
    """256 MiB of zeros compress to ~250 KiB; decompression must not hold them in memory."""
    p = tmp_path / "snap-000000aa.gz"
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    with open(p, "wb") as f:
        chunk = bytes(MiB)
        for _ in range(256):
            f.write(comp.compress(chunk))
        f.write(comp.flush())
    tracemalloc.start()
    try:
        res = inflate(p, tmp_path / "z.raw")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert res.size == 256 * MiB and res.digest == blkdigest(bytes(256 * MiB))
    assert peak < 24 * MiB, peak


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda b: b[:-20], "truncated"),
        (lambda b: b + b"garbage!", "not a gzip member after gzip member 5"),
        (lambda b: b[:100] + bytes([b[100] ^ 0xFF]) + b[101:], "corrupt|truncated|not a gzip"),
        (lambda b: b"", "empty"),
    ],
)
def test_damaged_objects_are_refused(
    snap: tuple[Path, bytes, int], tmp_path: Path, damage: object, match: str
) -> None:
    path, _, _ = snap
    bad = tmp_path / "snap-bad00000.gz"
    bad.write_bytes(damage(path.read_bytes()))  # type: ignore[operator]
    with pytest.raises(FormatError, match=match):
        inflate(bad, tmp_path / "bad.raw")


def test_zero_padding_after_the_last_member_is_ignored(snap: tuple[Path, bytes, int], tmp_path: Path) -> None:
    path, data, _ = snap
    padded = tmp_path / "snap-0000000b.gz"
    padded.write_bytes(path.read_bytes() + bytes(1000))
    assert inflate(padded, tmp_path / "p.raw").digest == blkdigest(data)


def test_plan_lists_gzip_objects_and_writes_nothing(snap: tuple[Path, bytes, int], tmp_path: Path) -> None:
    import sys

    path, _, _ = snap
    out = tmp_path / "planned"
    p = subprocess.run(
        [sys.executable, "-m", "euca2kvm", "plan", "--source", str(path), "-o", str(out), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    (g,) = json.loads(p.stdout)["gzip_objects"]
    assert (g["id"], g["file"], g["compressed_bytes"]) == ("snap-5e6f7a8b", str(path), path.stat().st_size)
    assert not out.exists()
