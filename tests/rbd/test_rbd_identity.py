# SPDX-License-Identifier: Apache-2.0
"""An RBD image's identity and its re-check (src/euca2kvm/rbd/identity.py), on the session's cluster.

These tests write, so they use a pool of their own (``rw``), created once; the read-only tests'
pool and its objects are left alone (the session's state comparison covers them). Writes come from
Ceph's own ``rbd import-diff`` run by the admin, as a guest's writes would come through librbd:

* the identity is stable while nothing writes, and reading the image does not change it; object
  stats from several threads give the same identity as one after the other;
* an overwrite of an already allocated object within a minute of the previous write (librbd's
  modify timestamp does not move then) changes it; so does a write into a hole;
* a re-run after a write exports again, and the new output hashes like ``rbd export``;
* a write during an export (from the ``on_read`` hook, i.e. while bytes are being read) makes the
  export fail with exit 5 and publishes nothing; the destination's stranger's file is untouched;
* a watcher that appears after the scan: refused before reading (exit 4) and after the copy (exit 5).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.rbd import cluster as cc

from euca2kvm.errors import EXIT_IN_USE, EXIT_IO, Euca2kvmError
from euca2kvm.export.formats import output_format
from euca2kvm.export.pipeline import ExportOptions, Source, export_source
from euca2kvm.rbd import identity as rbd_identity
from euca2kvm.rbd.image import CephOptions, Cluster

MiB = 1 << 20
POOL = "rw"
GARBAGE = b"\x5a" * 4096
# A watcher registers within a second on this cluster; 10 s means it did not.
WATCH_WAIT_S = 10


def _rand(seed: int, n: int) -> bytes:
    return hashlib.sha256(b"%d" % seed).digest() * (n // 32)


@pytest.fixture(scope="module")
def rw(ceph_session: tuple[cc.Cluster, object]) -> Iterator[tuple[cc.Cluster, Cluster]]:
    c, _ = ceph_session
    if POOL.encode() not in c.admin("ceph", "osd", "pool", "ls").split():
        c.admin("ceph", "osd", "pool", "create", POOL, "8", "8", "replicated")
        c.rbd("pool", "init", POOL)
    cl = Cluster(CephOptions(str(c.conf), "admin", str(c.admin_keyring)))
    try:
        yield c, cl
    finally:
        cl.close()


def _image(c: cc.Cluster, name: str, size: int = 24 * MiB) -> str:
    c.rbd("create", "--image-format", "2", "--image-feature", "layering", "--object-size", "4M",
          "--size", f"{size // MiB}M", f"{POOL}/{name}")
    _write(c, name, [(0, _rand(1, 6 * MiB)), (12 * MiB, _rand(2, MiB))])
    return name


def _write(c: cc.Cluster, name: str, writes: list[tuple[int, bytes]]) -> None:
    size = json.loads(c.rbd("info", "--format", "json", f"{POOL}/{name}"))["size"]
    c.rbd("import-diff", "-", f"{POOL}/{name}", input=cc.diff_stream(size, writes))


def _truth(c: cc.Cluster, name: str) -> str:
    return hashlib.sha256(c.rbd("export", f"{POOL}/{name}", "-")).hexdigest()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _out(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    (out / "victim.bin").write_bytes(GARBAGE)
    return out


def _source(cl: Cluster, name: str, watchers: list[str] | None = None) -> Source:
    return Source(name, cl.pool(POOL).open(name, [] if watchers is None else watchers), {"kind": "rbd"})


def test_identity_moves_with_every_write(rw: tuple[cc.Cluster, Cluster], monkeypatch: pytest.MonkeyPatch) -> None:
    c, cl = rw
    name = _image(c, "vol-11000001")
    with cl.pool(POOL).open(name) as img:
        first = img.identity()
        buf = bytearray(img.size)
        img.read_into(0, memoryview(buf))  # a whole read changes nothing
        assert img.recheck() == first
        assert first["rbd_objects"]["count"] == 3  # objects 0, 1 and 3 of 4 MiB
        t0 = time.monotonic()
        for _ in range(10):
            img.recheck()
        print(f"recheck of a 24 MiB image with 3 objects: {(time.monotonic() - t0) / 10 * 1000:.1f} ms")
        _write(c, name, [(100, b"x" * 10)])  # overwrite inside object 0, seconds after the last write
        second = img.recheck()
        assert second != first
        assert second["rbd_objects"] != first["rbd_objects"]
        _write(c, name, [(20 * MiB, b"y" * 4096)])  # into a hole: a new object
        third = img.recheck()
        assert third["rbd_objects"]["count"] == 4 and third != second
        monkeypatch.setattr(rbd_identity, "STATS_IN_FLIGHT", 2)  # header + 4 objects through a window of 2
        assert img.recheck() == third
    c.rbd("resize", "--size", "32M", f"{POOL}/{name}")
    with cl.pool(POOL).open(name) as img:
        assert img.identity()["rbd_header_version"] != third["rbd_header_version"]


def test_rerun_after_a_write_exports_again(rw: tuple[cc.Cluster, Cluster], tmp_path: Path) -> None:
    c, cl = rw
    name = _image(c, "vol-11000002")
    out, opts = _out(tmp_path), ExportOptions(fmt=output_format("raw"), workers=2)
    entry, reused = export_source(_source(cl, name), out, opts)
    assert not reused and _sha(out / f"{name}.raw") == _truth(c, name)
    assert entry["identity"]["rbd_image_id"] and entry["identity"]["rbd_objects"]["count"] == 3
    _, reused = export_source(_source(cl, name), out, opts)
    assert reused  # nothing changed: the output is reused
    _write(c, name, [(5 * MiB, b"z" * 512)])
    _, reused = export_source(_source(cl, name), out, opts)
    assert not reused and _sha(out / f"{name}.raw") == _truth(c, name)
    assert (out / "victim.bin").read_bytes() == GARBAGE


def test_write_during_an_export_publishes_nothing(rw: tuple[cc.Cluster, Cluster], tmp_path: Path) -> None:
    c, cl = rw
    name = _image(c, "vol-11000003")
    out = _out(tmp_path)
    written: list[int] = []

    def on_read(n: int) -> None:  # bytes were just read: a guest writes now
        if not written:
            written.append(n)
            _write(c, name, [(13 * MiB, b"w" * 4096)])

    with pytest.raises(Euca2kvmError) as e:
        export_source(_source(cl, name), out, ExportOptions(fmt=output_format("raw"), workers=1), on_read=on_read)
    assert written and e.value.exit_code == EXIT_IO
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["victim.bin"]
    assert (out / "victim.bin").read_bytes() == GARBAGE


def _watch(c: cc.Cluster, name: str) -> subprocess.Popen[bytes]:
    header = "rbd_header." + json.loads(c.rbd("info", "--format", "json", f"{POOL}/{name}"))["id"]
    w = subprocess.Popen(["rados", "-c", str(c.conf), "--id", "admin", "--keyring", str(c.admin_keyring),
                          "-p", POOL, "watch", header], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + WATCH_WAIT_S
    while not json.loads(c.rbd("status", "--format", "json", f"{POOL}/{name}")).get("watchers"):
        assert time.monotonic() < deadline and w.poll() is None, "the watcher did not register"
        time.sleep(0.1)
    return w


def _unwatch(c: cc.Cluster, name: str, w: subprocess.Popen[bytes]) -> None:
    """Ends the watcher the way it unwatches ("press enter"; killed, its watch would linger 30 s)."""
    assert w.stdin is not None
    w.stdin.close()
    try:
        w.wait(timeout=WATCH_WAIT_S)
    except subprocess.TimeoutExpired:
        w.kill()
        w.wait(timeout=WATCH_WAIT_S)
    deadline = time.monotonic() + WATCH_WAIT_S
    while json.loads(c.rbd("status", "--format", "json", f"{POOL}/{name}")).get("watchers"):
        assert time.monotonic() < deadline, "the watch outlived its client"
        time.sleep(0.1)


def test_watcher_after_the_scan_is_refused(rw: tuple[cc.Cluster, Cluster], tmp_path: Path) -> None:
    c, cl = rw
    name = _image(c, "vol-11000004")
    w = _watch(c, name)
    try:
        with pytest.raises(Euca2kvmError) as e:
            cl.pool(POOL).open(name, [])  # the scan saw no watcher: before reading, refused
        assert e.value.exit_code == EXIT_IN_USE
        with cl.pool(POOL).open(name) as img:  # the watchers the scan reported are accepted (--force)
            seen = img._h.watchers()
        assert len(seen) == 1
        cl.pool(POOL).open(name, seen).close()
    finally:
        _unwatch(c, name, w)
    out = _out(tmp_path)
    watchers: list[subprocess.Popen[bytes]] = []

    def on_read(n: int) -> None:  # a client opens the image while it is read
        if not watchers:
            watchers.append(_watch(c, name))

    try:
        with pytest.raises(Euca2kvmError) as e:
            export_source(_source(cl, name), out, ExportOptions(fmt=output_format("raw"), workers=1), on_read=on_read)
        assert e.value.exit_code == EXIT_IO
    finally:
        for x in watchers:
            _unwatch(c, name, x)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["victim.bin"]
