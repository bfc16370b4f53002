#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""O_DIRECT for the raw mover's output (and input): buffered 512 KiB calls against direct I/O.

    python bench/bench_direct.py [--size 2G] [--runs 3] [--cache cold,warm] [--hash]
                                 [--variants all] [--workdir /var/tmp/euca2kvm-bench-direct]

Copies a file of ``--size`` random bytes to a new (truncated, sparse) file the way the mover does:
4 MiB blocks into page-aligned buffers (anonymous mmap), one buffered reader in 512 KiB calls
(``POSIX_FADV_SEQUENTIAL``, and on a cold source the blocks read dropped behind the reader, as
``DropBehind.UNCACHED`` does), writers taking the blocks from a queue. Variants change only the
writes (and, for ``dr-``, the reads):

  buf          buffered 512 KiB ``pwrite`` calls, one writer at a time (the mover today)
  dw4M-wN      O_DIRECT writes of one 4 MiB call per block, N writers in flight (no lock)
  dw1M-wN      O_DIRECT writes of 1 MiB calls, N writers in flight
  dr-dw4M-wN   O_DIRECT reads and writes of 4 MiB, N threads each reading then writing a block
  buf-kN       buf, and after every N MiB written (4, 16, 64) ``sync_file_range(SYNC_FILE_RANGE_WRITE)``
               of them: their writeback starts while the copy goes on (a "kick"; the writer never waits)
  qemu-img     ``qemu-img convert -f raw -O raw`` (and ``-t none``, ``-T none -t none``)
  dd           ``dd bs=1M``

Every time includes the ``fsync`` of the output (for the tools: one ``fsync`` of their output
after they exit), so writeback is counted for all alike. ``cold``: the source's pages are evicted
before each copy with ``posix_fadvise(DONTNEED)`` (the source is clean; the page cache of other
files is left alone); ``warm``: the source is read once before each copy. Variants run interleaved,
``--runs`` rounds; medians of wall, user and system seconds (this process's threads, or the tool's
rusage). ``--hash`` adds a BLAKE3 of each block on the writer (the verified export). Not a test:
numbers depend on the machine.

Measured on the 2-core test VM (ext4 on virtio, kernel 6.18; disk and CPU shared with other work,
load average 5-8: identical runs vary up to 3x), ``--runs 3``, medians wall / user / system seconds,
each run's wall in brackets:

  2 GiB, plain copy
  variant        cold                                 page-cached source
  buf            9.01 / 0.14 / 2.51  (8.5 9.0 10.5)    8.81 / 0.12 / 3.01  (8.9 8.8 8.6)
  dw4M-w1       13.23 / 0.14 / 1.06  (12.5 13.2 13.9)  13.18 / 0.15 / 0.90  (13.2 18.1 7.1)
  dw4M-w2       12.80 / 0.17 / 1.06  (12.8 12.0 14.5)   9.97 / 0.15 / 0.92  (13.5 9.6 10.0)
  dw4M-w4       12.15 / 0.14 / 1.10  (9.8 15.7 12.2)    7.10 / 0.11 / 0.90  (7.1 5.7 18.1)
  dw1M-w2       13.84 / 0.21 / 1.21  (13.8 15.9 5.5)   12.30 / 0.16 / 1.21  (15.0 7.7 12.3)
  dr-dw4M-w2    11.74 / 0.06 / 0.46  (18.0 9.0 11.7)   16.65 / 0.08 / 0.56  (19.8 14.7 16.7)
  dr-dw4M-w4    13.19 / 0.08 / 0.48  (7.8 13.2 16.5)    9.46 / 0.09 / 0.43  (12.3 9.4 9.5)
  qemu-img      11.60 / 0.22 / 3.21  (11.6 13.4 10.8)   8.56 / 0.19 / 2.94  (7.0 8.6 10.2)
  qemu-img -t   19.48 / 0.35 / 2.40  (18.0 41.9 19.5)  11.38 / 0.31 / 1.14  (11.4 7.8 19.5)
  qemu-img -tT  22.09 / 0.47 / 1.13  (38.0 22.1 18.9)  18.69 / 0.40 / 0.78  (18.7 19.9 11.7)
  dd            14.77 / 0.00 / 5.66  (20.2 8.2 14.8)    7.34 / 0.01 / 1.59  (5.8 7.3 8.7)

  2 GiB, --hash (the verified export), load average 6-8
  buf           12.80 / 1.08 / 3.33  (12.8 14.2 12.4)   8.40 / 1.24 / 2.87  (8.4 8.4 6.5)
  dw4M-w4       16.66 / 1.39 / 1.29  (11.6 22.7 16.7)   8.26 / 1.16 / 0.92  (6.5 14.7 8.3)
  dr-dw4M-w4    18.84 / 1.24 / 0.77  (18.8 20.2 18.8)  13.72 / 1.10 / 0.55  (13.7 30.8 9.5)
  qemu-img      12.56 / 0.23 / 4.96  (11.3 12.6 12.7)   8.22 / 0.20 / 2.74  (8.2 6.7 11.1)

  4 GiB, cold, one run: buf 19.74 / 0.25 / 5.33, dw4M-w4 32.45 / 0.22 / 2.11,
  dr-dw4M-w4 42.35 / 0.20 / 1.01, qemu-img 28.75 / 0.50 / 8.75

  Writeback kick (``buf-kN``), --hash, load average 6-8 with other exports on the disk, medians:
  800 MiB page-cached, 5 runs: buf 3.05 / 0.52 / 0.75, buf-k4M 2.86 / 0.49 / 0.79, buf-k16M
  2.38 / 0.54 / 0.83, qemu-img 3.08 / 0.10 / 1.62, dd 2.36 / 0.00 / 0.50 (3 runs before: buf 5.14,
  k4M 3.01, k16M 3.81, k64M 4.63, qemu-img 4.79, dd 2.64)
  2 GiB, 3 runs   cold                                 page-cached source
  buf           10.82 / 1.15 / 1.89  (29.4 10.8 10.7)  15.49 / 1.36 / 1.67  (16.2 8.6 15.5)
  buf-k4M       19.07 / 1.14 / 3.27  (28.8 14.1 19.1)  15.02 / 1.20 / 2.08  (11.8 15.7 15.0)
  buf-k16M      21.63 / 1.07 / 2.61  (32.7 21.6 17.6)   9.65 / 1.18 / 1.80  (19.2 8.2 9.7)
  buf-k64M      14.87 / 1.17 / 2.48  (27.4 14.9 13.2)  16.16 / 1.12 / 2.21  (20.5 9.2 16.2)
  qemu-img      11.14 / 0.24 / 3.63  (10.9 12.2 11.1)   9.60 / 0.24 / 2.38  (12.1 5.6 9.6)
  dd            21.50 / 0.01 / 3.62  (24.8 21.5 14.0)   9.30 / 0.00 / 1.63  (24.0 7.5 9.3)

  Later, load average 4: 800 MiB page-cached buf 3.42, k4M 2.74, k16M 2.48, dd 4.13; cold 3.56,
  3.59, 3.69, dd 5.09; 2 GiB cold buf 7.88 / 1.24 / 2.57 (8.7 7.9 7.8), buf-k4M 6.87 / 1.21 / 2.81
  (7.9 6.9 6.5), buf-k16M 6.89 / 1.16 / 3.18 (7.8 6.7 6.9).

Under heavy load from other writers of the disk the kick lost cold (reads and writes interleaved);
with less load it won cold and page-cached, as the real export did, so the mover kicks per 4 MiB
block (``euca2kvm.readahead.Writeback``). Its system time includes the writeback's submission,
which for ``buf`` runs in kernel threads.

So O_DIRECT is not used. It does what it promises for the CPU: the writes' system time falls from
2.5-3.3 s to 0.9-1.3 s per 2 GiB, with direct reads too to 0.4-0.8 s (this process's time only:
buffered writeback's submission runs in kernel threads and is not counted for ``buf``). But the
copy is bound by this disk, not by the CPU, and a direct write is synchronous: with one or two
writers in flight it is 40-50 % slower cold; four in flight are slower cold (12.2 against 9.0 s,
16.7 against 12.8 s hashed) and only equal or faster with a page-cached source, with the widest
spread of all; direct reads have no kernel readahead and lose most. Buffered writes let writeback
keep the disk's queue full while the reader goes on. qemu-img's own ``-t none``/``-T none`` are
slower than its default in the same way. Worth measuring again where the CPU, not the disk, bounds
an export (a faster disk, a busier CPU), with ``--runs 5`` on a quiet machine.
"""

from __future__ import annotations

import argparse
import mmap
import os
import queue
import resource
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

KiB = 1 << 10
MiB = 1 << 20
BLOCK = 4 * MiB
CALL = 512 * KiB  # euca2kvm.readahead.SYSCALL_BYTES


def parse_size(text: str) -> int:
    units = {"K": KiB, "M": MiB, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1].upper() in units else int(text)


def _pread_calls(fd: int, view: memoryview, off: int, call: int) -> None:
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got : got + call]], off + got)
        if n <= 0:
            raise OSError(f"short read at {off + got}")
        got += n


def _pwrite_calls(fd: int, view: memoryview, off: int, call: int) -> None:
    done = 0
    while done < len(view):
        n = os.pwrite(fd, view[done : done + call], off + done)
        done += n


SYNC_FILE_RANGE_WRITE = 2  # linux/fs.h: start writeback of the range's dirty pages, do not wait


def _sync_file_range() -> Callable[[int, int, int, int], int]:
    import ctypes

    fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


def own_copy(src: Path, out: Path, size: int, variant: str, cold: bool, hash_: bool) -> tuple[float, float, float]:
    """(wall, user, system) seconds of one copy by this process."""
    import blake3

    direct_write = not variant.startswith("buf")
    kick = int(variant[5:-1]) * MiB if variant.startswith("buf-k") else 0
    kicked = [0]  # bytes up to which writeback was started (blocks are written in order, nearly)
    sfr = _sync_file_range() if kick else None
    direct_read = variant.startswith("dr-")
    call = 1 * MiB if "dw1M" in variant else BLOCK
    writers = int(variant.rsplit("-w", 1)[1]) if "-w" in variant else 2
    out.unlink(missing_ok=True)
    ofd = os.open(out, os.O_WRONLY | os.O_CREAT | (os.O_DIRECT if direct_write else 0), 0o644)
    sfd = os.open(src, os.O_RDONLY | (os.O_DIRECT if direct_read else 0))
    os.ftruncate(ofd, size)
    if not direct_read:
        os.posix_fadvise(sfd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    nblocks = size // BLOCK
    pool: queue.Queue[mmap.mmap] = queue.Queue()
    for _ in range(writers + 2):
        pool.put(mmap.mmap(-1, BLOCK))
    work: queue.Queue[tuple[int, mmap.mmap] | None] = queue.Queue()
    wlock = threading.Lock()
    nxt = [0]
    nlock = threading.Lock()

    def write(i: int, buf: mmap.mmap) -> None:
        view = memoryview(buf)
        if hash_:
            blake3.blake3(view).digest()
        if direct_write:
            _pwrite_calls(ofd, view, i * BLOCK, call)
        else:
            with wlock:  # the mover's one writer at a time
                _pwrite_calls(ofd, view, i * BLOCK, CALL)
                end = (i + 1) * BLOCK
                if sfr is not None and end - kicked[0] >= kick:
                    sfr(ofd, kicked[0], end - kicked[0], SYNC_FILE_RANGE_WRITE)
                    kicked[0] = end
        view.release()

    def writer() -> None:
        while (item := work.get()) is not None:
            write(*item)
            pool.put(item[1])

    def reader() -> None:
        for i in range(nblocks):
            buf = pool.get()
            view = memoryview(buf)
            _pread_calls(sfd, view, i * BLOCK, CALL)
            view.release()
            if cold:
                os.posix_fadvise(sfd, i * BLOCK, BLOCK, os.POSIX_FADV_DONTNEED)
            work.put((i, buf))
        for _ in range(writers):
            work.put(None)

    def direct_worker() -> None:
        buf = mmap.mmap(-1, BLOCK)
        view = memoryview(buf)
        while True:
            with nlock:
                i = nxt[0]
                nxt[0] += 1
            if i >= nblocks:
                break
            _pread_calls(sfd, view, i * BLOCK, BLOCK)
            write(i, buf)
        view.release()

    t0, c0 = time.perf_counter(), os.times()
    if direct_read:
        threads = [threading.Thread(target=direct_worker) for _ in range(writers)]
    else:
        threads = [threading.Thread(target=reader)] + [threading.Thread(target=writer) for _ in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    os.fsync(ofd)
    t1, c1 = time.perf_counter(), os.times()
    os.close(ofd)
    os.close(sfd)
    out.unlink()
    return t1 - t0, c1.user - c0.user, c1.system - c0.system


def tool_copy(src: Path, out: Path, argv: list[str]) -> tuple[float, float, float]:
    out.unlink(missing_ok=True)
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, timeout=600, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    fd = os.open(out, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    t1 = time.perf_counter()
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    out.unlink()
    return t1 - t0, r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime


TOOLS = {
    "qemu-img": ["qemu-img", "convert", "-f", "raw", "-O", "raw", "{src}", "{out}"],
    "qemu-img-t": ["qemu-img", "convert", "-t", "none", "-f", "raw", "-O", "raw", "{src}", "{out}"],
    "qemu-img-tT": ["qemu-img", "convert", "-T", "none", "-t", "none", "-f", "raw", "-O", "raw", "{src}", "{out}"],
    "dd": ["dd", "if={src}", "of={out}", "bs=1M"],
}
OWN = ["buf", "buf-k4M", "buf-k16M", "buf-k64M", "dw4M-w1", "dw4M-w2", "dw4M-w4", "dw1M-w2", "dr-dw4M-w2", "dr-dw4M-w4"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="2G")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cache", default="cold,warm")
    ap.add_argument("--hash", action="store_true")
    ap.add_argument("--variants", default="all", help="comma list of " + ",".join(OWN + list(TOOLS)))
    ap.add_argument("--workdir", default="/var/tmp/euca2kvm-bench-direct")
    ap.add_argument("--keep-source", action="store_true")
    a = ap.parse_args()
    size = parse_size(a.size) // BLOCK * BLOCK
    variants = OWN + list(TOOLS) if a.variants == "all" else a.variants.split(",")
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    src, out = work / f"source-{size}", work / "out"
    if not src.exists() or src.stat().st_size != size:
        with open(src.with_suffix(".tmp"), "wb") as f:
            for _ in range(size // BLOCK):
                f.write(os.urandom(BLOCK))
            os.fsync(f.fileno())
        src.with_suffix(".tmp").rename(src)
    results: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    try:
        for _ in range(a.runs):
            for cache in a.cache.split(","):
                for v in variants:
                    fd = os.open(src, os.O_RDONLY)
                    if cache == "cold":
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    else:
                        while os.read(fd, BLOCK):
                            pass
                    os.close(fd)
                    os.sync()
                    if v in TOOLS:
                        r = tool_copy(src, out, [s.format(src=src, out=out) for s in TOOLS[v]])
                    else:
                        r = own_copy(src, out, size, v, cache == "cold", a.hash)
                    results.setdefault((cache, v), []).append(r)
                    print(f"{cache:4s} {v:12s} {r[0]:6.2f} {r[1]:5.2f} {r[2]:5.2f}", flush=True)
    finally:
        out.unlink(missing_ok=True)
        if not a.keep_source:
            src.unlink(missing_ok=True)
    print(f"\n{size >> 20} MiB, medians of {a.runs}{', BLAKE3 per block' if a.hash else ''}: wall / user / system s")
    for (cache, v), rs in results.items():
        wall, user, sys_ = (statistics.median(r[i] for r in rs) for i in range(3))
        print(f"  {cache:4s} {v:12s} {wall:6.2f} / {user:5.2f} / {sys_:5.2f}   (walls: "
              f"{', '.join(f'{r[0]:.2f}' for r in rs)})")


if __name__ == "__main__":
    main()
