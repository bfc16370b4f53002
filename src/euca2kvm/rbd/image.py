# SPDX-License-Identifier: Apache-2.0
"""A Ceph connection, its pools, and RBD images as read-only :class:`~euca2kvm.blocks.BlockSource` s.

Strictly read-only on the cluster: images are opened with ``rbd_open_read_only`` /
``rbd_open_by_id_read_only`` only (a read-write open registers a watch, which rewrites the image's
header object and shows up as a watcher), nothing is created, and ``rbd_atime_update_interval`` is 0
on the connection, so reads (which librbd otherwise follows with a write of the access timestamp of
the image and of every parent, once a minute) leave the headers alone. A read-only cephx key
(``osd 'profile rbd-read-only'``) is enough for everything here.

Ranges come from the cluster's own extent query: ``rbd_diff_iterate2(from=NULL, include_parent=1,
whole_object=0)`` lists the allocated extents of the image through its whole clone chain (parent
data up to the overlap, copy-ups, writes beyond the overlap after a resize); everything else is a
``HOLE``, never found by reading zeros. The list is taken once when the image is opened, right
after its identity (:mod:`.identity`: what a re-run and the after-copy check compare) and a
re-check of its watchers. Closing waits for reads in flight, so a handle is never freed under one.
"""

from __future__ import annotations

import bisect
import ctypes
import errno
import os
import threading
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..blocks import Kind, Range
from ..errors import InUseError, IOFailure, UsageError
from . import identity, lib
from .lib import strerror
from .names import DEFAULT_CONF, DEFAULT_ID

CLUSTER_NAME = "ceph"
# Connecting (mon handshake, cephx) takes well under a second on a healthy cluster; a mon that
# never answers must fail the command, not hang it (librados' own default is 300 s).
MOUNT_TIMEOUT_S = 60
# A mon command (pool lookup) or an OSD read that gets no answer for this long means the cluster is
# unhealthy (an OSD down, PGs inactive): fail with exit 5 instead of waiting forever (default: never).
MON_OP_TIMEOUT_S = 60
OSD_OP_TIMEOUT_S = 300
# librbd writes an image's access timestamp on a read when the stored one is older than this; 0 = never.
ATIME_UPDATE_INTERVAL = "0"
# librbd's object cache only helps re-reads; an export reads each block once, and with the cache on a
# 256 MiB image exported in 2.8-3.3 s, without it in 0.8-1.8 s (bench/bench_rbd.py image, this machine).
RBD_CACHE = "false"
# The extent and object queries (rbd_diff_iterate2 on an image without an object map: one listing
# request per RADOS object) keep this many requests in flight (librbd's default: 10). Measured on this
# machine (1 GiB image, 256 objects, load 5): 23-39 ms per query with 10, 11-23 ms with 32 or 128.
# Only such management work uses it, never reads.
CONCURRENT_QUERIES = "32"
# Closing an image waits for reads in flight (each bounded by OSD_OP_TIMEOUT_S on a sick cluster; a
# 4 MiB read takes milliseconds on a healthy one); a read still running after this is left alone.
CLOSE_WAIT_S = 30
# rbd_list's name buffer: 64 KiB fits ~4000 image names; it grows on ERANGE up to this bound
# (a million images with 100-byte names), a hostile or broken answer cannot make it grow further.
MAX_LIST_BYTES = 128 << 20
# A clone chain deeper than this is not one Eucalyptus makes (volume -> snapshot -> volume -> ...).
MAX_CHAIN = 64
# Watchers/snapshots asked for at first; librbd says how many it has when the buffer is too small.
FIRST_BATCH = 16
MAX_BATCH = 1 << 16
# One extent per RADOS object at most twice over (diff_iterate2 splits at object boundaries), so an
# image of 64 TiB in 4 MiB objects gives at most ~32M extents: 512 MiB of array('Q'). Bound it.
MAX_EXTENTS = 32 << 20


def _b(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


def _s(b: bytes | None) -> str:
    return (b or b"").decode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class CephOptions:
    conf: str = DEFAULT_CONF
    id: str = DEFAULT_ID
    keyring: str | None = None  # default /etc/ceph/ceph.client.<id>.keyring

    @property
    def keyring_path(self) -> str:
        return self.keyring or f"/etc/ceph/{CLUSTER_NAME}.client.{self.id}.keyring"


@dataclass
class Parent:
    pool: str
    image: str
    image_id: str
    snap: str
    overlap: int  # bytes of the child that read through to this parent


@dataclass
class ImageFacts:
    """What ``scan``/``inspect`` show of an image, read through one read-only open."""

    pool: str
    name: str
    id: str
    size: int
    object_size: int
    chain: list[Parent] = field(default_factory=list)  # parent, grandparent, ...
    snapshots: list[tuple[str, int, bool]] = field(default_factory=list)  # name, size, protected
    watchers: list[str] = field(default_factory=list)  # "client.4123 at v1:127.0.0.1:0/123 cookie 94..."


class Cluster:
    """One librados connection (``rados_t``), read-only by use; a context manager."""

    def __init__(self, opts: CephOptions) -> None:
        self.opts = opts
        for what, path in (("--ceph-conf", opts.conf), ("--ceph-keyring", opts.keyring_path)):
            if not os.path.isfile(path):
                raise UsageError(f"{what} {path}: no such file (a Ceph configuration and the client's keyring "
                                 "are needed to read RBD volumes)")
        self.lib = lib.libs()
        self._h = ctypes.c_void_p()
        rc = self.lib.rados_create2(ctypes.byref(self._h), _b(CLUSTER_NAME), _b(f"client.{opts.id}"), 0)
        if rc < 0:
            raise IOFailure(f"Ceph client.{opts.id}: cannot create a cluster handle: {strerror(rc)}")
        try:
            self._conf(opts)
            rc = self.lib.rados_connect(self._h)
            if rc < 0:
                raise IOFailure(f"cannot connect to the Ceph cluster of {opts.conf} as client.{opts.id} "
                                f"(keyring {opts.keyring_path}): {strerror(rc)}")
        except BaseException:
            self.lib.rados_shutdown(self._h)
            raise
        self._pools: dict[str, Pool] = {}
        self._pools_lock = threading.Lock()  # facts are read from several threads (sources.pool_images)

    def _conf(self, opts: CephOptions) -> None:
        rc = self.lib.rados_conf_read_file(self._h, _b(opts.conf))
        if rc < 0:
            raise UsageError(f"--ceph-conf {opts.conf}: cannot read it as a Ceph configuration: {strerror(rc)}")
        for k, v in (("keyring", opts.keyring_path), ("rbd_atime_update_interval", ATIME_UPDATE_INTERVAL),
                     ("client_mount_timeout", str(MOUNT_TIMEOUT_S)), ("rados_mon_op_timeout", str(MON_OP_TIMEOUT_S)),
                     ("rados_osd_op_timeout", str(OSD_OP_TIMEOUT_S)), ("rbd_cache", RBD_CACHE),
                     ("rbd_concurrent_management_ops", CONCURRENT_QUERIES),
                     ("admin_socket", "")):  # no .asok file left on this host by a client
            rc = self.lib.rados_conf_set(self._h, _b(k), _b(v))
            if rc < 0:
                raise IOFailure(f"Ceph option {k}={v} refused: {strerror(rc)}")

    def pool(self, name: str) -> Pool:
        with self._pools_lock:  # one context per pool, even when parents are looked up in parallel
            if name not in self._pools:
                self._pools[name] = Pool(self, name)
            return self._pools[name]

    def close(self) -> None:
        """Close every image still open, the pools, then the connection (librados' threads stop here,
        not in the interpreter's teardown)."""
        closed = all([p.close() for p in self._pools.values()])
        self._pools.clear()
        if closed and self._h:
            self.lib.rados_shutdown(self._h)
            self._h = ctypes.c_void_p()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Pool:
    def __init__(self, cluster: Cluster, name: str) -> None:
        self.cluster, self.name, self.lib = cluster, name, cluster.lib
        self.handles: set[_Handle] = set()  # open images, closed with the pool
        self.io = ctypes.c_void_p()
        rc = self.lib.rados_ioctx_create(cluster._h, _b(name), ctypes.byref(self.io))
        if rc == -errno.ENOENT:
            raise UsageError(f"rbd:{name}: no such pool in the Ceph cluster of {cluster.opts.conf}")
        if rc < 0:
            raise IOFailure(f"rbd:{name}: cannot open the pool: {strerror(rc)}")

    def names(self) -> list[str]:
        """Every image of the pool (librbd's own listing, v1 and v2 directories)."""
        size = 64 * 1024
        while True:
            buf = ctypes.create_string_buffer(size)
            n = ctypes.c_size_t(size)
            rc = self.lib.rbd_list(self.io, buf, ctypes.byref(n))
            if rc == -errno.ERANGE and size < n.value <= MAX_LIST_BYTES:
                size = n.value
                continue
            if rc < 0:
                raise IOFailure(f"rbd:{self.name}: cannot list images: {strerror(rc)}")
            return sorted(_s(x) for x in buf.raw[:rc].split(b"\0") if x)

    def open(self, name: str, expected_watchers: list[str] | None = None, handle: _Handle | None = None) -> RbdImage:
        """``handle``: the image's read-only handle the scan kept (:meth:`described`), reused instead of
        a second open."""
        return RbdImage(self, name, expected_watchers, handle)

    def facts(self, name: str) -> ImageFacts:
        img, facts = self.described(name)
        img.close()
        return facts

    def described(self, name: str) -> tuple[_Handle, ImageFacts]:
        """The image's facts and its read-only handle, left open for reading it (closed with the pool
        when it is not)."""
        img = _Handle(self, name)
        try:
            return img, img.facts()
        except BaseException:
            img.close()
            raise

    def close(self) -> bool:
        """Close the images still open, then the pool context; False when an image could not be
        closed (reads in flight): the context and the connection are then left to the process' end."""
        closed = all([h.close() for h in list(self.handles)])
        if closed and self.io:
            self.lib.rados_ioctx_destroy(self.io)
            self.io = ctypes.c_void_p()
        return closed


class _Handle:
    """One read-only open image (the head, never a snapshot: Eucalyptus' volumes and snapshots are heads)."""

    def __init__(self, pool: Pool, name: str, by_id: bool = False, snap: str | None = None) -> None:
        self.pool, self.name, self.lib = pool, name, pool.lib
        self.spec = f"rbd:{pool.name}/{name}"
        self.h = ctypes.c_void_p()
        self._reads = threading.Condition()  # guards h against a close while reads are in flight
        self._inflight = 0
        opener = self.lib.rbd_open_by_id_read_only if by_id else self.lib.rbd_open_read_only
        rc = opener(pool.io, _b(name), ctypes.byref(self.h), None if snap is None else _b(snap))
        if rc == -errno.ENOENT:
            raise UsageError(f"{self.spec}: no such image")
        if rc < 0:
            raise IOFailure(f"{self.spec}: cannot open read-only: {strerror(rc)}")
        pool.handles.add(self)

    def _check(self, rc: int, what: str) -> int:
        if rc < 0:
            raise IOFailure(f"{self.spec}: {what}: {strerror(rc)}")
        return rc

    def size(self) -> int:
        v = ctypes.c_uint64()
        self._check(self.lib.rbd_get_size(self.h, ctypes.byref(v)), "size")
        return v.value

    def facts(self) -> ImageFacts:
        info = lib.ImageInfo()
        self._check(self.lib.rbd_stat(self.h, ctypes.byref(info), ctypes.sizeof(info)), "stat")
        ident = ctypes.create_string_buffer(256)
        self._check(self.lib.rbd_get_id(self.h, ident, len(ident)), "id")
        return ImageFacts(self.pool.name, self.name, _s(ident.value), info.size, info.obj_size, self.chain(),
                          self.snapshots(), self.watchers())

    def parent(self) -> Parent | None:
        spec, snap = lib.LinkedImageSpec(), lib.SnapSpec()
        rc = self.lib.rbd_get_parent(self.h, ctypes.byref(spec), ctypes.byref(snap))
        if rc == -errno.ENOENT:
            return None
        self._check(rc, "parent")
        try:
            overlap = ctypes.c_uint64()
            self._check(self.lib.rbd_get_overlap(self.h, ctypes.byref(overlap)), "overlap")
            return Parent(_s(spec.pool_name), _s(spec.image_name), _s(spec.image_id), _s(snap.name), overlap.value)
        finally:
            self.lib.rbd_linked_image_spec_cleanup(ctypes.byref(spec))
            self.lib.rbd_snap_spec_cleanup(ctypes.byref(snap))

    def chain(self) -> list[Parent]:
        out: list[Parent] = []
        p = self.parent()
        while p is not None:
            if len(out) >= MAX_CHAIN:
                raise IOFailure(f"{self.spec}: clone chain deeper than {MAX_CHAIN} images")
            out.append(p)
            pool = self.pool.cluster.pool(p.pool)
            h = _Handle(pool, p.image_id, by_id=True, snap=p.snap)
            try:
                p = h.parent()
            finally:
                h.close()
        return out

    def _listed(self, item: Any, count: Any, call: Callable[[Any, Any], int], what: str) -> tuple[Any, int, int]:
        """A librbd listing into an array of ``item`` that grows while librbd answers ERANGE with the
        count it needs (up to MAX_BATCH): (array, return code, count)."""
        n = FIRST_BATCH
        while True:
            arr = (item * n)()
            cnt = count(n)
            rc = call(arr, ctypes.byref(cnt))
            if rc == -errno.ERANGE and n < cnt.value <= MAX_BATCH:
                n = cnt.value
                continue
            self._check(rc, what)
            return arr, rc, cnt.value

    def snapshots(self) -> list[tuple[str, int, bool]]:
        arr, rc, _ = self._listed(lib.SnapInfo, ctypes.c_int, lambda a, c: self.lib.rbd_snap_list(self.h, a, c),
                                  "snapshot list")
        try:
            out = []
            for s in arr[:rc]:
                prot = ctypes.c_int()
                self._check(self.lib.rbd_snap_is_protected(self.h, s.name, ctypes.byref(prot)), "snapshot")
                out.append((_s(s.name), int(s.size), bool(prot.value)))
            return out
        finally:
            self.lib.rbd_snap_list_end(arr)

    def watchers(self) -> list[str]:
        arr, _, n = self._listed(lib.Watcher, ctypes.c_size_t,
                                 lambda a, c: self.lib.rbd_watchers_list(self.h, a, c), "watchers")
        try:
            return [f"client.{w.id} at {_s(w.addr)} (cookie {w.cookie})" for w in arr[:n]]
        finally:
            self.lib.rbd_watchers_list_cleanup(arr, n)

    def extents(self, size: int) -> tuple[array[int], array[int]]:
        """Allocated extents through the clone chain, merged: (starts, ends), sorted."""
        starts, ends = array("Q"), array("Q")
        failed: list[str] = []

        def cb(off: int, length: int, exists: int, _arg: object) -> int:
            if not exists or not length:
                return 0
            if len(starts) >= MAX_EXTENTS:
                failed.append(f"more than {MAX_EXTENTS} extents")
                return -errno.E2BIG
            if ends and off <= ends[-1]:  # adjacent (object boundary) or out of order
                if off >= starts[-1]:
                    ends[-1] = max(ends[-1], off + length)
                    return 0
                failed.append("extents out of order")
                return -errno.EINVAL
            starts.append(off)
            ends.append(off + length)
            return 0

        rc = self.lib.rbd_diff_iterate2(self.h, None, 0, size, 1, 0, lib.DIFF_CB(cb), None)
        if failed:
            raise IOFailure(f"{self.spec}: extent query: {failed[0]}")
        self._check(rc, "extent query (diff_iterate2)")
        if ends and ends[-1] > size:
            raise IOFailure(f"{self.spec}: extent query reports bytes up to {ends[-1]} beyond the size {size}")
        return starts, ends

    def read(self, offset: int, n: int, addr: int) -> int:
        """``rbd_read2`` into ``addr``; IOFailure once the handle is closed (never a freed handle)."""
        with self._reads:
            if not self.h:
                raise IOFailure(f"{self.spec}: read at offset {offset} after the image was closed")
            h, self._inflight = self.h, self._inflight + 1
        try:
            return int(self.lib.rbd_read2(h, offset, n, addr, 0))
        finally:
            with self._reads:
                self._inflight -= 1
                self._reads.notify_all()

    def close(self) -> bool:
        """Close once no read is in flight; False (the handle is left open, the process ends soon
        anyway) when reads are still running after CLOSE_WAIT_S: freeing it under them would crash."""
        with self._reads:
            if not self._reads.wait_for(lambda: self._inflight == 0, timeout=CLOSE_WAIT_S):
                return False
            self.pool.handles.discard(self)
            if self.h:
                self.lib.rbd_close(self.h)
                self.h = ctypes.c_void_p()
        return True


class RbdImage:
    """An RBD image (its head) as a :class:`~euca2kvm.blocks.BlockSource`: DATA where the cluster
    reports allocated extents (through parents), HOLE elsewhere. One librbd handle serves every
    thread (librbd is thread-safe; ctypes drops the GIL while it reads)."""

    def __init__(self, pool: Pool, name: str, expected_watchers: list[str] | None = None,
                 handle: _Handle | None = None) -> None:
        """``expected_watchers``: those the scan reported (and the caller accepted); any other watcher
        now is refused (exit 4). The identity is taken before the extents, so that a write after it
        shows in :meth:`recheck`. ``handle``: this image's handle, still open from the scan (its
        header as read then: a change since shows in :meth:`recheck`, which opens the image afresh)."""
        self._h = handle if handle is not None and handle.h and handle.name == name else _Handle(pool, name)
        self._watchers = expected_watchers
        try:
            added = identity.new_watchers(self._h, expected_watchers)
            if added:
                raise InUseError(f"{self._h.spec}: in use since the scan: watched by {', '.join(added)}")
            self._identity = identity.image_identity(self._h)
            self._size = self._h.size()
            self._starts, self._ends = self._h.extents(self._size)
        except BaseException:
            self._h.close()
            raise

    @property
    def name(self) -> str:
        return self._h.spec

    @property
    def size(self) -> int:
        return self._size

    def kinds(self) -> frozenset[Kind]:
        return frozenset({Kind.DATA, Kind.HOLE})

    def allocated(self) -> int:
        return sum(e - s for s, e in zip(self._starts, self._ends, strict=True))

    def ranges(self, lo: int, hi: int) -> Iterator[Range]:
        if not 0 <= lo <= hi <= self._size:
            raise ValueError(f"range [{lo}, {hi}) outside {self.name} of {self._size} bytes")
        pos = lo
        i = max(bisect.bisect_right(self._ends, lo), 0)
        while pos < hi:
            if i >= len(self._starts) or self._starts[i] >= hi:
                yield Range(pos, hi - pos, Kind.HOLE)
                return
            s, e = self._starts[i], self._ends[i]
            if s > pos:
                yield Range(pos, s - pos, Kind.HOLE)
                pos = s
            end = min(e, hi)
            yield Range(pos, end - pos, Kind.DATA)
            pos = end
            i += 1

    def read_into(self, offset: int, view: memoryview) -> None:
        n = len(view)
        if offset < 0 or offset + n > self._size:
            raise IOFailure(f"{self.name}: read of {n} bytes at offset {offset} beyond the size {self._size}")
        if not n:
            return
        buf = (ctypes.c_char * n).from_buffer(view)
        got = self._h.read(offset, n, ctypes.addressof(buf))
        if got != n:
            why = strerror(got) if got < 0 else f"{got} of {n} bytes (the image shrank?)"
            raise IOFailure(f"{self.name}: read at offset {offset}: {why}")

    def identity(self) -> dict[str, Any]:
        """What the manifest records of this image (:mod:`.identity`), as taken when it was opened."""
        return dict(self._identity)

    def recheck(self) -> dict[str, Any]:
        return identity.recheck(self._h, self._watchers)

    def close(self) -> None:
        self._h.close()

    def __enter__(self) -> RbdImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
