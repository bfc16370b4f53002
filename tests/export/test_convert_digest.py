# SPDX-License-Identifier: Apache-2.0
"""One digest for every path: a converted export records the digest the raw export records, which is
what ``verify`` computes and what the output converted back to raw by qemu-img hashes to (ground
truth, by the documented recipe); a verified qcow2 export reads its source about once; a qcow2
damaged after conversion fails verification (exit 6) with nothing published; the NBD server's
read-ahead reads each block once and its failures reach only the request that needs the block."""

from __future__ import annotations

import json
import os
import random
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from _env import need_tools
from clirun import euca2kvm
from euca2kvm import blocks
from euca2kvm.errors import EXIT_VERIFY, IOFailure, VerifyError
from euca2kvm.export import pipeline, qemu_img
from euca2kvm.export.digest import DEFAULT
from euca2kvm.export.formats import output_format
from euca2kvm.export.imagedigest import image_digest
from euca2kvm.export.nbd import serve
from euca2kvm.export.nbdclient import NbdClient
from euca2kvm.export.pipeline import ExportOptions, Source, export_source
from euca2kvm.export.served import Served
from euca2kvm.lvm.extents import ExtentMap, FillMapper, Kind, LinearMapper, StripedMapper
from euca2kvm.lvm.source import LvmSource
from refdigest import blkdigest, file_blkdigest

MiB = 1 << 20
Fixtures = tuple[Path, dict[str, Any]]


cli = euca2kvm


@pytest.mark.parametrize("scenario, ident", [("multiseg", "vg-mseg/lvA"), ("striped", "vg-str/lv-span")])
def test_converted_raw_and_verify_digests_agree_with_ground_truth(lvm_fixtures: Fixtures, tmp_path: Path,
                                                                  scenario: str, ident: str) -> None:
    need_tools("qemu-img", "qemu-nbd")
    root, _ = lvm_fixtures
    src = tmp_path / scenario  # a private copy: other tests may hold the shared fixture open
    subprocess.run(["cp", "-r", "--sparse=always", str(root / scenario), str(src)], check=True, timeout=60)
    out = tmp_path / "out"
    digests = {}
    for fmt in ("raw", "qcow2", "vmdk"):
        cli("export", ident, "--source", str(src), "-o", str(out), "--format", fmt)
    for e in json.loads((out / "manifest.json").read_text())["volumes"]:
        digests[e["format"]] = e["digest"]
        back = tmp_path / f"back-{e['format']}.raw"  # ground truth: qemu-img's own reading of the output
        subprocess.run(["qemu-img", "convert", "-O", "raw", e["output"], str(back)], check=True, timeout=120)
        assert file_blkdigest(back) == e["digest"], e["format"]
        assert image_digest(e["output"], e["format"]).digest == e["digest"]  # what verify and resume compute
    assert digests["qcow2"] == digests["vmdk"] == digests["raw"]
    assert {r["status"] for r in json.loads(cli("verify", str(out), "--json").stdout)} == {"ok"}


def dense_source(d: Path) -> tuple[LvmSource, bytes]:
    """A 36 MiB disk over two files of random bytes: segments, zeros, an unaligned offset, stripes."""
    rnd = random.Random(12)
    a, b = d / "a.bin", d / "b.bin"
    da, db = rnd.randbytes(24 * MiB), rnd.randbytes(16 * MiB)
    a.write_bytes(da)
    b.write_bytes(db)
    emap = ExtentMap(36 * MiB, [
        LinearMapper(0, 10 * MiB, str(a), 0),
        FillMapper(10 * MiB, 2 * MiB, Kind.ZERO),
        LinearMapper(12 * MiB, 8 * MiB + 4096, str(b), 4608),
        StripedMapper(20 * MiB + 4096, 16 * MiB - 4096, 64 * 1024, ((str(a), 12 * MiB), (str(b), 0))),
    ])
    with LvmSource(emap) as src:
        whole = bytearray(emap.size)
        src.read_into(0, memoryview(whole))
    return LvmSource(emap, "dense"), bytes(whole)


def test_verified_qcow2_export_reads_the_source_once(tmp_path: Path) -> None:
    need_tools("qemu-img", "qemu-nbd")
    source, whole = dense_source(tmp_path)
    data = blocks.data_bytes(source)
    read: list[int] = []
    out = tmp_path / "out"
    out.mkdir()
    entry, reused = export_source(Source("dense", source, {"kind": "lvm"}), out,
                                  ExportOptions(output_format("qcow2")), on_read=read.append)
    assert not reused and entry["verified"]
    assert sum(read) <= 1.05 * data, (sum(read), data)
    assert entry["digest"] == image_digest(entry["output"], "qcow2").digest
    back = tmp_path / "back.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", entry["output"], str(back)], check=True, timeout=120)
    assert back.read_bytes() == whole


def test_qcow2_damaged_after_conversion_fails_verification(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    need_tools("qemu-img", "qemu-nbd")
    source, _ = dense_source(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    final = out / "dense.qcow2"
    final.write_bytes(b"previous output")

    def damage(path: Path) -> None:
        m = subprocess.run(["qemu-img", "map", "--output=json", str(path)], check=True, capture_output=True,
                           text=True, timeout=60)
        first = next(e for e in json.loads(m.stdout) if e["data"] and "offset" in e)
        with open(path, "r+b") as f:  # one byte of a data cluster, inside the work directory
            f.seek(first["offset"] + 1000)
            b = f.read(1)
            f.seek(first["offset"] + 1000)
            f.write(bytes([b[0] ^ 0x01]))

    monkeypatch.setattr(pipeline, "_after_convert", damage)
    with pytest.raises(VerifyError) as ei:
        export_source(Source("dense", source, {"kind": "lvm"}), out, ExportOptions(output_format("qcow2")))
    assert ei.value.exit_code == EXIT_VERIFY
    assert final.read_bytes() == b"previous output"  # nothing published
    assert sorted(os.listdir(out)) in (["dense.qcow2"], ["dense.qcow2", "manifest.json"])
    if (out / "manifest.json").exists():
        assert json.loads((out / "manifest.json").read_text())["volumes"] == []


class _Watched:
    """A block source recording which thread reads which offsets, failing reads inside ``bad``."""

    def __init__(self, inner: LvmSource, bad: tuple[int, int] | None = None) -> None:
        self.inner, self.bad = inner, bad
        self.name, self.size = inner.name, inner.size
        self.reads: list[tuple[str, int]] = []

    def kinds(self) -> frozenset[Kind]:
        return self.inner.kinds()

    def ranges(self, lo: int, hi: int) -> Iterator[blocks.Range]:
        return self.inner.ranges(lo, hi)

    def read_into(self, offset: int, view: memoryview) -> None:
        self.reads.append((threading.current_thread().name, offset))
        if self.bad is not None and offset < self.bad[1] and offset + len(view) > self.bad[0]:
            raise IOFailure(f"{self.name}: read error at {offset}")
        self.inner.read_into(offset, view)

    def close(self) -> None:
        self.inner.close()


def test_read_ahead_reads_each_block_once_and_stops_with_the_server(tmp_path: Path) -> None:
    need_tools("qemu-img")
    source, whole = dense_source(tmp_path)
    watched = _Watched(source)
    served = Served(watched, DEFAULT)
    out = tmp_path / "o.qcow2"
    with serve(watched, served=served) as srv:
        qemu_img.convert(srv.uri, str(out), "qcow2")
        assert served.hexdigest() == blkdigest(whole)
    assert served.bytes_read == blocks.data_bytes(source) and served.rereads == 0
    assert {name for name, _ in watched.reads} >= {"nbd-read-ahead"}  # blocks were read before qemu asked
    assert not [t for t in threading.enumerate() if t.name == "nbd-read-ahead"]
    assert srv.failures == []
    back = tmp_path / "back.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(out), str(back)], check=True, timeout=120)
    assert back.read_bytes() == whole


def test_failed_read_ahead_fails_only_the_request_that_needs_the_block(tmp_path: Path) -> None:
    source, whole = dense_source(tmp_path)
    watched = _Watched(source, bad=(4 * MiB + 100, 4 * MiB + 101))  # inside block 1
    served = Served(watched, DEFAULT)
    with serve(watched, served=served) as srv, NbdClient(srv.sock_path) as c:
        buf = bytearray(MiB)
        c.read_into(0, memoryview(buf))  # block 0: block 1 is read ahead, and fails there
        assert buf == whole[:MiB]
        deadline = time.monotonic() + 10
        while not any(name == "nbd-read-ahead" for name, _ in watched.reads) and time.monotonic() < deadline:
            time.sleep(0.01)
        c.read_into(3 * MiB, memoryview(buf))  # still block 0
        assert buf == whole[3 * MiB : 4 * MiB]
        with pytest.raises(IOFailure):
            c.read_into(4 * MiB, memoryview(buf))  # block 1: this request reads it again and fails
        assert len(srv.read_failures) == 1
        c.read_into(8 * MiB, memoryview(buf))  # the connection still serves
        assert buf == whole[8 * MiB : 9 * MiB]
    assert srv.failures == []
