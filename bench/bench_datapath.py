#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Data-path benchmark: every row of issue 12's Performance table, same run, medians and ratios.

    python bench/bench_datapath.py [--cases dense,qcow2,reads,small,sparse,many,coldread]
        [--size 8G] [--volumes 50] [--runs 3] [--cold drop|evict|none] [--json FILE]

Cases (``--size`` is the big volume's size; the others scale with it: 800 MiB is size * 800/8192,
the sparse volume holds size/32 of data, each of the ``--volumes`` small volumes is size/32):

  dense     size dense -> raw, cold: euca2kvm (verified), --no-verify, qemu-img convert of the same
            byte range, dd bs=1M
  qcow2     size dense -> qcow2, cold: euca2kvm (verified, the output read back) vs qemu-img convert -O qcow2
  reads     bytes of the source file read by a verified qcow2 export, cold, against the LV's data bytes
  small     800 MiB dense -> raw, page-cached: euca2kvm vs qemu-img convert and dd bs=1M
  sparse    size with size/32 of data -> raw, page-cached: euca2kvm vs qemu-img convert
  many      --volumes volumes, export --all --jobs 2 vs a shell loop of qemu-img convert, page-cached
  coldread  the cold-cache read study behind euca2kvm.readahead (reads a file, no export)

Every command's time includes a ``sync`` (writeback is counted for all alike). Cold: before each
timed command ``--cold drop`` writes 3 to /proc/sys/vm/drop_caches (root; the issue's method),
``--cold evict`` drops only the fixture files' pages (``posix_fadvise(DONTNEED)``, checked with
``fincore``: the rest of the machine keeps its cache), ``none`` measures warm. Commands run
interleaved in a shuffled order, ``--runs`` rounds after ``--warmup`` untimed ones. Peak RSS is
GNU time's ``%M`` (``wait4``'s ``ru_maxrss``: the largest process of the command's tree); CPU is
the tree's user + system seconds. Fixtures are made by the real lvm2 on loop devices (root), the
Eucalyptus recipe of tests/lvmfix.py, and cached under ``--workdir`` in a directory named by their
sizes. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import mmap
import os
import random
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

MiB = 1 << 20
# Every fixture and output size is a multiple of lvm2's default extent (4 MiB): the Eucalyptus recipe
# (``lvcreate -l 100%FREE`` on size + 4 MiB) then gives an LV of exactly the size asked for.
EXTENT = 4 * MiB
# Eucalyptus' OverlayManager makes each container the volume's size plus this header room.
HEADER = 4 * MiB
# Fixture data is written in blocks of this size, each a seeded random pattern with its index in front:
# no block is zero or equal to another, and 8 GiB are written in seconds (no per-byte RNG).
FILL_BLOCK = 16 * MiB
# A command that takes longer than this is stuck (an 8 GiB cold export takes ~15 s here).
CMD_TIMEOUT_S = 1800
RESULTS: dict[str, Any] = {}


def run(argv: list[str]) -> str:
    cp = subprocess.run(argv, capture_output=True, text=True, timeout=CMD_TIMEOUT_S,
                        stdin=subprocess.DEVNULL, check=False)
    if cp.returncode != 0:
        raise SystemExit(f"failed ({cp.returncode}): {argv}: {cp.stderr.strip()[-2000:]}")
    return cp.stdout


def load() -> str:
    """The load average, quoted with every number (on a shared machine it explains the spread)."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# ---------------------------------------------------------------- cold cache

def evict(paths: list[Path]) -> None:
    """Drop these files' clean pages from the page cache, and check that they are gone."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    if shutil.which("fincore") and paths:
        res = run(["fincore", "--bytes", "--noheadings", "--output", "RES", *map(str, paths)]).split()
        left = sum(int(x) for x in res)
        if left > 64 * MiB:  # a few pages may be pinned by a running reader; more means the eviction failed
            raise SystemExit(f"eviction left {left} bytes cached of {paths}")


def make_cold(mode: str, paths: list[Path]) -> None:
    if mode == "drop":
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    elif mode == "evict":
        evict(paths)


def warm(paths: list[Path]) -> None:
    for p in paths:
        subprocess.run(["cat", str(p)], stdout=subprocess.DEVNULL, check=True, timeout=CMD_TIMEOUT_S)


# ---------------------------------------------------------------- cold-read study

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.readahead.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_size_t]
_libc.readahead.restype = ctypes.c_ssize_t


def read_file(path: Path, chunk: int, *, hint: str = "", ahead: int = 0, direct: bool = False,
              behind: bool = False, threads: int = 1, work: Callable[[memoryview], object] | None = None
              ) -> float:
    """Read the whole file in ``chunk`` requests; seconds. ``hint``: "seq" (POSIX_FADV_SEQUENTIAL once),
    "willneed"/"readahead" (that call for the bytes ``ahead`` beyond the reader, before each read);
    ``behind``: POSIX_FADV_DONTNEED for each chunk once used; ``threads`` readers take chunks
    round-robin; ``work`` runs on every chunk read (e.g. the hash)."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECT if direct else 0))
    size = os.fstat(fd).st_size
    t0 = time.perf_counter()
    if hint == "seq":
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)

    def reader(first: int) -> None:
        buf = mmap.mmap(-1, chunk)  # page-aligned, as O_DIRECT needs
        view = memoryview(buf)
        hinted = 0
        try:
            for off in range(first * chunk, size, threads * chunk):
                while hint in ("willneed", "readahead") and hinted < min(size, off + chunk + ahead):
                    lo = max(hinted, off)
                    n = min(chunk, size - lo)
                    if hint == "willneed":
                        os.posix_fadvise(fd, lo, n, os.POSIX_FADV_WILLNEED)
                    else:
                        _libc.readahead(fd, lo, n)
                    hinted = lo + n
                n = min(chunk, size - off)
                got = os.preadv(fd, [view[:n]], off)
                if got != n:
                    raise SystemExit(f"short read {got} at {off}")
                if work is not None:
                    work(view[:n])
                if behind:
                    os.posix_fadvise(fd, off, n, os.POSIX_FADV_DONTNEED)
        finally:
            view.release()
            buf.close()

    ts = [threading.Thread(target=reader, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    os.close(fd)
    return time.perf_counter() - t0


def case_coldread(work: Path, size: int, runs: int, cold: str, only: list[str]) -> None:
    f = work / f"coldread-{size >> 20}M.bin"
    if not f.exists():
        fill(f, 0, size, 99, truncate=True)
    import blake3

    def hasher(v: memoryview) -> object:
        return blake3.blake3(v).digest()

    four = {"chunk": 4 * MiB}
    variants: dict[str, dict[str, Any]] = {
        "preadv 1M": {"chunk": MiB},
        "preadv 4M": four,
        "preadv 16M": {"chunk": 16 * MiB},
        "4M + FADV_SEQUENTIAL": {**four, "hint": "seq"},
        "4M + WILLNEED 32M ahead": {**four, "hint": "willneed", "ahead": 32 * MiB},
        "4M + readahead() 32M ahead": {**four, "hint": "readahead", "ahead": 32 * MiB},
        "4M + DONTNEED behind": {**four, "behind": True},
        "4M + SEQUENTIAL + DONTNEED behind": {**four, "hint": "seq", "behind": True},
        "O_DIRECT 4M": {**four, "direct": True},
        "O_DIRECT 16M": {"chunk": 16 * MiB, "direct": True},
        "O_DIRECT 4M x 2 threads": {**four, "direct": True, "threads": 2},
        "O_DIRECT 4M x 4 threads": {**four, "direct": True, "threads": 4},
        "4M x 2 threads": {**four, "threads": 2},
    }
    if only:
        variants = {k: v for k, v in variants.items() if k in only}
    # With the digest in the loop (what an export does): does a hint keep the disk busy while we hash?
    hashed = [k for k in ("preadv 4M", "4M + FADV_SEQUENTIAL", "4M + SEQUENTIAL + DONTNEED behind", "O_DIRECT 4M",
                         "O_DIRECT 4M x 2 threads") if k in variants]
    cmds = {**{k: (v, None) for k, v in variants.items()}, **{k + " +hash": (variants[k], hasher) for k in hashed}}
    times: dict[str, list[float]] = {k: [] for k in cmds}
    loads: list[str] = []
    order = random.Random(0)
    for _ in range(runs):
        for k in order.sample(list(cmds), len(cmds)):
            kw, w = cmds[k]
            make_cold(cold, [f])
            times[k].append(read_file(f, work=w, **kw))
        loads.append(load())
    base = statistics.median(times["preadv 4M"])
    print(f"\n== coldread: {size / MiB:.0f} MiB file, cold={cold}, median of {runs}; load {'; '.join(loads)}")
    rows = {}
    for k, v in times.items():
        m = statistics.median(v)
        rows[k] = {"median_s": m, "samples": v, "MBps": size / m / 1e6}
        print(f"  {k:34s} {m:7.3f} s (min {min(v):6.3f}) {size / m / 1e6:6.0f} MB/s  x{m / base:5.2f} of preadv 4M  "
              f"samples {' '.join(f'{t:.2f}' for t in v)}")
    RESULTS["coldread"] = {"size": size, "cold": cold, "load": loads, "rows": rows}


# ---------------------------------------------------------------- fixtures

def fill(path: Path, offset: int, length: int, seed: int, truncate: bool = False) -> None:
    pattern = bytearray(random.Random(seed).randbytes(FILL_BLOCK))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        if truncate:
            os.ftruncate(fd, offset + length)
        for i, at in enumerate(range(offset, offset + length, FILL_BLOCK)):
            pattern[:16] = f"{seed:07d}:{i:08d}".encode()
            n = min(FILL_BLOCK, offset + length - at)
            os.pwrite(fd, memoryview(pattern)[:n], at)
    finally:
        os.close(fd)


def container(d: Path, vol: str, size: int) -> tuple[Path, int]:
    """A Eucalyptus container made by the real lvm2 (lvmfix's recipe): its path and the LV's byte offset."""
    from lvmfix import with_lvm

    def setup(lvm: Any, devs: list[str]) -> None:
        lvm("pvcreate", devs[0])
        lvm("vgcreate", f"euca-ebs-storage-vg-{vol}", devs[0])
        lvm("lvcreate", "--addtag", vol, "-n", f"euca-{vol}", "-l", "100%FREE", f"euca-ebs-storage-vg-{vol}")

    lv = with_lvm(d, {vol: size + HEADER}, setup)[f"euca-{vol}"]
    if lv["size"] != size or len(lv["segments"]) != 1:
        raise SystemExit(f"lvm2 made {lv['size']} bytes in {len(lv['segments'])} segments, not {size} in one")
    area = lv["segments"][0]["areas"][0]
    return d / vol, area["pe_start"] + area["pe_first"] * lv["extent_size"]


def fixtures(work: Path, size: int, volumes: int) -> dict[str, Any]:
    """Build (once, under a lock; cached by their sizes) the volumes directories of every case."""
    import fcntl

    small, island = max(EXTENT, size * 800 // 8192 // EXTENT * EXTENT), max(EXTENT, size // 32 // EXTENT * EXTENT)
    root = work / f"fx-v1-{size >> 20}M-{volumes}x{island >> 20}M"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / "fixtures.json").exists():
            return json.loads((root / "fixtures.json").read_text())
        fx: dict[str, Any] = {}

        def vol(case: str, vid: str, lv_size: int, data: list[tuple[int, int]], seed: int) -> dict[str, Any]:
            d = root / case
            d.mkdir(exist_ok=True)
            (d / vid).unlink(missing_ok=True)
            path, off = container(d, vid, lv_size)
            for i, (at, n) in enumerate(data):
                fill(path, off + at, n, seed + i)
            return {"id": vid, "dir": str(d), "file": str(path), "offset": off, "size": lv_size,
                    "data": sum(n for _, n in data)}

        fx["dense"] = vol("dense", "vol-be0d0001", size, [(0, size)], 1)
        fx["small"] = vol("small", "vol-be0d0002", small, [(0, small)], 2)
        q = island // 4 // EXTENT * EXTENT or EXTENT  # four islands of data, one at each end
        islands = [(0, q), (size // 3 // EXTENT * EXTENT, q), (size // 3 * 2 // EXTENT * EXTENT, q), (size - q, q)]
        fx["sparse"] = vol("sparse", "vol-be0d0003", size, islands, 3)
        fx["many"] = [vol("many", f"vol-be1d{i:04x}", island, [(0, island)], 100 + i) for i in range(volumes)]
        os.sync()
        (root / "fixtures.json").write_text(json.dumps(fx))
        return fx


# ---------------------------------------------------------------- timing

def timed(cmd: list[str] | str, cleanup: Path | None, cold: str, srcs: list[Path]) -> tuple[float, int, float]:
    """Wall seconds including a final ``sync``, peak RSS (KiB) of the command's largest process, and
    the CPU seconds (user + system) of its whole tree: on a loaded machine wall time grows with the
    load, CPU time much less, so it tells the command's own cost apart from waiting for a core.

    Before the clock starts the previous output is removed, dirty pages are written back and the
    cache is made cold, so no run pays for another's writeback."""
    if cleanup is not None:
        shutil.rmtree(cleanup) if cleanup.is_dir() else cleanup.unlink(missing_ok=True)
    os.sync()
    make_cold(cold, srcs)
    argv = ["sh", "-c", cmd] if isinstance(cmd, str) else cmd
    rssf = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-rss.{os.getpid()}"
    gtime = ["/usr/bin/time", "-f", "%M", "-o", str(rssf), "--"] if os.access("/usr/bin/time", os.X_OK) else []
    t0 = time.perf_counter()
    proc = subprocess.Popen([*gtime, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    _, status, ru = os.wait4(proc.pid, 0)
    os.sync()
    dt = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed ({os.waitstatus_to_exitcode(status)}): {cmd}: {err[-2000:]}")
    if cleanup is not None and cleanup.exists():  # free the space now: 8 GiB outputs add up
        shutil.rmtree(cleanup) if cleanup.is_dir() else cleanup.unlink()
    # The kernel keeps the peak RSS of a process across exec, so a child forked from this (large)
    # Python would report our own size: GNU time, a small process, forks the command and reports its peak.
    rss = int(rssf.read_text().split()[-1]) if gtime else ru.ru_maxrss
    rssf.unlink(missing_ok=True)
    return dt, rss, ru.ru_utime + ru.ru_stime


Cmds = dict[str, tuple[list[str] | str, Path]]


def measure(case: str, title: str, cmds: Cmds, args: argparse.Namespace, cold: str,
            srcs: list[Path]) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in cmds}
    rss: dict[str, int] = dict.fromkeys(cmds, 0)
    cpu: dict[str, list[float]] = {k: [] for k in cmds}
    for _ in range(args.warmup):
        for cmd, out in cmds.values():
            timed(cmd, out, "none", srcs)
    if cold == "none":
        warm(srcs)
    order = random.Random(0)  # fixed seed: the same shuffles on every machine
    loads = []
    for _ in range(args.runs):
        # Shuffled each round: a command's time depends on what ran just before it.
        for k in order.sample(list(cmds), len(cmds)):
            dt, r, c = timed(cmds[k][0], cmds[k][1], cold, srcs)
            times[k].append(dt)
            cpu[k].append(c)
            rss[k] = max(rss[k], r)
        loads.append(load())
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n== {case}: {title}; cold={cold}; median of {args.runs}; load {'; '.join(loads)}")
    for k in cmds:
        print(f"  {k:32s} {med[k]:8.3f} s (min {min(times[k]):7.3f}, CPU {statistics.median(cpu[k]):6.2f} s)  "
              f"peak RSS {rss[k] / 1024:6.1f} MiB  "
              f"samples {' '.join(f'{t:.2f}' for t in times[k])}")
    RESULTS[case] = {"title": title, "cold": cold, "load": loads, "median_s": med, "samples": times, "cpu_s": cpu,
                     "peak_rss_kib": rss, "ratios": {}}
    return med


def ratio(case: str, what: str, value: float, limit: float, better: str = "<=") -> None:
    ok = value <= limit if better == "<=" else value >= limit
    print(f"  {what:58s} {value:6.2f}x  (must be {better} {limit}: {'ok' if ok else 'NOT REACHED'})")
    RESULTS[case]["ratios"][what] = {"value": value, "limit": limit, "op": better, "ok": ok}


def spec(v: dict[str, Any]) -> str:
    return "json:" + json.dumps({"driver": "raw", "offset": v["offset"], "size": v["size"],
                                 "file": {"driver": "file", "filename": v["file"]}})


def source_reads(argv: list[str], src: Path, cold: str, out: Path) -> dict[str, int]:
    """Bytes the command's process tree reads: from ``src`` exactly (strace of every read call, by the
    file each fd names) when strace is installed, and the kernel's counters (``/proc/self/io`` gains
    each reaped child's: read_bytes = from the disk, every file; rchar = every read call, sockets too)."""
    def io() -> dict[str, int]:
        return {k: int(v) for k, v in (ln.split(": ") for ln in Path("/proc/self/io").read_text().splitlines())}

    shutil.rmtree(out, ignore_errors=True)
    os.sync()
    make_cold(cold, [src])
    trace = out.parent / "reads.strace"
    strace = shutil.which("strace")
    pre = ([strace, "-f", "-qq", "--seccomp-bpf", "-y", "-s", "0", "-e", "signal=none", "-o", str(trace),
            "-e", "trace=read,pread64,readv,preadv,preadv2,copy_file_range,sendfile", "--"] if strace else [])
    before = io()
    run([*pre, *argv])
    after = io()
    res = {"read_bytes": after["read_bytes"] - before["read_bytes"], "rchar": after["rchar"] - before["rchar"]}
    if strace:
        res["source_bytes"] = 0
        pending: dict[str, str] = {}
        call = re.compile(r"^(\d+)\s+(?:\w+)\((\d+)<([^>]*)>(.*)$")
        resumed = re.compile(r"^(\d+)\s+<\.\.\. \w+ resumed>(.*)$")
        for ln in trace.read_text(errors="replace").splitlines():
            if m := call.match(ln):
                pid, path, rest = m[1], m[3], m[4]
            elif m := resumed.match(ln):
                pid, rest = m[1], m[2]
                path = pending.pop(pid, "")
            else:
                continue
            if rest.endswith("<unfinished ...>"):
                pending[pid] = path
            elif path == str(src) and (r := re.search(r"\)\s+=\s+(\d+)", rest)):
                res["source_bytes"] += int(r[1])
        trace.unlink()
    shutil.rmtree(out, ignore_errors=True)
    return res


# ---------------------------------------------------------------- cases

def cases(args: argparse.Namespace, work: Path, size: int) -> None:
    fx = fixtures(work, size, args.volumes)
    exe = shlex.split(args.euca2kvm)
    qi = shutil.which("qemu-img") or "qemu-img"
    out = work / f"out-{os.getpid()}"  # one per run: two runs never remove each other's outputs
    out.mkdir()
    wanted = args.cases.split(",")

    def export(v: dict[str, Any], dest: str, *extra: str) -> tuple[list[str], Path]:
        return [*exe, "export", v["id"], "-s", v["dir"], "-o", str(out / dest), *extra], out / dest

    def convert(v: dict[str, Any], fmt: str, dest: str) -> tuple[list[str], Path]:
        return [qi, "convert", "-f", "raw", "-O", fmt, spec(v), str(out / dest)], out / dest

    def dd(v: dict[str, Any]) -> tuple[str, Path]:
        return (f"dd if={shlex.quote(v['file'])} of={out}/dd.raw bs=1M iflag=skip_bytes,count_bytes "
                f"skip={v['offset']} count={v['size']} status=none", out / "dd.raw")

    mib = {k: v["size"] / MiB for k, v in fx.items() if k != "many"}
    if "dense" in wanted:
        v = fx["dense"]
        m = measure("dense", f"{mib['dense']:.0f} MiB dense -> raw", {
            "euca2kvm raw": export(v, "raw"), "euca2kvm raw --no-verify": export(v, "rawnv", "--no-verify"),
            "qemu-img convert": convert(v, "raw", "qi.raw"), "dd bs=1M": dd(v)}, args, args.cold, [Path(v["file"])])
        ratio("dense", "euca2kvm raw (verified) / qemu-img convert", m["euca2kvm raw"] / m["qemu-img convert"], 1.05)
        ratio("dense", "euca2kvm raw --no-verify / qemu-img convert",
              m["euca2kvm raw --no-verify"] / m["qemu-img convert"], 1.0)
        ratio("dense", "euca2kvm raw (verified) / dd bs=1M", m["euca2kvm raw"] / m["dd bs=1M"], 1.0)
    if "qcow2" in wanted:
        v = fx["dense"]
        m = measure("qcow2", f"{mib['dense']:.0f} MiB dense -> qcow2", {
            "euca2kvm qcow2": export(v, "q", "--format", "qcow2"),
            "qemu-img convert -O qcow2": convert(v, "qcow2", "qi.qcow2")}, args, args.cold, [Path(v["file"])])
        ratio("qcow2", "euca2kvm qcow2 (verified) / qemu-img convert -O qcow2",
              m["euca2kvm qcow2"] / m["qemu-img convert -O qcow2"], 1.15)
    if "reads" in wanted:
        v = fx["dense"]
        argv, dest = export(v, "reads", "--format", "qcow2")
        r = source_reads(argv, Path(v["file"]), args.cold, dest)
        print(f"\n== reads: verified qcow2 export of {mib['dense']:.0f} MiB dense ({v['data']} data bytes), "
              f"cold={args.cold}; load {load()}")
        RESULTS["reads"] = {"data_bytes": v["data"], **r, "load": load(), "cold": args.cold, "ratios": {}}
        for k, n in r.items():
            print(f"  {k:14s} {n:14d} bytes = {n / v['data']:.3f}x the LV's data bytes")
        if "source_bytes" in r:
            ratio("reads", "source file bytes read (strace) / LV data bytes", r["source_bytes"] / v["data"], 1.05)
        else:
            print("  (strace missing: read_bytes counts disk reads of every file, the output's too)")
    if "small" in wanted:
        v = fx["small"]
        m = measure("small", f"{mib['small']:.0f} MiB dense -> raw", {
            "euca2kvm raw": export(v, "raw"), "qemu-img convert": convert(v, "raw", "qi.raw"), "dd bs=1M": dd(v)},
            args, "none", [Path(v["file"])])
        ratio("small", "euca2kvm raw / qemu-img convert", m["euca2kvm raw"] / m["qemu-img convert"], 1.3)
        ratio("small", "euca2kvm raw speed / dd bs=1M speed", m["dd bs=1M"] / m["euca2kvm raw"], 1.0, ">=")
    if "sparse" in wanted:
        v = fx["sparse"]
        m = measure("sparse", f"{mib['sparse']:.0f} MiB with {v['data'] / MiB:.0f} MiB data -> raw", {
            "euca2kvm raw": export(v, "raw"), "qemu-img convert": convert(v, "raw", "qi.raw")},
            args, "none", [Path(v["file"])])
        ratio("sparse", "euca2kvm raw / qemu-img convert", m["euca2kvm raw"] / m["qemu-img convert"], 1.3)
    if "many" in wanted:
        vs = fx["many"]
        loop = out / "loop"
        sh = f"mkdir -p {loop} && " + " && ".join(
            f"{qi} convert -f raw -O raw {shlex.quote(spec(v))} {loop}/{v['id']}.raw" for v in vs)
        srcs = [Path(v["file"]) for v in vs]
        m = measure("many", f"{len(vs)} volumes of {vs[0]['size'] / MiB:.0f} MiB -> raw", {
            "euca2kvm export --all --jobs 2": ([*exe, "export", "--all", "-s", vs[0]["dir"], "-o", str(out / "all"),
                                                "--jobs", "2"], out / "all"),
            "shell loop of qemu-img convert": (sh, loop)}, args, "none", srcs)
        ratio("many", "euca2kvm --all --jobs 2 / qemu-img loop",
              m["euca2kvm export --all --jobs 2"] / m["shell loop of qemu-img convert"], 1.0)
    rss = [(c, k, kib) for c, r in RESULTS.items() for k, kib in r.get("peak_rss_kib", {}).items()
           if k.startswith("euca2kvm")]
    if rss:
        print("\n== peak RSS per volume job (GNU time %M; --jobs 2 is one process running two jobs)")
        for c, k, kib in rss:
            ok = "ok" if kib <= 64 * 1024 else "NOT REACHED"
            print(f"  {c:8s} {k:32s} {kib / 1024:6.1f} MiB  (must be <= 64: {ok})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="dense,qcow2,reads,small,sparse,many")
    ap.add_argument("--size", default="8G", help="size of the big volumes (default 8G); the rest scales")
    ap.add_argument("--volumes", type=int, default=50, help="volumes of the many case (default 50)")
    ap.add_argument("--runs", type=int, default=3, help="timed rounds (default 3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    ap.add_argument("--cold", choices=("drop", "evict", "none"), default="drop" if os.geteuid() == 0 else "evict",
                    help="how the cold cases get a cold cache (default drop as root, else evict)")
    ap.add_argument("--workdir", default="/var/tmp/euca2kvm-bench-datapath", help="fixtures and outputs")
    ap.add_argument("--euca2kvm", default=shlex.join([sys.executable, "-m", "euca2kvm"]),
                    help="the euca2kvm command line (default: this Python's module)")
    ap.add_argument("--json", metavar="FILE", help="also write every number as JSON")
    ap.add_argument("--variants", default="", help="coldread: only these variants (comma-separated names)")
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    size = parse_size(args.size)
    if set(args.cases.split(",")) - {"coldread"}:
        try:
            cases(args, work, size)
        finally:
            shutil.rmtree(work / f"out-{os.getpid()}", ignore_errors=True)
    if "coldread" in args.cases.split(","):
        case_coldread(work, size, args.runs, args.cold, [v for v in args.variants.split(",") if v])
    if args.json:
        Path(args.json).write_text(json.dumps({"size": size, "args": vars(args), **RESULTS}, indent=1))
    return 0


def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+)([KMG]?)", text.strip().upper())
    if not m:
        raise SystemExit(f"--size: not a size: {text!r}")
    n = int(m[1]) << {"": 0, "K": 10, "M": 20, "G": 30}[m[2]]
    return max(EXTENT, n // EXTENT * EXTENT)


if __name__ == "__main__":
    sys.exit(main())
