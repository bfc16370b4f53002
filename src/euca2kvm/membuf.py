# SPDX-License-Identifier: Apache-2.0
"""Page-aligned I/O buffers: every buffer the kernel copies a block into or out of comes from here.

The kernel copies between the page cache and a user buffer with ``rep movsb``. A ``bytearray`` (or a
ctypes buffer) of a few MiB is mapped by malloc with the chunk's header first, so its bytes start 16
bytes into a page while the page cache's start on one: every load of that copy then falls just
after a store it has made, 16 bytes apart modulo 4 KiB, and waits on it (4K aliasing). On the test
VM's AMD EPYC, 4 GiB read from the page cache into one 4 MiB buffer took 2.4-4.3 s of system time
at page offsets 8 and 16, and 0.55-0.8 s at 0, 32, 48, 80, 272 or 2064. ``bench/bench_syscall.py
--size 2G --runs 3`` (2 GiB page-cached, two threads, 512 KiB calls, a BLAKE3 of each 4 MiB block;
medians, wall / system s), a buffer 16 bytes into a page against a page-aligned one: read and hashed
(a verification pass) 1.15 / 1.26 against 0.58 / 0.31, copied 2.01 / 2.25 against 1.39 / 1.26. A
``bytearray`` taken from malloc's heap after earlier frees starts wherever it falls, so the cost
came and went from run to run.

A buffer is an anonymous private mapping: page-aligned, zero-filled on first touch, returned to the
system when the last view of it goes, so the NBD server's per-block buffers no longer pile up in
malloc's heap under the read-back's (a verified 800 MiB qcow2 export peaked at 63-72 MiB, now
41-45 MiB). One of 2 MiB or more asks for huge pages (``MADV_HUGEPAGE``; the kernel aligns such
mappings to 2 MiB): a fresh 4 MiB buffer per served block then costs two page faults, not 1024
(same export, three runs each: 1.58-1.87 s against 1.57-1.65 s with malloc's reused heap, and
1.88-2.15 s with 4 KiB pages). Only euca2kvm's own memory is mapped (never a source file: see
``export/copy.py``). It imports nothing of euca2kvm: any layer may use it.
"""

from __future__ import annotations

import contextlib
import functools
import mmap
from typing import Any

# A transparent huge page (x86-64): buffers at least this large ask for them.
HUGE = 2 << 20


def aligned(n: int) -> memoryview:
    """A writable, zeroed, page-aligned buffer of ``n`` bytes."""
    if n <= 0:
        return memoryview(bytearray(0))
    m = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE)
    if n >= HUGE:
        with contextlib.suppress(OSError, AttributeError):  # advice only (no THP: 4 KiB pages)
            m.madvise(mmap.MADV_HUGEPAGE)
    return memoryview(m)


def same(a: memoryview, b: memoryview) -> bool:
    """Whether two buffers hold the same bytes, by one ``memcmp``: ``==`` on memoryviews compares element
    by element (11.6 ms per 4 MiB here, against 0.28 ms)."""
    if a.nbytes != b.nbytes:
        return False
    if a.nbytes == 0:
        return True
    if a.readonly or b.readonly or not (a.c_contiguous and b.c_contiguous):
        return a.tobytes() == b.tobytes()
    import ctypes

    n = a.nbytes
    return int(_memcmp()((ctypes.c_char * n).from_buffer(a), (ctypes.c_char * n).from_buffer(b), n)) == 0


@functools.cache
def _memcmp() -> Any:
    """libc's ``memcmp`` (loaded on first use: ctypes costs start-up time nothing else here needs)."""
    import ctypes

    f = ctypes.CDLL(None).memcmp
    f.argtypes, f.restype = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t], ctypes.c_int
    return f
