#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""System-call size of the block mover: the measurement behind ``euca2kvm.readahead.SYSCALL_BYTES``.

    python bench/bench_syscall.py [--size 2G] [--runs 3] [--workdir /var/tmp/euca2kvm-bench-syscall]

Copies a page-cached file of ``--size`` random bytes the way the mover does (two threads, a 4 MiB
buffer each, a BLAKE3 of every 4 MiB block, one writer at a time), varying only how each block is
read and written: one call of 4 MiB, one ``preadv``/``pwritev`` of 512 KiB iovecs, or separate
calls of 512 and 256 KiB, or only read and hashed (``digest``, as a verification pass); each from a
``bytearray`` placed as malloc places one of 4 MiB (16 bytes into a page) and from a page-aligned buffer
(``euca2kvm.membuf.aligned``: the measurement behind it). Variants run interleaved, ``--runs``
rounds; the time excludes the final ``fsync`` (writeback is the same for all). Not a test: numbers
depend on the machine.
"""

from __future__ import annotations

import argparse
import ctypes
import mmap
import os
import statistics
import threading
import time
from pathlib import Path

import blake3

KiB = 1 << 10
MiB = 1 << 20
BLOCK = 4 * MiB


def parse_size(text: str) -> int:
    units = {"K": KiB, "M": MiB, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1].upper() in units else int(text)


def malloced(n: int) -> memoryview:
    """``n`` bytes of a bytearray starting 16 bytes into a page, as a ``bytearray(n)`` of a few MiB does
    when malloc maps it (the chunk's header comes first; one taken from the heap after earlier frees
    starts wherever it falls, so it is placed by hand here)."""
    raw = bytearray(n + 8192)
    at = (16 - ctypes.addressof((ctypes.c_char * len(raw)).from_buffer(raw))) % 4096
    return memoryview(raw)[at : at + n]


def copy(src: str, out: Path, size: int, mode: str, piece: int, aligned: bool,
         threads: int = 2) -> tuple[float, float, float]:
    """(seconds, user, system) of one copy; ``mode``: calls (separate calls of ``piece``), iov (one
    call per block with ``piece`` iovecs), digest (calls, nothing written: a digest-only pass);
    ``aligned``: page-aligned buffers instead of bytearrays."""
    out.unlink(missing_ok=True)
    ofd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o644)
    sfd = os.open(src, os.O_RDONLY)
    os.ftruncate(ofd, size)
    nxt = [0]
    lock, wlock = threading.Lock(), threading.Lock()

    def worker() -> None:
        buf = memoryview(mmap.mmap(-1, BLOCK, flags=mmap.MAP_PRIVATE)) if aligned else malloced(BLOCK)
        while True:
            with lock:
                i = nxt[0]
                nxt[0] += 1
            lo = i * BLOCK
            if lo >= size:
                return
            views = [buf[q : q + piece] for q in range(0, BLOCK, piece)]
            if mode == "iov":
                os.preadv(sfd, views, lo)
            else:
                for q, v in zip(range(0, BLOCK, piece), views, strict=True):
                    os.preadv(sfd, [v], lo + q)
            blake3.blake3(buf).digest()
            if mode == "digest":
                continue
            with wlock:
                if mode == "iov":
                    os.pwritev(ofd, views, lo)
                else:
                    for q, v in zip(range(0, BLOCK, piece), views, strict=True):
                        os.pwrite(ofd, v, lo + q)

    os.sync()
    t0, c0 = time.perf_counter(), os.times()
    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    t1, c1 = time.perf_counter(), os.times()
    os.fsync(ofd)
    os.close(ofd)
    os.close(sfd)
    out.unlink()
    return t1 - t0, c1.user - c0.user, c1.system - c0.system


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="2G")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", default="/var/tmp/euca2kvm-bench-syscall")
    a = ap.parse_args()
    size = parse_size(a.size) // BLOCK * BLOCK
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    src = work / f"source-{size}"
    if not src.exists() or src.stat().st_size != size:
        with open(src.with_suffix(".tmp"), "wb") as f:
            for _ in range(size // BLOCK):
                f.write(os.urandom(BLOCK))
        src.with_suffix(".tmp").rename(src)
    with open(src, "rb") as f:  # page-cache it
        while f.read(BLOCK):
            pass
    variants = [(m, p, al) for al in (False, True)
                for m, p in [("calls", 4 * MiB), ("iov", 512 * KiB), ("calls", 512 * KiB), ("calls", 256 * KiB),
                             ("digest", 4 * MiB), ("digest", 512 * KiB)]]

    def label(mode: str, piece: int, al: bool) -> str:
        return f"{mode} {piece // KiB}K {'aligned' if al else 'bytearray'}"

    results: dict[str, list[tuple[float, float, float]]] = {label(*v): [] for v in variants}
    for _ in range(a.runs):
        for mode, piece, al in variants:
            results[label(mode, piece, al)].append(copy(str(src), work / "out", size, mode, piece, al))
    print(f"{size / (1 << 30):.1f} GiB page-cached, 2 threads, BLAKE3 per 4 MiB block; medians of {a.runs}")
    for name, rs in results.items():
        wall, user, sys_ = (statistics.median(r[i] for r in rs) for i in range(3))
        print(f"  {name:24s} {wall:6.2f} s  user {user:5.2f}  system {sys_:5.2f}  "
              f"(runs: {', '.join(f'{r[0]:.2f}' for r in rs)})")


if __name__ == "__main__":
    main()
