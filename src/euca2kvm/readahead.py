# SPDX-License-Identifier: Apache-2.0
"""How a source read once, front to back, keeps a cold disk streaming: the read size and the hints.

Measured with ``bench/bench_datapath.py --cases coldread`` (a 1 GiB file whose pages are evicted
before each read, ``posix_fadvise(DONTNEED)`` checked with ``fincore``; medians of 5, the load
average of the shared 2-core machine quoted with each run, see the study's table in issue 12's
note). What the kernel does with a buffered sequential reader is already the best plan here:

- ``preadv`` of 4 MiB, buffered, one reader: the kernel's own asynchronous readahead
  (``read_ahead_kb``, 8 MiB on this virtio disk) keeps requests in flight while the reader hashes.
- ``POSIX_FADV_SEQUENTIAL`` doubles that window for the file: as fast or faster in every run, and
  never slower beyond the noise.
- 16 MiB requests: slower than 4 MiB (1.25-1.35x): each request waits for more pages before it
  returns, and the hash of a 16 MiB block no longer overlaps the next read.
- ``POSIX_FADV_WILLNEED`` or ``readahead(2)`` issued ahead of the reader: 1.3-2.9x slower. Both
  start the I/O synchronously in the caller and replace the kernel's asynchronous readahead marks
  with their own fixed chunks.
- ``O_DIRECT`` (page-aligned buffers): 2.1-3.6x slower. Nothing reads ahead, so one request is in
  flight at a time and the disk idles while the reader hashes.
- 2 or 4 reader threads on one file: 1.6-3.3x slower: interleaved offsets defeat the sequential
  detection, so readahead shrinks.

So: one reader per file (more workers may hash, not read), 4 MiB buffered reads, and
:func:`advise` once on each source file. This module imports nothing of euca2kvm: any layer may
use it.
"""

from __future__ import annotations

import errno
import os

MiB = 1 << 20

# 4 MiB per preadv: fastest of 1/4/16 MiB on a cold file here (16 MiB was 1.25-1.35x slower, 1 MiB
# within the noise of 4 MiB at 4x the system calls), and the block digest's block (DIGEST_BLOCK),
# so each read is one digest block and one buffer of the copy's per-worker pool.
READ_CHUNK = 4 * MiB

# errno values that mean "this descriptor takes no advice" (a pipe, a socket; a file system that
# does not implement fadvise): advice is optional, reading still works.
_NO_ADVICE = frozenset({errno.ESPIPE, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP})


def advise(fd: int, offset: int = 0, length: int = 0) -> bool:
    """Tell the kernel that bytes ``[offset, offset + length)`` of ``fd`` (``length`` 0: to the
    end) will be read once, sequentially (``POSIX_FADV_SEQUENTIAL``: the file's readahead window
    doubles). Call once after opening a source file, before the first read.

    Returns False when the descriptor takes no advice (a pipe, a socket): reading still works.
    A bad descriptor is a defect of the caller and raises :class:`OSError` (``EBADF``)."""
    if offset < 0 or length < 0:
        raise ValueError(f"advise: offset {offset} and length {length} must not be negative")
    try:
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_SEQUENTIAL)
    except OSError as e:
        if e.errno in _NO_ADVICE:
            return False
        raise
    return True
