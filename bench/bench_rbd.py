#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Ceph RBD benchmark (issue 16's Performance), same run, medians:

    python bench/bench_rbd.py [--dense-mib 1024] [--runs 3] [--json FILE] [--baseline-src DIR]

On a throw-away single-node cluster (tests/rbd/cluster.py: one mon, one memstore OSD on 127.0.0.1):

  dense   a --dense-mib dense image -> raw: ``euca2kvm export`` (verified, read-only key) against
          ``rbd export`` of the same image to a file (each followed by ``sync FILE``: an fsync of that
          file alone, not of every engineer's dirty pages as a bare ``sync``); the ratio must be <= 1.1
  sparse  a 2 GiB image with 3 MiB of data -> raw: time and allocated bytes (< 64 MiB), and the time
          against the export of a dense 3 MiB image, its data alone (<= 1.5x)
  small   that dense 3 MiB image by both tools: what a run costs besides its bytes (start-up, connect,
          the image's facts and identity before and after, the manifest, the exit)
  lib     the library choice: reading the dense image through librbd (ctypes, 1 and 4 threads) against
          ``rbd export`` to /dev/null, and the extent query (``rbd_diff_iterate2``) against
          ``rbd diff --format json``

``--baseline-src DIR`` also times the dense and the small export by the euca2kvm in DIR (its src/ on
PYTHONPATH: a checkout of an earlier commit), interleaved with the others, as ``*_baseline``.

Commands run interleaved, ``--runs`` rounds after one warm-up, each after a ``sync`` (outside its time:
an ``fsync`` on ext4 commits the journal, which first writes out every file's pending data, so a
command would otherwise pay for the one before it); medians of wall time and of CPU time
(user + system of this process and its children: the cluster's daemons are not counted). euca2kvm runs
with its bytecode compiled, as installed (pip compiles it), even when the environment forbids writing
bytecode (``PYTHONDONTWRITEBYTECODE``): a private ``PYTHONPYCACHEPREFIX``, filled by the warm-up. Root;
not a test (numbers depend on the machine: on a shared 2-core machine run it quietly).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "src"), str(ROOT / "tests")]

from tests.rbd import cluster as cc  # noqa: E402

from euca2kvm.rbd.image import CephOptions, Cluster  # noqa: E402

MiB = 1 << 20
# rbd import-diff stream chunk: 64 MiB keeps the writer's memory bounded for any --dense-mib.
WRITE_CHUNK = 64 * MiB


def cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall, CPU) seconds of ``fn``."""
    t, c = time.perf_counter(), cpu()
    fn()
    return time.perf_counter() - t, cpu() - c


def run(*argv: str, env: dict[str, str] | None = None) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=3600, env=env)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dense-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--baseline-src", metavar="DIR", help="also time the euca2kvm in DIR (its src/), interleaved")
    a = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="euca2kvm-bench-rbd-"))
    c = cc.start(base)
    res: dict[str, object] = {"dense_mib": a.dense_mib, "runs": a.runs}
    try:
        dense, sparse, small = "vol-be000001", "vol-be000002", "vol-be000003"
        cc.create(c, dense, a.dense_mib * MiB)
        rng = random.Random(1)
        for off in range(0, a.dense_mib * MiB, WRITE_CHUNK):
            cc.write(c, dense, [(off, rng.randbytes(min(WRITE_CHUNK, a.dense_mib * MiB - off)))])
        cc.create(c, sparse, cc.SPARSE_SIZE, [(0, rng.randbytes(MiB)), (cc.GiB, rng.randbytes(MiB)),
                                               (cc.SPARSE_SIZE - MiB, rng.randbytes(MiB))])
        cc.create(c, small, 3 * MiB, [(0, rng.randbytes(3 * MiB))])
        out = base / "out"
        ceph = c.cli_args(ro=True)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(base / "pycache")
        base_env = None
        if a.baseline_src:
            base_env = {**env, "PYTHONPATH": str(Path(a.baseline_src).resolve() / "src"),
                        "PYTHONPYCACHEPREFIX": str(base / "pycache-baseline")}

        def ours(img: str, tree_env: dict[str, str] = env) -> Callable[[], None]:
            def go() -> None:
                for f in out.glob("*"):
                    f.unlink()
                run(sys.executable, "-m", "euca2kvm", "export", img, "-s", "rbd:rbd", *ceph, "-o", str(out),
                    env=tree_env)
                run("sync", str(out / f"{img}.raw"))
            return go

        def theirs(img: str) -> Callable[[], None]:
            def go() -> None:
                dst = base / "rbd-export.raw"
                dst.unlink(missing_ok=True)
                run("rbd", "-c", str(c.conf), "--id", "ro", "--keyring", str(c.ro_keyring), *cc.NO_ATIME,
                    "export", f"rbd/{img}", str(dst))
                run("sync", str(dst))
            return go

        with Cluster(CephOptions(str(c.conf), "ro", str(c.ro_keyring))) as cl:
            pool = cl.pool("rbd")

            def lib_read(threads: int) -> Callable[[], None]:
                def go() -> None:
                    with pool.open(dense) as img:
                        step = 4 * MiB

                        def worker(k: int) -> None:
                            buf = bytearray(step)
                            for off in range(k * step, img.size, threads * step):
                                img.read_into(off, memoryview(buf)[: min(step, img.size - off)])

                        ts = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
                        for t in ts:
                            t.start()
                        for t in ts:
                            t.join()
                return go

            def lib_extents() -> None:
                pool.open(dense).close()

            cases: dict[str, Callable[[], None]] = {
                "dense_euca2kvm": ours(dense), "dense_rbd_export": theirs(dense),
                "sparse_euca2kvm": ours(sparse), "sparse_rbd_export": theirs(sparse),
                "small_dense_euca2kvm": ours(small), "small_dense_rbd_export": theirs(small),
                "lib_read_1thread": lib_read(1), "lib_read_4threads": lib_read(4),
                "cli_export_devnull": lambda: run("rbd", "-c", str(c.conf), "--id", "ro", "--keyring",
                                                  str(c.ro_keyring), *cc.NO_ATIME, "export", f"rbd/{dense}", "-"),
                "lib_open_and_extents": lib_extents,
                "cli_diff_json": lambda: run("rbd", "-c", str(c.conf), "--id", "ro", "--keyring", str(c.ro_keyring),
                                             *cc.NO_ATIME, "diff", "--format", "json", f"rbd/{dense}"),
            }
            if base_env is not None:
                cases["dense_baseline"], cases["small_dense_baseline"] = ours(dense, base_env), ours(small, base_env)
            times: dict[str, list[float]] = {k: [] for k in cases}
            cpus: dict[str, list[float]] = {k: [] for k in cases}
            for r in range(a.runs + 1):
                order = list(cases)
                random.Random(r).shuffle(order)
                for k in order:
                    os.sync()  # the previous command's writeback is not charged to this one's fsync
                    t, u = timed(cases[k])
                    if r:
                        times[k].append(t)
                        cpus[k].append(u)
        med = {k: statistics.median(v) for k, v in times.items()}
        res["median_s"] = med
        res["median_cpu_s"] = {k: round(statistics.median(v), 3) for k, v in cpus.items()}
        res["load_average"] = os.getloadavg()
        ours(sparse)()
        res["sparse_allocated_bytes"] = os.stat(out / f"{sparse}.raw").st_blocks * 512
        res["dense_ratio"] = med["dense_euca2kvm"] / med["dense_rbd_export"]
        res["sparse_vs_its_data_dense"] = med["sparse_euca2kvm"] / med["small_dense_euca2kvm"]
        res["small_fixed_cost_over_rbd_export_s"] = med["small_dense_euca2kvm"] - med["small_dense_rbd_export"]
    finally:
        cc.stop(c)
        subprocess.run(["rm", "-rf", str(base)], check=False)
    text = json.dumps(res, indent=2)
    print(text)
    if a.json:
        Path(a.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
