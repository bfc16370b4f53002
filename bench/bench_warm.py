#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Warm migration benchmark: the final delta pass (``export --sync``) against a plain read of the
volume and a full export, and its bytes written against the blocks changed, same run.

    python bench/bench_warm.py [--size 8G] [--changed 0.01] [--runs 3] [--workdir /var/tmp/euca2kvm-bench-warm]

Builds a dense LVM2 container with tests/lvmwriter.py (no root needed), exports it with ``--warm``,
then per run: changes ``--changed`` of its 4 MiB blocks (one 4 KiB write each), times ``cat`` of the
container to /dev/null (and, before the sync without read-back, ``dd bs=1M iflag=nocache``: a plain
read that drops its pages behind it, as euca2kvm's reader does; cat takes fresh pages, which cost a
host fault each on this VM once the host has taken back freed memory, and varied 5-12 s), ``dd bs=4M
iflag=direct`` (the disk's own pace: no page cache at all, so it is cold even in a page-cached run) and
the same of the container and the image at once (the least a verified sync must read), then
``export --sync`` (in a process that reports its ``/proc/self/io``), then
``export --sync --no-verify`` after as many changes again (no whole-image read back), then a full
``export --overwrite`` into another directory. All three read a page-cached source (it is
read once before the runs), or with ``--evict`` a cold one: before each timed command the
container's and the images' pages are released with ``posix_fadvise(DONTNEED)`` (only those files:
the page cache as a whole is never dropped). Prints medians, the sync/cat and sync/full ratios,
the sync's own split (digest pass + rewrite, whole-image verification) and bytes written against the
changed bytes. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_export import PE_START, dashed, fill, lv_text, uuid, vg_text, write_pv  # noqa: E402

MiB = 1 << 20
EXTENT = 4 * MiB
BLOCK = 4 * MiB  # the digest block
VOL = "vol-be0c00a1"
# The CLI in a process that writes its own /proc/self/io (write_bytes, wchar) to $IO_REPORT when it ends.
MEASURED = ("import os, sys\nsys.argv = ['euca2kvm', *sys.argv[1:]]\ntry:\n from euca2kvm.cli import run\n run()\n"
            "finally:\n open(os.environ['IO_REPORT'], 'w').write(open('/proc/self/io').read())\n")


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": MiB, "G": 1 << 30}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].upper() in units else int(text)


def build(work: Path, size: int) -> Path:
    vols = work / "volumes"
    vols.mkdir(parents=True, exist_ok=True)
    p = vols / VOL
    n = size // EXTENT
    stamp = work / f"built-{n}"
    if stamp.exists() and p.exists():
        return p
    text = vg_text("vg-warm", "WarmVg-0000-1111-2222-3333-4444-555555", 1,
                    [("pv0", dashed(uuid(7)), PE_START // 512, n)],
                    lv_text("lv-warm", "WarmLv-0000-1111-2222-3333-4444-555555", [(n, 1, '"pv0", 0')],
                            tags=f'"{VOL}"'))
    write_pv(p, PE_START + n * EXTENT, uuid(7), text)
    fill(p, PE_START, n * EXTENT, 7)
    stamp.write_text("")
    return p


EVICT: list[Path] = []  # --evict: files whose cached pages are released before each timed command


def evict(paths: list[Path]) -> None:
    """Release the cached pages of ``paths`` (written back first by the caller's sync)."""
    for p in paths:
        if p.exists():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def timed(argv: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    """Run ``argv`` (after writeback and, with --evict, the fixture's pages released): its wall, user
    and system seconds (the rusage of the one child reaped meanwhile)."""
    os.sync()  # the previous command's writeback is not charged to this one
    evict(EVICT)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, timeout=3600)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"wall": wall, "user": after.ru_utime - before.ru_utime, "sys": after.ru_stime - before.ru_stime}


def change(container: Path, size: int, fraction: float, rnd: random.Random) -> int:
    """One 4 KiB random write into ``fraction`` of the LV's blocks; the number of blocks changed."""
    blocks = rnd.sample(range(size // BLOCK), max(1, round(size // BLOCK * fraction)))
    with open(container, "r+b") as f:
        for b in blocks:
            f.seek(PE_START + b * BLOCK + rnd.randrange(BLOCK // 4096) * 4096)
            f.write(rnd.randbytes(4096))
    return len(blocks)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="8G", help="LV size (default 8G; a multiple of 4 MiB)")
    ap.add_argument("--changed", type=float, default=0.01, help="fraction of blocks changed per run (default 0.01)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", default="/var/tmp/euca2kvm-bench-warm")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--evict", action="store_true",
                    help="cold: release the container's and images' cached pages before each timed command")
    ap.add_argument("--baseline-src", metavar="DIR",
                    help="also time both syncs of the euca2kvm in DIR (its src/ on PYTHONPATH), interleaved")
    args = ap.parse_args()
    size = parse_size(args.size) // EXTENT * EXTENT
    work = Path(args.workdir)
    container = build(work, size)
    exe = [sys.executable, "-m", "euca2kvm"]
    vols, out, full = work / "volumes", work / "out", work / "full"
    subprocess.run(["cat", str(container)], stdout=subprocess.DEVNULL, check=True)  # page cache
    if args.evict:
        EVICT.extend([container, out / f"{VOL}.raw", full / f"{VOL}.raw"])
    warm_s = timed([*exe, "export", VOL, "-s", str(vols), "-o", str(out), "--warm", "--overwrite"])["wall"]
    io = work / "io"
    env = {**os.environ, "IO_REPORT": str(io)}
    rnd = random.Random()  # not seeded: a reused workdir must see new bytes written, not the last run's again
    rows: list[dict[str, float]] = []

    def row(name: str, t: dict[str, float]) -> dict[str, float]:
        return {f"{name}_s": t["wall"], f"{name}_user_s": t["user"], f"{name}_sys_s": t["sys"]}

    base_env = ({**os.environ, "PYTHONPATH": str(Path(args.baseline_src).resolve() / "src")}
                if args.baseline_src else None)
    sync_argv = [*exe, "export", VOL, "-s", str(vols), "-o", str(out), "--sync"]

    def warmed() -> None:
        """Page-cached runs: the container and the image read into the page cache again (the full export
        of the run before, 8 GiB written, may have pushed them out of a small one)."""
        if not args.evict:
            subprocess.run(["cat", str(container), str(out / f"{VOL}.raw")], stdout=subprocess.DEVNULL, check=True)

    for _ in range(args.runs):
        warmed()
        changed = change(container, size, args.changed, rnd)
        cat = timed(["cat", str(container)])
        direct = timed(["dd", f"if={container}", "of=/dev/null", "bs=4M", "iflag=direct", "status=none"])
        both = timed(["sh", "-c", 'dd if="$1" of=/dev/null bs=4M iflag=direct status=none & '
                      'dd if="$2" of=/dev/null bs=4M iflag=direct status=none; wait', "-", str(container),
                      str(out / f"{VOL}.raw")])
        sync = timed([sys.executable, "-c", MEASURED, "export", VOL, "-s", str(vols), "-o", str(out), "--sync"],
                     env=env)
        counters = dict(ln.split(": ") for ln in io.read_text().splitlines())
        entry = next(v for v in json.loads((out / "manifest.json").read_text())["volumes"] if v["id"] == VOL)
        change(container, size, args.changed, rnd)  # the same amount again, for the sync without read-back
        if not args.evict:
            subprocess.run(["cat", str(container)], stdout=subprocess.DEVNULL, check=True)
        dd = timed(["dd", f"if={container}", "of=/dev/null", "bs=1M", "iflag=nocache", "status=none"])
        sync_nv = timed([*exe, "export", VOL, "-s", str(vols), "-o", str(out), "--sync", "--no-verify"])
        base: dict[str, float] = {}
        if base_env is not None:  # the same workload for the baseline: as many blocks changed before each
            for name, extra in (("base_sync", []), ("base_sync_no_verify", ["--no-verify"])):
                change(container, size, args.changed, rnd)
                warmed()
                base.update(row(name, timed([*sync_argv, *extra], env=base_env)))
        full_t = timed([*exe, "export", VOL, "-s", str(vols), "-o", str(full), "--overwrite"])
        os.sync()
        evict([full / f"{VOL}.raw"])  # its 8 GiB of pages would push the container out of a small page cache
        d = entry["delta"]
        assert d["blocks_changed"] == changed, (d, changed)
        rows.append({**row("cat", cat), **row("dd_nocache", dd), **row("dd_direct", direct),
                     **row("dd_direct_both", both), **row("sync", sync), **row("sync_no_verify", sync_nv),
                     **row("full_export", full_t), **base, "sync_verify_s": d["verify_seconds"],
                     "sync_delta_s": d["seconds"] - d["verify_seconds"], "changed_bytes": changed * BLOCK,
                     "bytes_written": d["bytes_written"], "write_bytes": int(counters["write_bytes"]),
                     "wchar": int(counters["wchar"])})
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    res = {"size": size, "changed_fraction": args.changed, "runs": args.runs, "cold": args.evict,
           "warm_pass_s": round(warm_s, 3), "load": os.getloadavg(),
           "median": med, "runs_detail": rows, "sync_over_cat": med["sync_s"] / med["cat_s"],
           "sync_delta_over_cat": med["sync_delta_s"] / med["cat_s"],
           "sync_over_full_export": med["sync_s"] / med["full_export_s"],
           "sync_no_verify_over_cat": med["sync_no_verify_s"] / med["cat_s"],
           "sync_over_dd_nocache": med["sync_s"] / med["dd_nocache_s"],
           "sync_no_verify_over_dd_nocache": med["sync_no_verify_s"] / med["dd_nocache_s"],
           "sync_over_dd_direct": med["sync_s"] / med["dd_direct_s"],
           "sync_no_verify_over_dd_direct": med["sync_no_verify_s"] / med["dd_direct_s"],
           "sync_over_dd_direct_both": med["sync_s"] / med["dd_direct_both_s"],
           "written_over_changed": med["write_bytes"] / med["changed_bytes"]}
    print(f"{size >> 20} MiB, {args.changed:.1%} of blocks changed, {args.runs} run(s), "
          f"{'cold (evicted)' if args.evict else 'page-cached'}, warm pass {warm_s:.2f} s, "
          f"load {res['load'][0]:.2f}")
    print(f"  {'median seconds':22} {'wall':>8} {'user':>8} {'sys':>8} {'wall/cat':>9} {'wall/dd':>8} "
          f"{'wall/direct':>11}")
    names = ["cat", "dd_nocache", "dd_direct", "dd_direct_both", "sync", "sync_no_verify", "full_export"]
    for name in names + (["base_sync", "base_sync_no_verify"] if base_env is not None else []):
        print(f"  {name:22} {med[name + '_s']:8.3f} {med[name + '_user_s']:8.3f} {med[name + '_sys_s']:8.3f} "
              f"{med[name + '_s'] / med['cat_s']:9.2f} {med[name + '_s'] / med['dd_nocache_s']:8.2f} "
              f"{med[name + '_s'] / med['dd_direct_s']:11.2f}")
    print(f"  sync's digest pass + rewrite {med['sync_delta_s']:.3f} s, separate verification "
          f"{med['sync_verify_s']:.3f} s (a raw image is verified within the digest pass)")
    print(f"  sync / full export     {res['sync_over_full_export']:.2f}")
    print(f"  write_bytes / changed  {res['written_over_changed']:.4f}  ({int(med['write_bytes']):,} of "
          f"{int(med['changed_bytes']):,}; the sync's own count {int(med['bytes_written']):,})")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
