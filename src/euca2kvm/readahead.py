# SPDX-License-Identifier: Apache-2.0
"""How a source read once, front to back, keeps a cold disk streaming: the read size and the hints.

Measured with ``bench/bench_datapath.py --cases coldread --size 1G --runs 5 --cold evict`` (a 1 GiB
file, its pages dropped before each read by ``posix_fadvise(DONTNEED)``, checked with ``fincore``;
2 cores shared with other work, load average 5-12: single samples vary up to 3x, so only what held
in every run counts). Medians relative to plain buffered 4 MiB ``preadv`` in the same run:

  variant                               runs 1-5 (load 5.5-9 / 7 / 10-12 / 9-12 / 11-12)
  preadv 1M / 16M                       0.78 3.42 0.59 -    -    /  1.34 1.25 0.82 0.88 -
  4M + POSIX_FADV_SEQUENTIAL            1.37 0.77 0.63 0.66 0.85
  4M + SEQUENTIAL + DONTNEED behind     -    -    0.30 0.55 0.80  (without SEQUENTIAL: 0.48 in run 4)
  4M + WILLNEED / readahead(2) 32M on   1.31 2.70 1.03 -    -    /  1.86 2.91 0.78 -    -
  O_DIRECT 4M / 16M (aligned)           2.37 3.58 1.02 -    2.76 /  2.10 3.64 1.01 -    -
  O_DIRECT 4M x 4 threads               -    -    0.86 1.05 -
  4M x 2 threads                        1.88 1.64 0.79 -    -
  with a BLAKE3 of each block (run 5, seconds): plain 6.1, SEQUENTIAL 5.9, SEQUENTIAL + DONTNEED 3.0

- Buffered reads win: the kernel's asynchronous readahead (``read_ahead_kb`` 8 MiB on this virtio
  disk, doubled for the file by ``POSIX_FADV_SEQUENTIAL``) keeps requests in flight while the
  reader hashes. ``O_DIRECT`` has none (one request in flight: never faster, up to 3.6x slower);
  ``WILLNEED``/``readahead(2)`` start I/O synchronously in the caller, in fixed chunks, instead of
  the kernel's marks; parallel readers of one file defeat its sequential detection.
- Dropping each block from the cache once used (:func:`release`) was the fastest variant in every
  run it was in (by little in run 5, by 2x there with the hash in the loop; again 3.8 s against
  6.0 s, medians of 4, for one reader of 2 GiB in 512 KiB calls with two BLAKE3 threads): the
  reader keeps reusing a few MiB of pages instead of taking fresh ones (likely why it matters so
  much here: the VM's balloon reports free pages to the host, so a fresh page costs a host fault),
  and on a storage controller an export of hundreds of GiB no longer evicts the controller's own
  working set. Pages that were cached before the read (another process's) must stay: the cache
  state of each part is taken ahead of the reader (:class:`CacheProbe`, ``cachestat(2)``), and
  only what was not cached then is dropped.
- 1 MiB and 16 MiB requests were not reliably better or worse than 4 MiB.

So: one reader per file (more workers may hash, not read), :data:`READ_CHUNK` reads, :func:`advise`
once on each source file, :func:`release` behind the reader of what :class:`CacheProbe` found
uncached, where a source is read once. Later measurements on this VM (:data:`DIRECT`) found the
kernel's copy out of the page cache costing more than the disk itself, so whole aligned blocks that
no one had cached are now read with ``O_DIRECT`` (:func:`open_direct`), the rest through the cache
as above. It imports nothing of euca2kvm but its units: any layer may use it.
"""

from __future__ import annotations

import enum
import errno
import os

from .units import KiB, MiB

# 4 MiB per read request: 1 MiB and 16 MiB were no better on a cold file here (0.59-3.4x and
# 0.82-1.34x of 4 MiB in four runs), and 4 MiB is the block digest's block (DIGEST_BLOCK): each
# request is one digest block and one buffer of the copy's per-worker pool. A request is made of
# system calls of at most SYSCALL_BYTES.
READ_CHUNK = 4 * MiB

# At most 512 KiB per read or write system call on a local file. ``bench/bench_syscall.py --size 2G
# --runs 3`` (a page-cached file copied with a BLAKE3 of each 4 MiB block, two threads, the same
# 4 MiB buffers; medians, wall / system seconds): one call of 4 MiB per block 3.96 / 4.33, one
# preadv/pwritev of eight 512 KiB iovecs 2.42 / 2.36, eight calls of 512 KiB 1.91 / 1.84, of 256 KiB
# 2.47 / 2.66 (an earlier round: 2.1, 4.8-5.2, 1.1-1.3, 1.1-1.5 s). The kernel's copy to and from
# the page cache costs by the size of the call, not of the buffer; 512 KiB is this CPU's L2. The
# 2 GiB export went from 5.85 to 2.4 s (system time 6.4 to 2.3 s). Cold reads are led by the
# kernel's readahead window (8 MiB here, doubled by :func:`advise`), not by the call size.
SYSCALL_BYTES = 512 * KiB

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


def release(fd: int, offset: int, length: int) -> None:
    """Drop bytes ``[offset, offset + length)`` of ``fd``, already read and used, from the page cache
    (``POSIX_FADV_DONTNEED``): call it behind the reader of a source read once. Clean pages only
    (a source is never written), so nothing is lost; a later reader of the same bytes reads the disk.

    Measured (see the module docstring) this is the largest gain on a cold source here, and it keeps
    an export of hundreds of GiB from pushing the storage controller's own working set out of the
    cache. Whether pages were cached before cannot be told afterwards (the kernel's readahead has
    brought the next blocks in before they are read, an ``RWF_NOWAIT`` probe sees them as cached),
    so a caller that wants a page-cached source to stay cached must not call it."""
    if offset < 0 or length <= 0:
        raise ValueError(f"release: offset {offset} must not be negative and length {length} must be positive")
    try:
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
    except OSError as e:
        if e.errno not in _NO_ADVICE:
            raise


# Parts of a source that no one had cached are read with O_DIRECT: the disk's DMA lands in the reader's
# own buffer and nothing is copied out of the page cache. On this VM that copy came to cost more than
# the disk (it varies with the host: fresh page-cache pages fault on the host, and ``perf`` of a cold
# verified sync put 77 % of its samples in the kernel's ``_copy_to_iter``). 8 GiB dense, cold, 1 % of
# the blocks changed, medians of 5 interleaved with the code before (``bench/bench_warm.py --size 8G
# --changed 0.01 --runs 5 --evict --baseline-src``): ``export --sync`` 10.88 s (system 7.17 s) buffered
# against 7.74 s (0.29 s) direct, ``--sync --no-verify`` 6.73 s (4.27 s) against 3.77 s (0.22 s);
# ``dd bs=4M iflag=direct`` 4.90 s, ``cat`` 17.67 s; a full 4 GiB export 4.38-4.77 against 3.77-3.82 s
# (``bench/bench_datapath.py --cases dense --size 4G --cold evict``, two rounds each way). (Earlier, on the
# same kind of VM with the host's memory in another state, single-threaded O_DIRECT reads measured
# up to 3.6x slower than readahead: the module docstring's table; that is why it is only taken where
# whole aligned blocks are read, and EUCA2KVM_DIRECT=0 turns it off, to measure against.) What was
# cached stays read through the cache: memory is faster than any disk.
DIRECT = os.environ.get("EUCA2KVM_DIRECT", "1") != "0"
# O_DIRECT needs the offset, the length and the buffer's address aligned to the device's logical block
# (512 or 4096 bytes); 4096 fits both. A read that is not is done through the page cache.
DIRECT_ALIGN = 4 * KiB


def open_direct(fd: int) -> int | None:
    """A second descriptor of the file open as ``fd``, read-only with ``O_DIRECT`` (the same inode:
    reopened through ``/proc/self/fd``); None where O_DIRECT cannot be had (tmpfs, a FUSE file)."""
    try:
        return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
    except OSError:
        return None


def direct_aligned(offset: int, view: memoryview) -> bool:
    """Whether ``view`` at ``offset`` can be read with O_DIRECT: offset, length and address aligned."""
    if offset % DIRECT_ALIGN or len(view) % DIRECT_ALIGN or not len(view) or view.readonly:
        return False
    import ctypes  # on first use: the CLI's start-up loads no ctypes (tests/test_startup.py)

    return ctypes.addressof(ctypes.c_char.from_buffer(view)) % DIRECT_ALIGN == 0


class DropBehind(enum.Enum):
    """What a local source file drops from the page cache behind its reader (:func:`release`)."""

    KEEP = "keep"  # nothing: the source stays cached (export --keep-cache)
    UNCACHED = "uncached"  # what was not cached before this process first read the file (the default)
    ALL = "all"  # everything read (export --drop-behind)


# The mode of local source files (``lvm.source.LocalFile``) opened from now on. The default
# leaves the page cache as the export found it: what other processes had cached (a running
# instance's disk during a warm pass, a controller's working set) stays, what the export brought
# in goes, which is also the fastest cold read measured here (above). Without cachestat(2)
# (Linux < 6.5) the cache state cannot be told and UNCACHED keeps everything.
_MODE = DropBehind.UNCACHED


def set_drop_behind(mode: DropBehind) -> None:
    """Set what local source files opened from now on drop from the page cache behind the reader (and
    whether the mover drops a raw output's pages behind its writer: not with KEEP)."""
    global _MODE
    _MODE = mode


def drop_behind() -> DropBehind:
    """The mode :func:`set_drop_behind` set."""
    return _MODE


# cachestat(2) (Linux 6.5): one number on every architecture (the unified syscall table).
_SYS_CACHESTAT = 451
# Grains of a file whose cache state is taken ahead of its reader: the kernel's readahead runs at
# most twice ``read_ahead_kb`` (8 MiB here) doubled by :func:`advise`, i.e. 32 MiB, ahead of the
# reads; 64 MiB keeps the probes ahead of it, so what the reader's own readahead brought in is never
# taken for another process's pages. About 3 us a probe: 16 per 64 MiB read, noise.
PROBE_GRAIN = READ_CHUNK
PROBE_AHEAD = 64 * MiB


class CacheProbe:
    """``cachestat(2)`` of one descriptor: whether any page of a range is in the page cache now."""

    def __init__(self, fd: int) -> None:
        import ctypes  # only where the cache state is taken

        class _Range(ctypes.Structure):
            _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]

        class _Stat(ctypes.Structure):
            _fields_ = [(n, ctypes.c_uint64) for n in ("nr_cache", "nr_dirty", "nr_writeback", "nr_evicted",
                                                          "nr_recently_evicted")]

        self._fd = fd
        self._syscall = ctypes.CDLL(None, use_errno=True).syscall
        self._syscall.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint]
        self._syscall.restype = ctypes.c_long
        self._rng, self._st = _Range(), _Stat()
        self._ref = ctypes.byref

    def cached(self, offset: int, length: int) -> bool | None:
        """Whether any page of ``[offset, offset + length)`` is cached; None when the kernel cannot
        tell (no ``cachestat``, a descriptor without a page cache)."""
        self._rng.off, self._rng.len = offset, length
        if self._syscall(_SYS_CACHESTAT, self._fd, self._ref(self._rng), self._ref(self._st), 0) != 0:
            return None
        return bool(self._st.nr_cache)

    def pages(self, offset: int, length: int) -> int | None:
        """Pages of ``[offset, offset + length)`` in the page cache; None when the kernel cannot tell."""
        if self.cached(offset, length) is None:
            return None
        return int(self._st.nr_cache)

    def dirty(self, offset: int, length: int) -> int | None:
        """Pages of ``[offset, offset + length)`` dirty or being written back; None when the kernel cannot tell."""
        if self.cached(offset, length) is None:
            return None
        return int(self._st.nr_dirty + self._st.nr_writeback)


# linux/fs.h: start writeback of a range's dirty pages and do not wait for it; with both waits, return
# once the range is on the disk (what was being written before, and what this call started).
SYNC_FILE_RANGE_WAIT_BEFORE, SYNC_FILE_RANGE_WRITE, SYNC_FILE_RANGE_WAIT_AFTER = 1, 2, 4


class Writeback:
    """Starts the writeback of ranges of one output file as soon as they are written, without waiting
    (``sync_file_range(SYNC_FILE_RANGE_WRITE)``; Python's os has no binding, so through libc).

    A file written through the page cache is otherwise written back only when the kernel's
    background threshold (``dirty_background_ratio``, 10 % of memory: GiBs) is crossed or at the
    final ``fsync``/``sync``: the disk idles while the copy runs and all of it is written after.
    Started per block, writeback runs beside the copy. :meth:`start` never raises: where the call
    is not available (no libc symbol, ``ENOSYS``, ``EINVAL``, ``ESPIPE``, any error) it stops
    trying and the pages are written back as before; nothing is lost either way.

    Measured (``bench/bench_direct.py --hash``, fsync included, interleaved; medians, wall seconds;
    no kick / a kick per 4 MiB / per 16 MiB): 800 MiB page-cached 3.05 / 2.86 / 2.38 (5 runs) and
    3.42 / 2.74 / 2.48 (3 runs; ``dd bs=1M`` 2.36 and 4.13); 2 GiB cold, load average 4: 7.88 /
    6.87 / 6.89 (every round faster). Under heavier load (6-8, other exports writing the same disk)
    2 GiB cold was slower with it, 10.8 / 19.1 / 21.6 (spread 2-3x), and page-cached within noise.
    The real export, ``bench_datapath.py --cases small --size 8G --runs 3 --cold none``, same
    machine state: 3.12 s (0.60x dd) with ``EUCA2KVM_KICK=0``, 2.66 s (0.72x dd) with the kick; on the
    quiet machine 3.07 / 2.83 s without against 2.67 / 2.47 s with it, and 8 GiB dense cold
    (``--cases dense --cold drop``, sync included): verified 24.17 -> 19.03 s, ``--no-verify``
    21.74 -> 18.96 s, against ``qemu-img convert`` 22.50 / 21.97 s in the same runs.
    Per 4 MiB, the mover's block, because it is one call per written block, with no state shared
    between the workers. ``copy.KICK`` (``EUCA2KVM_KICK=0``) turns it off to measure against."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._call = None
        try:
            import ctypes  # only where an output is written

            fn = ctypes.CDLL(None, use_errno=True).sync_file_range
        except (OSError, AttributeError):
            self.enabled = False
            return
        fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        fn.restype = ctypes.c_int
        self._call = fn
        self.enabled = True

    @classmethod
    def of_file(cls, fd: int) -> Writeback | None:
        """A kicker for ``fd`` if it is a regular file (an output is a new one), else None: a pipe has
        no pages to write back, and a block device's page cache is the device's, shared with others."""
        import stat

        return cls(fd) if stat.S_ISREG(os.fstat(fd).st_mode) else None

    def start(self, offset: int, length: int) -> bool:
        """Start writing back ``[offset, offset + length)``; False (and no more tries) when the kernel cannot."""
        return self._range(offset, length, SYNC_FILE_RANGE_WRITE)

    def drop(self, offset: int, length: int) -> bool:
        """Wait until ``[offset, offset + length)`` (started earlier: long done, as a rule) is on the disk,
        then drop its pages from the page cache (:func:`release`): an output written once keeps reusing
        a few MiB of pages instead of taking fresh ones, as a source read once does (the reason is
        measured at ``copy.DROP_LAG``). False (and no more tries) when the kernel cannot wait for it:
        the pages then stay, as any written page."""
        if not self._range(offset, length, SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE
                           | SYNC_FILE_RANGE_WAIT_AFTER):
            return False
        try:
            release(self._fd, offset, length)
        except OSError:
            return False
        return True

    def _range(self, offset: int, length: int, flags: int) -> bool:
        if not self.enabled or length <= 0:
            return False
        assert self._call is not None
        try:
            ok = self._call(self._fd, offset, length, flags) == 0
        except OSError:  # a replacement raising (tests) behaves as a failing call
            ok = False
        if not ok:
            self.enabled = False
        return ok
