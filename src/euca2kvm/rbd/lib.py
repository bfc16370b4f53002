# SPDX-License-Identifier: Apache-2.0
"""ctypes bindings of the few librados/librbd calls euca2kvm makes, and their error mapping.

Only read-only calls are bound: there is no ``rbd_open`` (read-write), no write, no snapshot or image
creation here, so no code path of euca2kvm can ask the cluster to change anything. Struct layouts
are those of Ceph 16 "pacific" and later (``rbd_linked_image_spec_t``, ``rbd_snap_spec_t``,
``rbd_image_watcher_t``, ``rbd_snap_info_t``, ``rbd_image_info_t``: stable C ABI of ``librbd.so.1``).

ctypes releases the GIL around every foreign call, so reads from several worker threads run in
parallel inside librbd, which is thread-safe per image handle.

Why ctypes on librbd (measured with bench/bench_rbd.py, 256 MiB dense image, memstore OSD on this
2-core machine, one run under load, 2026-12-01):

* the Debian bindings (``python3-rbd``/``python3-rados``) import only into the system interpreter; a
  venv on another Python cannot use them, and PyPI has no maintained wheel;
* the ``rbd`` CLI would mean a process per query and parsing ``--format json``; its ``rbd diff`` is
  per object, ending at the last byte written, the same answer as ``rbd_diff_iterate2`` but 0.29 s
  against 0.016 s for open + extent query in-process, and ``rbd export -`` (0.33 s for 256 MiB to
  /dev/null) streams every byte, holes included, through a pipe that would then need re-parsing for
  holes, where ``rbd_read2`` reads only the DATA ranges (0.28 s with one thread, 0.25 s with four:
  one shared handle is enough, so no per-thread handles or lock);
* ctypes needs nothing but ``librbd1``/``librados2``, which any Ceph client host has, and keeps the
  PyPI install working without Ceph (the libraries are loaded on first use only).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os

from ..errors import ToolError

LIBRADOS = "librados.so.2"
LIBRBD = "librbd.so.1"
DEBIAN_PACKAGES = "librados2 librbd1"

c_void_p, c_char_p, c_int, c_size_t, c_uint64, c_int64 = (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int,
                                                         ctypes.c_size_t, ctypes.c_uint64, ctypes.c_int64)
# rbd_diff_iterate2's callback: (offset, length, exists, arg) -> 0 to go on.
DIFF_CB = ctypes.CFUNCTYPE(c_int, c_uint64, c_size_t, c_int, c_void_p)


class LinkedImageSpec(ctypes.Structure):
    _fields_ = [("pool_id", c_int64), ("pool_name", c_char_p), ("pool_namespace", c_char_p),
                ("image_id", c_char_p), ("image_name", c_char_p), ("trash", ctypes.c_bool)]


class SnapSpec(ctypes.Structure):
    _fields_ = [("id", c_uint64), ("namespace_type", c_int), ("name", c_char_p)]


class Watcher(ctypes.Structure):
    _fields_ = [("addr", c_char_p), ("id", c_int64), ("cookie", c_uint64)]


class SnapInfo(ctypes.Structure):
    _fields_ = [("id", c_uint64), ("size", c_uint64), ("name", c_char_p)]


class ImageInfo(ctypes.Structure):
    _fields_ = [("size", c_uint64), ("obj_size", c_uint64), ("num_objs", c_uint64), ("order", c_int),
                ("block_name_prefix", ctypes.c_char * 24), ("parent_pool", c_int64),
                ("parent_name", ctypes.c_char * 96)]


class Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


P = ctypes.POINTER
_SIGNATURES: dict[str, tuple[type | None, list[type]]] = {
    # librados
    "rados_create2": (c_int, [P(c_void_p), c_char_p, c_char_p, c_uint64]),
    "rados_conf_read_file": (c_int, [c_void_p, c_char_p]),
    "rados_conf_set": (c_int, [c_void_p, c_char_p, c_char_p]),
    "rados_connect": (c_int, [c_void_p]),
    "rados_shutdown": (None, [c_void_p]),
    "rados_ioctx_create": (c_int, [c_void_p, c_char_p, P(c_void_p)]),
    "rados_ioctx_destroy": (None, [c_void_p]),
    "rados_ioctx_get_id": (c_int64, [c_void_p]),
    # asynchronous stats (identity.py): only the version is used, the size and mtime pointers are NULL
    "rados_aio_create_completion2": (c_int, [c_void_p, c_void_p, P(c_void_p)]),
    "rados_aio_stat": (c_int, [c_void_p, c_char_p, c_void_p, c_void_p, c_void_p]),
    "rados_aio_wait_for_complete": (c_int, [c_void_p]),
    "rados_aio_get_return_value": (c_int, [c_void_p]),
    "rados_aio_get_version": (c_uint64, [c_void_p]),
    "rados_aio_release": (None, [c_void_p]),
    # librbd (read-only calls only)
    "rbd_list": (c_int, [c_void_p, c_char_p, P(c_size_t)]),
    "rbd_open_read_only": (c_int, [c_void_p, c_char_p, P(c_void_p), c_char_p]),
    "rbd_open_by_id_read_only": (c_int, [c_void_p, c_char_p, P(c_void_p), c_char_p]),
    "rbd_close": (c_int, [c_void_p]),
    "rbd_stat": (c_int, [c_void_p, P(ImageInfo), c_size_t]),
    "rbd_get_size": (c_int, [c_void_p, P(c_uint64)]),
    "rbd_get_id": (c_int, [c_void_p, c_char_p, c_size_t]),
    "rbd_get_overlap": (c_int, [c_void_p, P(c_uint64)]),
    "rbd_get_modify_timestamp": (c_int, [c_void_p, P(Timespec)]),
    "rbd_get_stripe_unit": (c_int, [c_void_p, P(c_uint64)]),
    "rbd_get_stripe_count": (c_int, [c_void_p, P(c_uint64)]),
    "rbd_get_parent": (c_int, [c_void_p, P(LinkedImageSpec), P(SnapSpec)]),
    "rbd_linked_image_spec_cleanup": (None, [P(LinkedImageSpec)]),
    "rbd_snap_spec_cleanup": (None, [P(SnapSpec)]),
    "rbd_snap_list": (c_int, [c_void_p, P(SnapInfo), P(c_int)]),
    "rbd_snap_list_end": (None, [P(SnapInfo)]),
    "rbd_snap_is_protected": (c_int, [c_void_p, c_char_p, P(c_int)]),
    "rbd_watchers_list": (c_int, [c_void_p, P(Watcher), P(c_size_t)]),
    "rbd_watchers_list_cleanup": (None, [P(Watcher), c_size_t]),
    "rbd_diff_iterate2": (c_int, [c_void_p, c_char_p, c_uint64, c_uint64, ctypes.c_uint8, ctypes.c_uint8, DIFF_CB,
                                  c_void_p]),
    "rbd_read2": (ctypes.c_ssize_t, [c_void_p, c_uint64, c_size_t, c_void_p, c_int]),
}


class Libs:
    def __init__(self, rados: ctypes.CDLL, rbd: ctypes.CDLL) -> None:
        for name, (res, args) in _SIGNATURES.items():
            fn = getattr(rados if name.startswith("rados_") else rbd, name)
            fn.restype, fn.argtypes = res, args
            setattr(self, name, fn)

    def __getattr__(self, name: str) -> ctypes._NamedFuncPointer:  # only for the type checker
        raise AttributeError(name)


@functools.cache
def libs() -> Libs:
    """The loaded libraries; a clear ToolError (exit 7) naming the Debian packages when missing."""
    try:
        rados = ctypes.CDLL(os.environ.get("EUCA2KVM_LIBRADOS") or LIBRADOS)
        rbd = ctypes.CDLL(os.environ.get("EUCA2KVM_LIBRBD") or LIBRBD)
        return Libs(rados, rbd)
    except (OSError, AttributeError) as e:
        raise ToolError(f"Ceph RBD sources need {LIBRADOS} and {LIBRBD} (Ceph 16 or later): install the Debian "
                        f"packages {DEBIAN_PACKAGES} ({e})") from e


def strerror(rc: int) -> str:
    """librados/librbd return ``-errno``."""
    n = -rc if rc < 0 else rc
    return f"{os.strerror(n)} ({errno.errorcode.get(n, n)})"
