# SPDX-License-Identifier: Apache-2.0
"""A throw-away single-node Ceph cluster for the RBD tests, filled the way Eucalyptus fills it.

Started by ``ceph-single-node.sh`` (one mon, one memstore OSD on 127.0.0.1, cephx; copied from the
team's proven recipe), stopped by its own pid files. :func:`fill` lays images out as
CephRbdFormatTwoAdapter does (format 2, layering, 4 MiB objects; a snapshot is ``sp-for-<snap>`` on the
volume, protected, cloned to ``<snap>``, which gets ``sp-on-<snap>``, protected; a volume from a
snapshot is a clone of ``<snap>@sp-on-<snap>``, resized when larger; a deleted parent is renamed
``del<8>-<name>``). Data is written with ``rbd import-diff`` from a stream built here, so that the
cluster's own tool writes every byte. Ground truth is ``rbd export``.

State (:func:`state`): what must be identical before and after every test: ``rbd ls -l``, per image
``rbd info``, ``rbd snap ls``, ``rbd diff``, the sha256 of ``rbd export``, and every RADOS object of
the pool with its size, mtime and version (:func:`objects`, through librados: one process, fast).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import random
import socket
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

MiB = 1 << 20
GiB = 1 << 30
HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "ceph-single-node.sh"
POOL = "rbd"
# The recipe measured 8-14 s to start with memstore; a loaded 2-core machine gets 10x.
START_TIMEOUT_S = 180
# rbd/rados admin commands on a local cluster take ~0.1 s; a minute means it hung.
CMD_TIMEOUT_S = 120
# Never update access timestamps from the tests' own reads (librbd default: every 60 s).
NO_ATIME = ["--rbd-atime-update-interval", "0"]


@dataclass
class Cluster:
    dir: Path
    conf: Path
    admin_keyring: Path
    keyring: Path  # client.eucalyptus: profile rbd
    ro_keyring: Path  # client.ro: profile rbd-read-only
    images: dict[str, str] = field(default_factory=dict)  # image name -> sha256 of rbd export
    sizes: dict[str, int] = field(default_factory=dict)
    watcher: subprocess.Popen[bytes] | None = None

    def admin(self, tool: str, *args: str, input: bytes | None = None) -> bytes:
        p = subprocess.run([tool, "-c", str(self.conf), "--id", "admin", "--keyring", str(self.admin_keyring),
                            *args], input=input, capture_output=True, timeout=CMD_TIMEOUT_S)
        if p.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)}: {p.stderr.decode(errors='replace')[-2000:]}")
        return p.stdout

    def rbd(self, *args: str, input: bytes | None = None) -> bytes:
        return self.admin("rbd", *NO_ATIME, *args, input=input)

    def export_sha(self, image: str) -> str:
        return hashlib.sha256(self.rbd("export", f"{POOL}/{image}", "-")).hexdigest()

    def cli_args(self, ro: bool = False) -> list[str]:
        """euca2kvm options reaching this cluster as client.eucalyptus (or client.ro)."""
        return ["--ceph-conf", str(self.conf), "--ceph-id", "ro" if ro else "eucalyptus",
                "--ceph-keyring", str(self.ro_keyring if ro else self.keyring)]


def _free_port_pair(rng: random.Random) -> int:
    for _ in range(200):
        p = rng.randrange(47000, 48900, 2)
        ok = True
        for q in (p, p + 1):
            with socket.socket() as s:
                ok = ok and s.connect_ex(("127.0.0.1", q)) != 0
        if ok:
            return p
    raise RuntimeError("no free port pair for the Ceph mon")


def start(base: Path) -> Cluster:
    d = base / "ceph"
    rng = random.Random(os.getpid())
    mon = _free_port_pair(rng)
    osd = mon + 200 if mon + 300 < 49200 else mon - 300
    p = subprocess.run([str(SCRIPT), "start", str(d), str(mon), str(osd)], capture_output=True, text=True,
                       timeout=START_TIMEOUT_S, env={**os.environ, "CEPH_NO_INSTALL": "1"})
    if p.returncode != 0:
        raise RuntimeError(f"ceph cluster did not start: {p.stderr[-2000:]}")
    c = Cluster(d, d / "ceph.conf", d / "ceph.client.admin.keyring", d / "ceph.client.eucalyptus.keyring",
                d / "ceph.client.ro.keyring")
    c.admin("ceph", "auth", "get-or-create", "client.ro", "mon", "profile rbd", "osd",
            f"profile rbd-read-only pool={POOL}", "-o", str(c.ro_keyring))
    return c


def stop(c: Cluster) -> None:
    if c.watcher is not None:
        assert c.watcher.stdin is not None
        c.watcher.stdin.close()  # "press enter to exit"
        c.watcher.terminate()
        try:
            c.watcher.wait(timeout=10)
        except subprocess.TimeoutExpired:
            c.watcher.kill()
    subprocess.run([str(SCRIPT), "stop", str(c.dir)], capture_output=True, timeout=60)


def diff_stream(size: int, writes: list[tuple[int, bytes]]) -> bytes:
    """An ``rbd import-diff`` v1 stream: the image size, then each write; no snapshot records (so
    import-diff creates no snapshot)."""
    out = [b"rbd diff v1\n", b"s" + struct.pack("<Q", size)]
    for off, data in writes:
        out.append(b"w" + struct.pack("<QQ", off, len(data)) + data)
    out.append(b"e")
    return b"".join(out)


def write(c: Cluster, image: str, writes: list[tuple[int, bytes]]) -> None:
    size = json.loads(c.rbd("info", "--format", "json", f"{POOL}/{image}"))["size"]
    c.rbd("import-diff", "-", f"{POOL}/{image}", input=diff_stream(size, writes))


def create(c: Cluster, image: str, size: int, writes: list[tuple[int, bytes]] | None = None) -> None:
    c.rbd("create", "--image-format", "2", "--image-feature", "layering", "--object-size", "4M",
          "--size", f"{size // MiB}M", f"{POOL}/{image}")
    if writes:
        write(c, image, writes)


def snapshot(c: Cluster, volume: str, snap: str) -> None:
    """CephRbdFormatTwoAdapter's snapshot: ``sp-for-<snap>`` → clone ``<snap>`` → ``sp-on-<snap>``."""
    c.rbd("snap", "create", f"{POOL}/{volume}@sp-for-{snap}")
    c.rbd("snap", "protect", f"{POOL}/{volume}@sp-for-{snap}")
    c.rbd("clone", f"{POOL}/{volume}@sp-for-{snap}", f"{POOL}/{snap}")
    c.rbd("snap", "create", f"{POOL}/{snap}@sp-on-{snap}")
    c.rbd("snap", "protect", f"{POOL}/{snap}@sp-on-{snap}")


def from_snapshot(c: Cluster, snap: str, volume: str, size: int | None = None) -> None:
    c.rbd("clone", f"{POOL}/{snap}@sp-on-{snap}", f"{POOL}/{volume}")
    if size is not None:
        c.rbd("resize", "--size", f"{size // MiB}M", f"{POOL}/{volume}")


def _rand(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


# The images every test sees (small: the whole fill takes a few seconds).
VOL = "vol-a0000001"
SNAP = "snap-b0000001"
FROM_SNAP = "vol-c0000001"  # clone of SNAP, resized 64 -> 96 MiB, written inside and beyond the overlap
DEL_PARENT = "del1a2b3c4d-vol-d0000001"
DEL_SNAP = "snap-d0000002"
DEL_CHILD = "vol-d0000003"
SPARSE = "vol-e0000001"  # 2 GiB, 3 MiB of data
DENSE = "vol-f0000001"  # 16 MiB of random bytes (the 1 GiB one is the benchmark's)
WATCHED = "vol-90000001"
SPARSE_SIZE = 2 * GiB


def fill(c: Cluster) -> None:
    create(c, VOL, 64 * MiB, [(0, _rand(1, 64 * 1024)), (5 * MiB + 4096, _rand(2, 8192)),
                              (40 * MiB, _rand(3, 3 * MiB)), (64 * MiB - 512, _rand(4, 512))])
    snapshot(c, VOL, SNAP)
    write(c, VOL, [(5 * MiB, _rand(5, 1 * MiB))])  # the volume moves on; the snapshot keeps the old bytes
    from_snapshot(c, SNAP, FROM_SNAP, 96 * MiB)
    write(c, FROM_SNAP, [(4 * MiB + 100, _rand(6, 5000)), (80 * MiB, _rand(7, 2 * MiB))])

    create(c, "vol-d0000001", 32 * MiB, [(1 * MiB, _rand(8, 1 * MiB)), (20 * MiB, _rand(9, 4096))])
    snapshot(c, "vol-d0000001", DEL_SNAP)
    from_snapshot(c, DEL_SNAP, DEL_CHILD)
    write(c, DEL_CHILD, [(20 * MiB, _rand(10, 4096))])
    c.rbd("rename", f"{POOL}/vol-d0000001", f"{POOL}/{DEL_PARENT}")  # deleted while it has clones

    create(c, SPARSE, SPARSE_SIZE, [(0, _rand(11, MiB)), (1 * GiB + 12345 * 512, _rand(12, MiB)),
                                    (SPARSE_SIZE - MiB, _rand(13, MiB))])
    create(c, DENSE, 16 * MiB, [(0, _rand(14, 16 * MiB))])
    create(c, WATCHED, 8 * MiB, [(0, _rand(15, MiB))])
    header = "rbd_header." + json.loads(c.rbd("info", "--format", "json", f"{POOL}/{WATCHED}"))["id"]
    # A client holding the image (as a running instance's qemu does): a watch on its header object.
    c.watcher = subprocess.Popen(["rados", "-c", str(c.conf), "--id", "admin", "--keyring", str(c.admin_keyring),
                                  "-p", POOL, "watch", header], stdin=subprocess.PIPE,  # it exits on EOF
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    for _ in range(100):
        if json.loads(c.rbd("status", "--format", "json", f"{POOL}/{WATCHED}")).get("watchers"):
            break
        time.sleep(0.1)
    else:
        raise RuntimeError("the watcher did not register")


def record_truth(c: Cluster, st: dict[str, object]) -> None:
    """Each image's size and ``rbd export`` sha256 from a :func:`state` (exported once per session)."""
    for name, v in st.items():
        if isinstance(v, dict) and "export" in v:
            c.sizes[name] = v["info"]["size"]
            c.images[name] = v["export"]


# ---- cluster state ------------------------------------------------------------------------------


class _Rados:
    """Just enough librados (ctypes) to list and stat every object of a pool in one process."""

    def __init__(self, c: Cluster) -> None:
        lib = ctypes.CDLL("librados.so.2")
        self.lib = lib
        self.cl = ctypes.c_void_p()
        assert lib.rados_create2(ctypes.byref(self.cl), b"ceph", b"client.admin", ctypes.c_uint64(0)) == 0
        assert lib.rados_conf_read_file(self.cl, str(c.conf).encode()) == 0
        assert lib.rados_conf_set(self.cl, b"keyring", str(c.admin_keyring).encode()) == 0
        assert lib.rados_connect(self.cl) == 0
        self.io = ctypes.c_void_p()
        assert lib.rados_ioctx_create(self.cl, POOL.encode(), ctypes.byref(self.io)) == 0
        lib.rados_get_last_version.restype = ctypes.c_uint64

    def objects(self) -> dict[str, tuple[int, int, int]]:
        lib, out = self.lib, {}
        ctx = ctypes.c_void_p()
        assert lib.rados_nobjects_list_open(self.io, ctypes.byref(ctx)) == 0
        entry, key, nspace = ctypes.c_char_p(), ctypes.c_char_p(), ctypes.c_char_p()
        names = []
        while lib.rados_nobjects_list_next(ctx, ctypes.byref(entry), ctypes.byref(key), ctypes.byref(nspace)) == 0:
            names.append(entry.value or b"")
        lib.rados_nobjects_list_close(ctx)
        size, mtime = ctypes.c_uint64(), ctypes.c_int64()
        for n in names:
            assert lib.rados_stat(self.io, n, ctypes.byref(size), ctypes.byref(mtime)) == 0, n
            out[n.decode()] = (size.value, mtime.value, lib.rados_get_last_version(self.io))
        return out

    def close(self) -> None:
        self.lib.rados_ioctx_destroy(self.io)
        self.lib.rados_shutdown(self.cl)


def state(c: Cluster, r: _Rados) -> dict[str, object]:
    """Everything a read-only client must leave as it found it (see the module docstring)."""
    out: dict[str, object] = {"ls": json.loads(c.rbd("ls", "-l", "--format", "json", POOL))}
    for name in sorted(json.loads(c.rbd("ls", "--format", "json", POOL))):
        spec = f"{POOL}/{name}"
        out[name] = {
            "info": json.loads(c.rbd("info", "--format", "json", spec)),
            "snaps": json.loads(c.rbd("snap", "ls", "--format", "json", spec)),
            "diff": json.loads(c.rbd("diff", "--format", "json", spec)),
            "export": c.export_sha(name),
        }
    out["objects"] = r.objects()
    return out


def tmpdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="euca2kvm-ceph-"))
