# SPDX-License-Identifier: Apache-2.0
"""NBD server: qemu-img reads hand-built extent maps byte-exactly; protocol edge cases never
crash the server."""

from __future__ import annotations

import hashlib
import os
import random
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests._env import need_tools

from euca2kvm.errors import IOFailure, UsageError
from euca2kvm.export import nbdproto, qemu_img
from euca2kvm.export.nbd import NbdServer, serve
from euca2kvm.lvm.extents import ExtentMap, FillMapper, Kind, LinearMapper, StripedMapper
from euca2kvm.lvm.source import LocalFile, LvmSource

KiB, MiB = 1 << 10, 1 << 20
CHUNK = 64 * KiB


@pytest.fixture(autouse=True)
def _qemu() -> None:
    need_tools("qemu-img")


class Layout:
    """Two 4 MiB files of pseudo-random bytes and a 6 MiB map over them, with the expected bytes
    assembled here by slicing, independently of the mappers."""

    def __init__(self, root: Path) -> None:
        rnd = random.Random(20240611)
        self.a, self.b = root / "a.bin", root / "b.bin"
        da, db = rnd.randbytes(4 * MiB), rnd.randbytes(4 * MiB)
        self.a.write_bytes(da)
        self.b.write_bytes(db)
        a, b = str(self.a), str(self.b)
        striped = bytearray()
        for c in range(2 * MiB // CHUNK):  # chunk c: file a if even, b if odd; row c // 2
            row = c // 2 * CHUNK
            striped += da[MiB + row : MiB + row + CHUNK] if c % 2 == 0 else db[row : row + CHUNK]
        self.zero_ranges = [(MiB, 2 * MiB), (4 * MiB + 512 * KiB, 5 * MiB), (5 * MiB + CHUNK, 5 * MiB + 72 * KiB)]
        self.mappers = [
            LinearMapper(0, MiB, a, 0),
            FillMapper(MiB, MiB, Kind.ZERO),
            StripedMapper(2 * MiB, 2 * MiB, CHUNK, ((a, MiB), (b, 0))),
            LinearMapper(4 * MiB, 512 * KiB, b, 2 * MiB + 4608),  # unaligned source offset
            FillMapper(4 * MiB + 512 * KiB, 512 * KiB, Kind.ZERO),
            LinearMapper(5 * MiB, CHUNK, a, 3 * MiB),
            FillMapper(5 * MiB + CHUNK, 8 * KiB, Kind.ZERO),  # below MIN_HOLE_CHUNK
            LinearMapper(5 * MiB + 72 * KiB, MiB - 72 * KiB, b, 3 * MiB),
        ]
        self.expected = (da[:MiB] + bytes(MiB) + bytes(striped) + db[2 * MiB + 4608 : 2 * MiB + 4608 + 512 * KiB]
                         + bytes(512 * KiB) + da[3 * MiB : 3 * MiB + CHUNK] + bytes(8 * KiB)
                         + db[3 * MiB : 3 * MiB + MiB - 72 * KiB])
        self.emap = ExtentMap(6 * MiB, self.mappers)
        assert len(self.expected) == self.emap.size
        self.data_bytes = self.emap.size - sum(hi - lo for lo, hi in self.zero_ranges)
        # Sparse, like qemu-img's raw output, so that strict compare (allocation too) applies.
        self.expected_file = root / "expected.raw"
        with self.expected_file.open("wb") as f:
            pos = 0
            for lo, hi in sorted(self.zero_ranges):
                f.write(self.expected[pos:lo])
                f.seek(hi)
                pos = hi
            f.write(self.expected[pos:])

    def with_error(self) -> ExtentMap:
        """The same map with its first ZERO run turned into an error segment."""
        mappers = list(self.mappers)
        mappers[1] = FillMapper(MiB, MiB, Kind.ERROR)
        return ExtentMap(self.emap.size, mappers)


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Layout:
    return Layout(tmp_path_factory.mktemp("nbd-src"))


@pytest.fixture
def server(layout: Layout) -> Iterator[NbdServer]:
    with serve(LvmSource(layout.emap)) as srv:
        yield srv
    assert srv.failures == []
    assert not os.path.exists(srv.sock_path)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def garbage(path: Path, size: int) -> None:
    path.write_bytes(b"\xa5" * size)


# -- qemu-img over NBD --------------------------------------------------------------------------


def test_convert_raw_is_byte_exact(layout: Layout, server: NbdServer, tmp_path: Path) -> None:
    out = tmp_path / "out.raw"
    garbage(out, layout.emap.size + MiB)
    qemu_img.convert(server.uri, str(out), "raw")
    assert out.read_bytes() == layout.expected
    assert qemu_img.compare(str(layout.expected_file), str(out), strict=True, fmt_a="raw", fmt_b="raw")
    assert qemu_img.compare(server.uri, str(out), strict=True, fmt_a="raw", fmt_b="raw")
    # Block status worked: ZERO extents were never read, every DATA byte was read once.
    assert server.stats.block_status > 0
    assert server.stats.hole_bytes == 0
    assert server.stats.data_bytes <= 2 * layout.data_bytes  # convert once, compare once


@pytest.mark.parametrize(("fmt", "options"), [
    ("qcow2", {}),
    ("qcow2", {"compat": "1.1", "cluster_size": 65536}),
    ("vmdk", {"subformat": "streamOptimized"}),
    ("vmdk", {"subformat": "monolithicSparse"}),
    ("vhdx", {"subformat": "dynamic"}),
    ("vpc", {"subformat": "fixed", "force_size": True}),
    ("vpc", {"subformat": "dynamic", "force_size": True}),
    ("vdi", {"static": False}),
])
def test_convert_formats(layout: Layout, server: NbdServer, tmp_path: Path, fmt: str,
                         options: dict[str, object]) -> None:
    out = tmp_path / f"out.{fmt}"
    garbage(out, 2 * MiB)
    qemu_img.convert(server.uri, str(out), fmt, options)
    assert qemu_img.info(str(out), fmt=fmt)["virtual-size"] == layout.emap.size
    if options.get("subformat") != "fixed":  # a fixed VHD has its footer only at the end: probes as raw
        assert qemu_img.info(str(out))["format"] == fmt
    assert qemu_img.compare(str(layout.expected_file), str(out), fmt_a="raw", fmt_b=fmt)
    back = tmp_path / "back.raw"
    qemu_img.convert(str(out), str(back), "raw", src_fmt=fmt)
    assert back.read_bytes()[: layout.emap.size] == layout.expected
    assert not any(back.read_bytes()[layout.emap.size :])


def test_qcow2_map_leaves_zero_extents_unallocated(layout: Layout, server: NbdServer, tmp_path: Path) -> None:
    out = tmp_path / "out.qcow2"
    qemu_img.convert(server.uri, str(out), "qcow2", {"cluster_size": 65536}, coroutines=4)
    for lo, hi in layout.zero_ranges:
        if hi - lo < 64 * KiB:
            continue  # smaller than a cluster: shares it with data
        covering = [e for e in qemu_img.map(str(out)) if e["start"] < hi and e["start"] + e["length"] > lo]
        assert covering and all(not e["data"] and e["zero"] for e in covering), covering
    data = sum(e["length"] for e in qemu_img.map(str(out)) if e["data"])
    assert data <= layout.data_bytes + 64 * KiB
    assert server.stats.hole_bytes == 0


def test_image_opts_and_compressed(layout: Layout, server: NbdServer, tmp_path: Path) -> None:
    out = tmp_path / "out.qcow2"
    seen: list[float] = []
    qemu_img.convert(server.image_opts, str(out), "qcow2", compress=True, src_image_opts=True,
                     progress_cb=seen.append)
    assert seen and seen[-1] == 100.0
    assert qemu_img.compare(str(layout.expected_file), str(out), fmt_a="raw", fmt_b="qcow2")


def test_error_extent_fails_the_convert(layout: Layout, tmp_path: Path) -> None:
    out = tmp_path / "out.qcow2"
    with serve(LvmSource(layout.with_error())) as srv:
        with pytest.raises(IOFailure, match="Input/output error"):
            qemu_img.convert(srv.uri, str(out), "qcow2")
        with pytest.raises(IOFailure, match="Input/output error"):
            qemu_img.convert(srv.uri, str(tmp_path / "out.raw"), "raw")
    assert srv.failures == []
    assert srv.stats.errors >= 2


def test_concurrent_clients(layout: Layout, server: NbdServer, tmp_path: Path) -> None:
    results: list[bool] = []

    def one(i: int) -> None:
        out = tmp_path / f"out{i}.qcow2"
        qemu_img.convert(server.uri, str(out), "qcow2")
        results.append(qemu_img.compare(str(layout.expected_file), str(out), fmt_a="raw", fmt_b="qcow2"))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [True, True, True]
    assert server.stats.connections >= 3


# -- lifecycle ----------------------------------------------------------------------------------


def test_socket_path_rules(layout: Layout, tmp_path: Path) -> None:
    path = tmp_path / "my.sock"
    with serve(LvmSource(layout.emap), str(path), export_name="vol,1 x") as srv:
        assert path.exists()
        assert "vol%2C1%20x" in srv.uri
        out = tmp_path / "o.raw"
        qemu_img.convert(srv.uri, str(out), "raw")
        assert out.read_bytes() == layout.expected
        qemu_img.convert(srv.image_opts, str(out), "raw", src_image_opts=True)
        assert out.read_bytes() == layout.expected
        with pytest.raises(UsageError, match="exists"):
            NbdServer(layout.emap, str(path))
    assert not path.exists()
    with pytest.raises(UsageError, match="longer"):
        NbdServer(layout.emap, "/tmp/" + "x" * 200)


def test_close_does_not_hang_on_idle_clients(layout: Layout) -> None:
    with serve(LvmSource(layout.emap)) as srv:
        idle = Client(srv.sock_path)  # stuck in the handshake
        busy = Client(srv.sock_path)
        busy.go()  # in transmission, sends nothing
        time.sleep(0.2)
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 3
    assert idle.closed() and busy.closed()
    assert srv.failures == []


# -- protocol, with a hand-written client ---------------------------------------------------------


class Client:
    def __init__(self, path: str, flags: int = 3) -> None:
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(10)
        self.s.connect(path)
        magic, opt, hflags = struct.unpack(">QQH", self.recv(18))
        assert (magic, opt, hflags) == (nbdproto.NBDMAGIC, nbdproto.IHAVEOPT, 3)
        self.s.sendall(struct.pack(">I", flags))
        self.handle = 0

    def recv(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.s.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    def closed(self) -> bool:
        try:
            return self.s.recv(1) == b""
        except ConnectionResetError:
            return True

    def option(self, opt: int, data: bytes = b"", magic: int = nbdproto.IHAVEOPT) -> list[tuple[int, bytes]]:
        self.s.sendall(struct.pack(">QII", magic, opt, len(data)) + data)
        replies = []
        while True:
            rmagic, ropt, rep, n = struct.unpack(">QIII", self.recv(20))
            assert (rmagic, ropt) == (nbdproto.REPLY_MAGIC, opt)
            replies.append((rep, self.recv(n)))
            if rep == nbdproto.REP_ACK or rep & 2**31:
                return replies

    def go(self, structured: bool = True, meta: bool = True, name: bytes = b"") -> None:
        head = struct.pack(">I", len(name)) + name
        if structured:
            assert self.option(nbdproto.OPT_STRUCTURED_REPLY) == [(nbdproto.REP_ACK, b"")]
        if meta:
            q = nbdproto.BASE_ALLOCATION
            reps = self.option(nbdproto.OPT_SET_META_CONTEXT, head + struct.pack(">II", 1, len(q)) + q)
            assert reps[0] == (nbdproto.REP_META_CONTEXT, struct.pack(">I", nbdproto.BASE_ALLOCATION_ID) + q)
        reps = self.option(nbdproto.OPT_GO, head + struct.pack(">H", 0))
        assert reps[-1][0] == nbdproto.REP_ACK
        self.structured = structured

    def send(self, cmd: int, offset: int, length: int, flags: int = 0, payload: bytes = b"") -> int:
        self.handle += 1
        self.s.sendall(struct.pack(">IHHQQI", nbdproto.REQUEST_MAGIC, flags, cmd, self.handle, offset, length)
                       + payload)
        return self.handle

    def reply(self, offset: int = 0, length: int = 0) -> tuple[int, bytes, list[int]]:
        """(error, reassembled data, chunk types) of the next reply."""
        (magic,) = struct.unpack(">I", self.recv(4))
        if magic == nbdproto.SIMPLE_MAGIC:
            err, handle = struct.unpack(">IQ", self.recv(12))
            assert handle == self.handle
            return err, (b"" if err else self.recv(length)), []
        data, err, types = bytearray(length), 0, []
        while True:
            flags, kind, handle, n = struct.unpack(">HHQI", self.recv(16))
            assert (magic, handle) == (nbdproto.STRUCTURED_MAGIC, self.handle)
            body = self.recv(n)
            types.append(kind)
            if kind == nbdproto.REPLY_OFFSET_DATA:
                (off,) = struct.unpack_from(">Q", body)
                data[off - offset : off - offset + n - 8] = body[8:]
            elif kind == nbdproto.REPLY_OFFSET_HOLE:
                off, size = struct.unpack(">QI", body)
                assert offset <= off and off + size <= offset + length
            elif kind & 0x8000:
                err = struct.unpack_from(">I", body)[0]
            if flags & nbdproto.REPLY_FLAG_DONE:
                return err, bytes(data), types
            (magic,) = struct.unpack(">I", self.recv(4))

    def call(self, cmd: int, offset: int, length: int, flags: int = 0, payload: bytes = b"") -> tuple[int, bytes]:
        self.send(cmd, offset, length, flags, payload)
        err, data, _ = self.reply(offset, length)
        return err, data


def test_options(layout: Layout, server: NbdServer) -> None:
    c = Client(server.sock_path)
    assert c.option(nbdproto.OPT_LIST) == [(nbdproto.REP_SERVER, struct.pack(">I", 0)), (nbdproto.REP_ACK, b"")]
    assert c.option(nbdproto.OPT_LIST, b"x")[0][0] == nbdproto.REP_ERR_INVALID
    assert c.option(99, b"whatever")[0][0] == nbdproto.REP_ERR_UNSUP
    assert c.option(5)[0][0] == nbdproto.REP_ERR_UNSUP  # STARTTLS
    assert c.option(nbdproto.OPT_SET_META_CONTEXT, struct.pack(">II", 0, 0))[0][0] == nbdproto.REP_ERR_INVALID
    unknown = struct.pack(">I", 3) + b"foo" + struct.pack(">H", 0)
    assert c.option(nbdproto.OPT_INFO, unknown)[0][0] == nbdproto.REP_ERR_UNKNOWN
    assert c.option(nbdproto.OPT_INFO, struct.pack(">I", 300) + b"foo")[0][0] == nbdproto.REP_ERR_INVALID
    reps = c.option(nbdproto.OPT_INFO, struct.pack(">IHH", 0, 1, nbdproto.INFO_BLOCK_SIZE))
    export_info = struct.pack(">HQH", nbdproto.INFO_EXPORT, layout.emap.size, nbdproto.EXPORT_FLAGS)
    assert reps[0] == (nbdproto.REP_INFO, export_info)
    assert reps[1] == (nbdproto.REP_INFO, struct.pack(">HIII", nbdproto.INFO_BLOCK_SIZE, 1, 4096, 32 * MiB))
    assert nbdproto.EXPORT_FLAGS & 2  # read-only
    assert c.option(nbdproto.OPT_STRUCTURED_REPLY) == [(nbdproto.REP_ACK, b"")]
    listed = c.option(nbdproto.OPT_LIST_META_CONTEXT, struct.pack(">II", 0, 0))
    assert listed == [(nbdproto.REP_META_CONTEXT, struct.pack(">I", 0) + b"base:allocation"), (nbdproto.REP_ACK, b"")]
    q = b"qemu:dirty-bitmap:x"
    query = struct.pack(">II", 0, 1) + struct.pack(">I", len(q)) + q
    assert c.option(nbdproto.OPT_SET_META_CONTEXT, query) == [(nbdproto.REP_ACK, b"")]
    assert c.option(nbdproto.OPT_SET_META_CONTEXT, query[:-3])[0][0] == nbdproto.REP_ERR_INVALID
    assert c.option(nbdproto.OPT_ABORT) == [(nbdproto.REP_ACK, b"")]
    assert c.closed()


@pytest.mark.parametrize("how", ["bad-magic", "bad-flags", "huge-option", "half-header", "eof"])
def test_bad_handshakes_close_only_that_connection(layout: Layout, server: NbdServer, how: str) -> None:
    c = Client(server.sock_path, flags=0x80 if how == "bad-flags" else 3)
    if how == "bad-magic":
        c.s.sendall(struct.pack(">QII", 0x1234, nbdproto.OPT_LIST, 0))
    elif how == "huge-option":
        c.s.sendall(struct.pack(">QII", nbdproto.IHAVEOPT, nbdproto.OPT_GO, 2**32 - 1))
    elif how == "half-header":
        c.s.sendall(struct.pack(">Q", nbdproto.IHAVEOPT))
        c.s.shutdown(socket.SHUT_WR)
    elif how == "eof":
        c.s.shutdown(socket.SHUT_WR)
    assert c.closed()
    ok = Client(server.sock_path)
    ok.go()
    assert ok.call(nbdproto.CMD_READ, 0, 4096) == (0, layout.expected[:4096])


def test_structured_transmission(layout: Layout, server: NbdServer) -> None:
    c = Client(server.sock_path)
    c.go()
    size = layout.emap.size
    # A read across data, a 1 MiB hole and striped data: the hole travels as a hole chunk.
    c.send(nbdproto.CMD_READ, 512 * KiB, 2 * MiB)
    err, data, types = c.reply(512 * KiB, 2 * MiB)
    assert (err, data) == (0, layout.expected[512 * KiB : 2560 * KiB])
    assert types == [nbdproto.REPLY_OFFSET_DATA, nbdproto.REPLY_OFFSET_HOLE, nbdproto.REPLY_OFFSET_DATA]
    # The 8 KiB zero run is sent as zero bytes inside one data chunk.
    c.send(nbdproto.CMD_READ, 5 * MiB, 128 * KiB)
    assert c.reply(5 * MiB, 128 * KiB) == (0, layout.expected[5 * MiB : 5 * MiB + 128 * KiB],
                                           [nbdproto.REPLY_OFFSET_DATA])
    assert c.call(nbdproto.CMD_READ, 0, size) == (0, layout.expected)  # whole export, unaligned pieces
    assert c.call(nbdproto.CMD_READ, 1000, 3) == (0, layout.expected[1000:1003])
    assert c.call(nbdproto.CMD_READ, size - 4096, 8192)[0] == nbdproto.EINVAL  # past the end
    assert c.call(nbdproto.CMD_READ, 2**64 - 512, 1024)[0] == nbdproto.EINVAL  # offset overflow
    assert c.call(nbdproto.CMD_READ, 0, 32 * MiB + 1)[0] == nbdproto.EINVAL  # oversize
    assert c.call(nbdproto.CMD_READ, 0, 0)[0] == nbdproto.EINVAL
    assert c.call(nbdproto.CMD_READ, 0, 512, flags=0x40)[0] == nbdproto.EINVAL  # unknown flag
    assert c.call(nbdproto.CMD_WRITE, 0, 4096, payload=b"x" * 4096)[0] == nbdproto.EPERM
    assert c.call(nbdproto.CMD_TRIM, 0, 4096)[0] == nbdproto.EPERM
    assert c.call(nbdproto.CMD_WRITE_ZEROES, 0, 4096)[0] == nbdproto.EPERM
    assert c.call(42, 0, 4096)[0] == nbdproto.EINVAL
    assert c.call(nbdproto.CMD_FLUSH, 0, 0) == (0, b"")
    # Block status: data, hole+zero, data (stripes merged), ...
    c.send(nbdproto.CMD_BLOCK_STATUS, 0, 5 * MiB)
    (magic, flags, kind, _, n) = struct.unpack(">IHHQI", c.recv(20))
    body = c.recv(n)
    assert (magic, flags, kind) == (nbdproto.STRUCTURED_MAGIC, nbdproto.REPLY_FLAG_DONE, nbdproto.REPLY_BLOCK_STATUS)
    descs = list(struct.iter_unpack(">II", body[4:]))
    assert struct.unpack_from(">I", body)[0] == nbdproto.BASE_ALLOCATION_ID
    assert descs == [(MiB, 0), (MiB, 3), (2 * MiB + 512 * KiB, 0), (512 * KiB, 3)]
    c.send(nbdproto.CMD_BLOCK_STATUS, MiB + 512, 4 * MiB, flags=nbdproto.CMD_FLAG_REQ_ONE)
    c.recv(20)
    assert list(struct.iter_unpack(">II", c.recv(12)[4:])) == [(MiB - 512, 3)]
    assert c.call(nbdproto.CMD_BLOCK_STATUS, size - 512, 1024)[0] == nbdproto.EINVAL
    assert c.call(nbdproto.CMD_READ, 0, 4096) == (0, layout.expected[:4096])  # still in sync
    c.send(nbdproto.CMD_DISC, 0, 0)
    assert c.closed()


def test_simple_replies_and_errors(layout: Layout) -> None:
    with serve(LvmSource(layout.with_error()), export_name="lv") as srv:
        c = Client(srv.sock_path, flags=1)  # fixed newstyle, but 124 zero bytes wanted
        c.s.sendall(struct.pack(">QII", nbdproto.IHAVEOPT, nbdproto.OPT_EXPORT_NAME, 2) + b"lv")
        size, flags = struct.unpack(">QH", c.recv(10))
        assert (size, flags, c.recv(124)) == (layout.emap.size, nbdproto.EXPORT_FLAGS, bytes(124))
        assert c.call(nbdproto.CMD_READ, 4096, 8192) == (0, layout.expected[4096 : 3 * 4096])
        assert c.call(nbdproto.CMD_READ, MiB - 512, 1024)[0] == nbdproto.EIO
        assert c.call(nbdproto.CMD_BLOCK_STATUS, 0, 4096)[0] == nbdproto.EINVAL  # no meta context
        assert c.call(nbdproto.CMD_READ, 2 * MiB, 4096) == (0, layout.expected[2 * MiB : 2 * MiB + 4096])
        d = Client(srv.sock_path)
        d.go(name=b"lv")
        c.send(nbdproto.CMD_READ, 0, 2 * MiB)
        assert d.call(nbdproto.CMD_READ, MiB + 4096, 512)[0] == nbdproto.EIO
        assert c.reply(0, 2 * MiB)[0] == nbdproto.EIO
        e = Client(srv.sock_path)
        e.s.sendall(struct.pack(">QII", nbdproto.IHAVEOPT, nbdproto.OPT_EXPORT_NAME, 0))
        assert e.closed()  # unknown export name
    assert srv.failures == []


@pytest.mark.parametrize("how", ["half-request", "unread-reply", "bad-magic", "huge-write", "short-write"])
def test_disconnects_mid_request(layout: Layout, server: NbdServer, how: str) -> None:
    c = Client(server.sock_path)
    c.go()
    if how == "half-request":
        c.s.sendall(struct.pack(">IHH", nbdproto.REQUEST_MAGIC, 0, nbdproto.CMD_READ))
    elif how == "unread-reply":
        for _ in range(8):
            c.send(nbdproto.CMD_READ, 0, 4 * MiB)
    elif how == "bad-magic":
        c.s.sendall(struct.pack(">IHHQQI", 0xDEADBEEF, 0, nbdproto.CMD_READ, 1, 0, 512))
        assert c.closed()
    elif how == "huge-write":
        c.send(nbdproto.CMD_WRITE, 0, 64 * MiB)
        assert c.closed()
    elif how == "short-write":
        c.send(nbdproto.CMD_WRITE, 0, 8192, payload=b"x" * 100)
    c.s.close()
    ok = Client(server.sock_path)
    ok.go(structured=False, meta=False)
    assert ok.call(nbdproto.CMD_READ, 3 * MiB, 4096) == (0, layout.expected[3 * MiB : 3 * MiB + 4096])


def test_source_read_failing_is_an_error_reply_before_any_data(layout: Layout, server: NbdServer,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Every byte of a reply is read before its header goes out: a read failing in the middle of a
    striped request is an EIO reply (recorded for the exporter), and the connection goes on."""
    real = LocalFile.pread_into
    calls = []

    def flaky(self: LocalFile, offset: int, view: memoryview) -> int:
        calls.append(offset)
        if len(calls) == 2:
            raise IOFailure(f"read of {self.path} at {offset} failed: disk on fire")
        return real(self, offset, view)

    monkeypatch.setattr(LocalFile, "pread_into", flaky)
    c = Client(server.sock_path)
    c.go()
    assert c.call(nbdproto.CMD_READ, 2 * MiB, MiB)[0] == nbdproto.EIO  # striped: many extents, two reads
    assert c.call(nbdproto.CMD_READ, 0, 4096) == (0, layout.expected[:4096])
    assert len(server.read_failures) == 1 and "disk on fire" in str(server.read_failures[0])


def test_block_status_reports_source_file_holes_as_holes(tmp_path: Path) -> None:
    """A hole in a DATA extent's file is a hole to qemu (block status hole+zero, hole chunk on read),
    and qemu-img convert then never reads it."""
    f = tmp_path / "sparse.bin"
    data = random.Random(3).randbytes(MiB)
    with f.open("wb") as fh:
        fh.truncate(8 * MiB)
        fh.seek(6 * MiB)
        fh.write(data)
    emap = ExtentMap(8 * MiB, [LinearMapper(0, 8 * MiB, str(f), 0)])
    with serve(LvmSource(emap)) as srv:
        c = Client(srv.sock_path)
        c.go()
        c.send(nbdproto.CMD_BLOCK_STATUS, 0, 8 * MiB)
        (_, _, kind, _, n) = struct.unpack(">IHHQI", c.recv(20))
        assert kind == nbdproto.REPLY_BLOCK_STATUS
        hole = nbdproto.STATE_HOLE | nbdproto.STATE_ZERO
        assert list(struct.iter_unpack(">II", c.recv(n)[4:])) == [(6 * MiB, hole), (MiB, 0), (MiB, hole)]
        err, got, types = (c.send(nbdproto.CMD_READ, 5 * MiB, 2 * MiB), *c.reply(5 * MiB, 2 * MiB))[1:]
        assert (err, got) == (0, bytes(MiB) + data) and types[0] == nbdproto.REPLY_OFFSET_HOLE
        before = srv.served.bytes_read
        out = tmp_path / "o.raw"
        qemu_img.convert(srv.uri, str(out), "raw")
        assert out.read_bytes() == bytes(6 * MiB) + data + bytes(MiB)
    assert srv.served.bytes_read - before == MiB  # qemu-img read the data only
    assert srv.failures == []


def test_truncated_source_is_an_io_error(layout: Layout, tmp_path: Path) -> None:
    short = tmp_path / "short.bin"
    short.write_bytes(layout.a.read_bytes()[: MiB + 4096])
    emap = ExtentMap(2 * MiB, [LinearMapper(0, 2 * MiB, str(short), 0)])
    with serve(LvmSource(emap)) as srv:
        c = Client(srv.sock_path)
        c.go()
        assert c.call(nbdproto.CMD_READ, 0, MiB) == (0, layout.expected[:MiB])
        assert c.call(nbdproto.CMD_READ, MiB, 8192)[0] == nbdproto.EIO
        missing = ExtentMap(MiB, [LinearMapper(0, MiB, str(tmp_path / "gone.bin"), 0)])
        with serve(LvmSource(missing)) as srv2:
            d = Client(srv2.sock_path)
            d.go()
            assert d.call(nbdproto.CMD_READ, 0, 4096)[0] == nbdproto.EIO
            with pytest.raises(IOFailure, match="Input/output error"):
                qemu_img.convert(srv2.uri, str(tmp_path / "o.raw"), "raw")
    assert srv.failures == [] and srv2.failures == []


def test_source_shrinking_after_the_first_read_is_an_error_reply(layout: Layout, tmp_path: Path) -> None:
    """The size is asked per request: a source that shrank since the connection opened gets EIO
    before any byte is sent, and the connection goes on serving what is still there."""
    src = tmp_path / "shrinks.bin"
    data = layout.a.read_bytes()
    src.write_bytes(data)
    emap = ExtentMap(len(data), [LinearMapper(0, len(data), str(src), 0)])
    with serve(LvmSource(emap)) as srv:
        c = Client(srv.sock_path)
        c.go()
        assert c.call(nbdproto.CMD_READ, 0, MiB) == (0, data[:MiB])
        os.truncate(src, MiB)
        assert c.call(nbdproto.CMD_READ, 2 * MiB, 4096)[0] == nbdproto.EIO
        assert c.call(nbdproto.CMD_READ, 0, 4096) == (0, data[:4096])
    assert srv.failures == []
