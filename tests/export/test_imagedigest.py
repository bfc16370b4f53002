# SPDX-License-Identifier: Apache-2.0
"""image_digest: every image format qemu writes digests to the same value as the raw source
(by copy_blocks and by the documented hashlib recipe); damaged images and misbehaving NBD
servers fail with project errors, never hang, and leave no qemu-nbd behind."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests._env import need_tools

from euca2kvm.errors import Euca2kvmError, FormatError, IOFailure, ToolError, UnsupportedError, UsageError, VerifyError
from euca2kvm.export import imagedigest, imagemap, nbd, nbdproto
from euca2kvm.export.copy import copy_blocks
from euca2kvm.export.digest import BlockDigest
from euca2kvm.export.imagedigest import image_digest
from euca2kvm.export.nbdclient import NbdClient
from euca2kvm.lvm.extents import ExtentMap, FillMapper, Kind, LinearMapper
from euca2kvm.lvm.source import LvmSource
from refdigest import blkdigest

KiB, MiB = 1 << 10, 1 << 20
# 41 MiB + 7 sectors: not a multiple of the 4 MiB digest block (a short last block).
SIZE = 41 * MiB + 3584
# (offset, length, kind) written into the sparse source; everything else is a hole. Blocks 2 and
# 3 (8-16 MiB) are holes, block 4 is explicit zeros, the last block ends with data.
LAYOUT = [
    (0, 5 * MiB, "random"),
    (16 * MiB, 4 * MiB, "zeros"),
    (21 * MiB + 4 * KiB, 3 * MiB, "random"),
    (26 * MiB, 2 * MiB, "text"),  # compressible, so -c really compresses something
    (30 * MiB + 512, 200 * KiB, "random"),
    (SIZE - 700 * KiB, 700 * KiB, "random"),
]
QEMU_TIMEOUT = 120  # seconds for a qemu-img/qemu-io call on these small images


def _qemu(*argv: str) -> None:
    subprocess.run(argv, check=True, timeout=QEMU_TIMEOUT, stdin=subprocess.DEVNULL, capture_output=True)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    need_tools("qemu-img", "qemu-nbd")
    rnd = random.Random(20250101)
    words = [rnd.randbytes(6).hex().encode() for _ in range(64)]
    path = tmp_path_factory.mktemp("imagedigest") / "source.raw"
    data = bytearray(SIZE)
    with open(path, "wb") as f:
        f.truncate(SIZE)
        for off, n, kind in LAYOUT:
            if kind == "random":
                chunk = rnd.randbytes(n)
            elif kind == "zeros":
                chunk = bytes(n)
            else:
                chunk = b" ".join(rnd.choice(words) for _ in range(n // 8))[:n].ljust(n, b".")
            f.seek(off)
            f.write(chunk)
            data[off : off + n] = chunk
    return path, bytes(data)


@pytest.fixture(autouse=True)
def no_stray_qemu_nbd(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Record every private socket directory; after the test, no qemu-nbd serves one and all are gone."""
    dirs: list[str] = []
    real = tempfile.mkdtemp

    def mkdtemp(*args: object, **kwargs: object) -> str:
        d = real(*args, **kwargs)  # type: ignore[call-overload]
        dirs.append(d)
        return str(d)

    monkeypatch.setattr(imagedigest.tempfile, "mkdtemp", mkdtemp)
    yield dirs
    for d in dirs:
        found = subprocess.run(["pgrep", "-f", os.path.join(d, "nbd.sock")], capture_output=True, text=True)
        assert found.stdout == "", f"qemu-nbd still serving {d}: {found.stdout}"
        assert not os.path.exists(d), f"{d} not removed"


# (name, qemu-img convert arguments, fmt to pass to image_digest)
FORMATS = [
    ("qcow2", ["-O", "qcow2"], None),
    ("qcow2-compressed", ["-O", "qcow2", "-c"], None),
    ("vmdk-monolithicSparse", ["-O", "vmdk", "-o", "subformat=monolithicSparse"], None),
    ("vmdk-streamOptimized", ["-O", "vmdk", "-o", "subformat=streamOptimized"], None),
    ("vhdx", ["-O", "vhdx"], None),
    ("vpc-dynamic", ["-O", "vpc", "-o", "subformat=dynamic,force_size=on"], None),
    ("vpc-fixed", ["-O", "vpc", "-o", "subformat=fixed,force_size=on"], "vpc"),  # qemu probes it as raw
    ("vdi", ["-O", "vdi"], None),
    ("raw", ["-O", "raw"], None),
]


@pytest.fixture(scope="module")
def expected(source: tuple[Path, bytes]) -> tuple[str, str]:
    path, data = source
    want = blkdigest(data)
    emap = ExtentMap(SIZE, [LinearMapper(0, SIZE, str(path), 0)])
    res = copy_blocks(LvmSource(emap), None, sha256=True, workers=2)
    assert res.digest == want  # the project's own mover agrees with the recipe
    assert res.sha256 == hashlib.sha256(data).hexdigest()
    return want, hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(("name", "args", "fmt"), FORMATS, ids=[f[0] for f in FORMATS])
def test_every_format_digests_like_its_raw_source(source: tuple[Path, bytes], expected: tuple[str, str],
                                                  tmp_path: Path, name: str, args: list[str],
                                                  fmt: str | None) -> None:
    img = tmp_path / f"disk.{name}"
    _qemu("qemu-img", "convert", "-f", "raw", *args, str(source[0]), str(img))
    seen: list[int] = []
    got = image_digest(str(img), fmt, sha256=True, workers=3, progress=seen.append)
    assert (got.digest, got.sha256, got.size) == (*expected, SIZE)
    assert sum(seen) == SIZE and len(seen) == (SIZE + 4 * MiB - 1) // (4 * MiB)
    assert image_digest(str(img), fmt, workers=1).digest == expected[0]  # one reader, no plain sha256


# Formats whose guest bytes qemu-img map places in the file (read without qemu-nbd); the others
# (compressed clusters, vhdx) are read through qemu-nbd.
MAPPED = {"qcow2", "vmdk-monolithicSparse", "vpc-dynamic", "vpc-fixed", "vdi"}


@pytest.mark.parametrize(("name", "args", "fmt"), [f for f in FORMATS if f[0] != "raw"],
                         ids=[f[0] for f in FORMATS if f[0] != "raw"])
def test_mapped_and_qemu_nbd_reads_agree(source: tuple[Path, bytes], expected: tuple[str, str], tmp_path: Path,
                                         no_stray_qemu_nbd: list[str], monkeypatch: pytest.MonkeyPatch,
                                         name: str, args: list[str], fmt: str | None) -> None:
    img = tmp_path / f"disk.{name}"
    _qemu("qemu-img", "convert", "-f", "raw", *args, str(source[0]), str(img))
    got = image_digest(str(img), fmt, sha256=True, workers=2)
    assert (got.digest, got.sha256, got.size) == (*expected, SIZE)
    assert (not no_stray_qemu_nbd) == (name in MAPPED)  # qemu-nbd started only where the map cannot do
    monkeypatch.setattr(imagemap, "file_mappers", lambda *a: None)
    assert image_digest(str(img), fmt, workers=2).digest == expected[0]
    assert no_stray_qemu_nbd


def _entry(start: int, length: int, **kw: object) -> dict[str, object]:
    return {"start": start, "length": length, "depth": 0, "present": True, "zero": False, "data": True, **kw}


HALF = SIZE // 2
# Maps no reader may trust: each makes image_digest read through qemu-nbd instead.
HOSTILE_MAPS = {
    "offset past the end of the file": [_entry(0, SIZE, offset=1 << 40)],
    "negative offset": [_entry(0, SIZE, offset=-4096)],
    "no offset": [_entry(0, SIZE)],
    "offset not an integer": [_entry(0, SIZE, offset=True)],
    "gap": [_entry(0, HALF, zero=True, data=False), _entry(HALF + 512, SIZE - HALF - 512, zero=True, data=False)],
    "overlap": [_entry(0, HALF, zero=True, data=False), _entry(HALF - 512, SIZE - HALF + 512, zero=True, data=False)],
    "short": [_entry(0, HALF, zero=True, data=False)],
    "zero length": [_entry(0, 0, zero=True), _entry(0, SIZE, zero=True, data=False)],
    "backing layer": [_entry(0, SIZE, zero=True, data=False, depth=1)],
    "another file": [_entry(0, SIZE, offset=0, filename="/etc/passwd")],
    "compressed": [_entry(0, SIZE, offset=0, compressed=True)],
    "neither data nor zeros": [_entry(0, SIZE, data=False)],
    "not a list of objects": ["0 41943552"],
}


@pytest.mark.parametrize("case", list(HOSTILE_MAPS))
def test_untrusted_map_falls_back_to_qemu_nbd(source: tuple[Path, bytes], expected: tuple[str, str],
                                              tmp_path: Path, no_stray_qemu_nbd: list[str],
                                              monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    img = tmp_path / "disk.qcow2"
    _qemu("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(source[0]), str(img))
    monkeypatch.setattr(imagemap.qemu_img, "map", lambda *a, **kw: HOSTILE_MAPS[case])
    assert image_digest(str(img), workers=2).digest == expected[0]
    assert no_stray_qemu_nbd  # read through qemu-nbd


def test_map_output_is_bounded(source: tuple[Path, bytes], expected: tuple[str, str], tmp_path: Path,
                               no_stray_qemu_nbd: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    img = tmp_path / "disk.qcow2"
    _qemu("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(source[0]), str(img))
    monkeypatch.setattr(imagemap, "MAX_MAP_OUTPUT", 64)  # the real map is longer: read through qemu-nbd
    assert image_digest(str(img), workers=2).digest == expected[0]
    assert no_stray_qemu_nbd


def test_mapped_digest_of_a_disk_smaller_than_the_image(tmp_path: Path, no_stray_qemu_nbd: list[str]) -> None:
    """qemu rounds a disk up to whole sectors: the digest covers the disk, the rest must be zeros."""
    size = 5 * MiB + 100
    data = random.Random(3).randbytes(size)
    raw = tmp_path / "disk.raw"
    raw.write_bytes(data + bytes(412))
    img = tmp_path / "disk.qcow2"
    _qemu("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(img))
    assert image_digest(str(img), size=size).digest == blkdigest(data)
    _qemu("qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a {size + 7} 1", str(img))
    with pytest.raises(VerifyError):
        image_digest(str(img), size=size)
    assert not no_stray_qemu_nbd


def test_fixed_vhd_probed_as_raw_includes_the_footer(source: tuple[Path, bytes], tmp_path: Path) -> None:
    img = tmp_path / "fixed.vhd"
    _qemu("qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed,force_size=on",
          str(source[0]), str(img))
    got = image_digest(str(img))  # documented: without fmt="vpc" the footer is digested too
    assert got.size == SIZE + 512
    assert got.digest == blkdigest(img.read_bytes())


def test_flipped_byte_changes_the_digest(source: tuple[Path, bytes], expected: tuple[str, str],
                                         tmp_path: Path) -> None:
    img = tmp_path / "flip.qcow2"
    _qemu("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(source[0]), str(img))
    off = 9 * MiB + 12345  # inside a hole block that is otherwise skipped
    _qemu("qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a {off} 1", str(img))
    data = bytearray(source[1])
    data[off] = 0x5A
    got = image_digest(str(img), sha256=True)
    assert got.digest != expected[0]
    assert got.digest == blkdigest(bytes(data))
    assert got.sha256 == hashlib.sha256(data).hexdigest()


def test_truncated_qcow2_is_a_format_error(source: tuple[Path, bytes], tmp_path: Path) -> None:
    img = tmp_path / "trunc.qcow2"
    _qemu("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(source[0]), str(img))
    os.truncate(img, os.path.getsize(img) // 3)  # qemu alone would read the lost clusters as zeros
    with pytest.raises(FormatError, match="corruption"):
        image_digest(str(img))


def test_bad_header_is_a_tool_error(source: tuple[Path, bytes], tmp_path: Path) -> None:
    img = tmp_path / "header.qcow2"
    _qemu("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(source[0]), str(img))
    with open(img, "r+b") as f:
        f.seek(40)  # l1_table_offset
        f.write(b"\xff" * 8)
    with pytest.raises(ToolError, match="L1"):
        image_digest(str(img))


def test_corrupt_compressed_cluster_fails_the_read(source: tuple[Path, bytes], tmp_path: Path) -> None:
    """qemu-img check does not inflate clusters; qemu-nbd fails the read and drops the client."""
    text = tmp_path / "text.raw"
    text.write_bytes(source[1][26 * MiB : 28 * MiB])
    img = tmp_path / "bad.qcow2"
    _qemu("qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-c", str(text), str(img))
    size = os.path.getsize(img)
    with open(img, "r+b") as f:
        f.seek(size * 7 // 10)
        f.write(b"\xa5" * 4096)
    start = time.monotonic()
    with pytest.raises((ToolError, IOFailure), match="Input/output error"):
        image_digest(str(img), workers=2)
    assert time.monotonic() - start < 30


def test_aborted_digest_stops_qemu_nbd(source: tuple[Path, bytes], tmp_path: Path,
                                       no_stray_qemu_nbd: list[str]) -> None:
    img = tmp_path / "abort.vhdx"  # vhdx maps no file offsets: read through qemu-nbd
    _qemu("qemu-img", "convert", "-f", "raw", "-O", "vhdx", str(source[0]), str(img))

    def progress(n: int) -> None:
        assert no_stray_qemu_nbd and os.path.exists(os.path.join(no_stray_qemu_nbd[-1], "nbd.sock"))
        assert os.stat(no_stray_qemu_nbd[-1]).st_mode & 0o777 == 0o700  # private socket directory
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        image_digest(str(img), progress=progress)
    assert len(no_stray_qemu_nbd) == 1  # the autouse fixture checks the process and the directory


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        image_digest(str(tmp_path / "missing.qcow2"))
    with pytest.raises(UsageError):
        image_digest(str(tmp_path))
    (tmp_path / "x.img").write_bytes(b"")
    with pytest.raises(UsageError, match="unsupported image format"):
        image_digest(str(tmp_path / "x.img"), "raw,file.filename=/etc/shadow")
    empty = image_digest(str(tmp_path / "x.img"), sha256=True)
    assert (empty.digest, empty.sha256, empty.size) == (BlockDigest().hexdigest(), hashlib.sha256().hexdigest(), 0)


def test_backing_file_refused(source: tuple[Path, bytes], tmp_path: Path) -> None:
    base = tmp_path / "base.qcow2"
    _qemu("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(source[0]), str(base))
    top = tmp_path / "top.qcow2"
    _qemu("qemu-img", "create", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(top))
    with pytest.raises(UnsupportedError, match="backing file"):
        image_digest(str(top))


# -- the NBD client against the project's own server and against scripted misbehaviour -------------


def test_client_reads_and_maps_the_project_server(tmp_path: Path) -> None:
    blob = random.Random(5).randbytes(3 * MiB)
    (tmp_path / "d.bin").write_bytes(blob)
    emap = ExtentMap(6 * MiB, [LinearMapper(0, 2 * MiB, str(tmp_path / "d.bin"), 0),
                               FillMapper(2 * MiB, 3 * MiB, Kind.ZERO),
                               LinearMapper(5 * MiB, MiB, str(tmp_path / "d.bin"), 2 * MiB)])
    with nbd.serve(LvmSource(emap)) as server, NbdClient(server.sock_path) as c:
        assert (c.size, c.base_allocation) == (6 * MiB, True)
        assert [(r.start, r.length, r.kind) for r in c.ranges(0, c.size, 4 * MiB)] == [
            (0, 2 * MiB, Kind.DATA), (2 * MiB, 3 * MiB, Kind.HOLE), (5 * MiB, MiB, Kind.DATA)]
        buf = bytearray(6 * MiB)
        c.read_into(0, memoryview(buf))  # hole chunks for the zero extent
        assert bytes(buf) == blob[: 2 * MiB] + bytes(3 * MiB) + blob[2 * MiB :]
        with pytest.raises(ToolError, match="outside the export"):
            c.read_into(6 * MiB - 1, memoryview(bytearray(2)))
    assert not server.failures


def _greeting_and_options(conn: socket.socket) -> None:
    """Server side of a correct handshake: STRUCTURED_REPLY, base:allocation as id 1, GO."""
    conn.sendall(struct.pack(">QQH", nbdproto.NBDMAGIC, nbdproto.IHAVEOPT, 3))
    conn.recv(4)
    while True:
        _, opt, length = struct.unpack(">QII", _recv(conn, 16))
        _recv(conn, length)
        if opt == nbdproto.OPT_SET_META_CONTEXT:
            payload = struct.pack(">I", 1) + nbdproto.BASE_ALLOCATION
            head = struct.pack(">QIII", nbdproto.REPLY_MAGIC, opt, nbdproto.REP_META_CONTEXT, len(payload))
            conn.sendall(head + payload)
        if opt == nbdproto.OPT_GO:
            info = struct.pack(">HQH", nbdproto.INFO_EXPORT, 8 * MiB, 1 | 2)
            conn.sendall(struct.pack(">QIII", nbdproto.REPLY_MAGIC, opt, nbdproto.REP_INFO, len(info)) + info)
        conn.sendall(struct.pack(">QIII", nbdproto.REPLY_MAGIC, opt, nbdproto.REP_ACK, 0))
        if opt == nbdproto.OPT_GO:
            return


def _recv(conn: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        k = conn.recv(n - len(out))
        if not k:
            raise ConnectionError
        out += k
    return out


def _chunk(flags: int, rtype: int, handle: int, payload: bytes) -> bytes:
    return struct.pack(">IHHQI", nbdproto.STRUCTURED_MAGIC, flags, rtype, handle, len(payload)) + payload


@contextlib.contextmanager
def _scripted(tmp_path: Path, reply: Callable[[socket.socket, int, int, int], None]) -> Iterator[str]:
    """A one-connection server: correct handshake, then ``reply(conn, handle, offset, length)``."""
    path = str(tmp_path / "fake.sock")
    lsock = socket.socket(socket.AF_UNIX)
    lsock.bind(path)
    lsock.listen(1)
    done = threading.Event()

    def run() -> None:
        conn, _ = lsock.accept()
        with conn, contextlib.suppress(OSError):
            _greeting_and_options(conn)
            _, _, _, handle, offset, length = struct.unpack(">IHHQQI", _recv(conn, 28))
            reply(conn, handle, offset, length)
            done.wait(10)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield path
    finally:
        done.set()
        t.join(10)
        lsock.close()


def _data_header(h: int, o: int, n: int) -> bytes:
    """A data chunk header announcing ``n`` bytes at ``o`` (the bytes themselves not sent)."""
    return struct.pack(">IHHQIQ", nbdproto.STRUCTURED_MAGIC, 1, nbdproto.REPLY_OFFSET_DATA, h, 8 + n, o)


def _hole(h: int, o: int, n: int) -> bytes:
    return _chunk(1, nbdproto.REPLY_OFFSET_HOLE, h, struct.pack(">QI", o, n))


# case: (server reply to a 64 KiB read at 0, expected message)
VIOLATIONS: dict[str, tuple[Callable[[socket.socket, int, int, int], None], str]] = {
    "wrong handle": (lambda c, h, o, n: c.sendall(_hole(h + 1, o, n)), "reply for handle"),
    "oversized data chunk": (lambda c, h, o, n: c.sendall(_data_header(h, o, n + 1)), "data chunk of"),
    "hole outside the read": (lambda c, h, o, n: c.sendall(_hole(h, o + 1, n)), "outside the read"),
    "gap": (lambda c, h, o, n: c.sendall(_hole(h, o, n - 1)), "covers 65535 of 65536"),
    "bad magic": (lambda c, h, o, n: c.sendall(b"\0" * 32), "bad reply magic"),
    "hang up": (lambda c, h, o, n: c.shutdown(socket.SHUT_RDWR), "closed the connection"),
    "stall": (lambda c, h, o, n: c.sendall(_data_header(h, o, n)), "timed out"),
}


@pytest.mark.parametrize("case", list(VIOLATIONS))
def test_client_rejects_protocol_violations_without_hanging(tmp_path: Path, case: str) -> None:
    reply, message = VIOLATIONS[case]
    with _scripted(tmp_path, reply) as path:
        c = NbdClient(path, request_timeout=1.0)
        start = time.monotonic()
        with pytest.raises(ToolError, match=message):
            c.read_into(0, memoryview(bytearray(64 * KiB)))
        assert time.monotonic() - start < 5
        with pytest.raises(ToolError, match="unusable"):
            c.read_into(0, memoryview(bytearray(512)))
        c.close()


def test_client_reports_error_chunks(tmp_path: Path) -> None:
    def reply(c: socket.socket, h: int, o: int, n: int) -> None:
        msg = b"bad sector\x1b[2J"
        c.sendall(_chunk(1, nbdproto.REPLY_ERROR, h, struct.pack(">IH", 5, len(msg)) + msg))

    with (_scripted(tmp_path, reply) as path, NbdClient(path) as c,
          pytest.raises(IOFailure, match=r"Input/output error \(bad sector\?\[2J\)")):
        c.read_into(0, memoryview(bytearray(4096)))


def test_not_an_nbd_server(tmp_path: Path) -> None:
    path = str(tmp_path / "junk.sock")
    with socket.socket(socket.AF_UNIX) as lsock:
        lsock.bind(path)
        lsock.listen(1)

        def junk() -> None:
            conn, _ = lsock.accept()
            with conn:
                conn.sendall(b"HTTP/1.0 200 OK\r\n\r\n")
                time.sleep(0.5)

        t = threading.Thread(target=junk, daemon=True)
        t.start()
        with pytest.raises(ToolError, match="not an NBD"):
            NbdClient(path, connect_timeout=2.0)
        t.join(5)
    with pytest.raises(Euca2kvmError):
        NbdClient(str(tmp_path / "nobody.sock"))
