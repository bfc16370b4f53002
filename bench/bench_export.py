#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Export benchmark: euca2kvm against dd and qemu-img on the same byte ranges, same run.

    python bench/bench_export.py [--runs 5] [--workdir /var/tmp/euca2kvm-bench] [--cases dense,sparse,striped]

Builds LVM2 containers with tests/lvmwriter.py (no root needed), page-caches them, then times
each command ``--runs`` times, interleaved in a shuffled order so background load hits all alike, and prints
medians, same-run ratios, output allocation and the peak RSS of the euca2kvm process.
Not a test: numbers depend on the machine; the README and issue notes quote its output.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from lvmwriter import Mda, build_pv, vg_text  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
PE_START = MiB
EXTENT = 4 * MiB


def lv_text(name: str, lv_id: str, segs: list[tuple[int, int, str]], tags: str = "") -> str:
    """segs: (extent_count, stripe_count, stripes text)."""
    out = (f'{name} {{\nid = "{lv_id}"\nstatus = ["READ", "WRITE", "VISIBLE"]\nflags = []\ntags = [{tags}]\n'
           f"segment_count = {len(segs)}\n")
    start = 0
    for i, (count, nstripes, stripes) in enumerate(segs, 1):
        extra = "stripe_size = 128\n" if nstripes > 1 else ""
        out += (f"segment{i} {{\nstart_extent = {start}\nextent_count = {count}\ntype = \"striped\"\n"
                f"stripe_count = {nstripes}\n{extra}stripes = [{stripes}]\n}}\n")
        start += count
    return out + "}\n"


def uuid(i: int) -> str:
    return f"Bench{i:01d}" + "x" * 26


def dashed(u: str) -> str:
    return u[:6] + "-" + "-".join(u[6 + 4 * i : 10 + 4 * i] for i in range(5)) + "-" + u[26:]


def write_pv(path: Path, size: int, pv_uuid: str, text: bytes) -> None:
    head = build_pv(PE_START, pv_uuid, [Mda(4096, 64 * 1024, text=text)], PE_START)
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)


def fill(path: Path, offset: int, length: int, seed: int) -> None:
    rnd = random.Random(seed)
    with open(path, "r+b") as f:
        f.seek(offset)
        left = length
        while left:
            n = min(left, 8 * MiB)
            f.write(rnd.randbytes(n))
            left -= n


def build(work: Path) -> dict[str, dict[str, object]]:
    vols = work / "volumes"
    if (work / "cases.json").exists():
        return json.loads((work / "cases.json").read_text())  # type: ignore[no-any-return]
    shutil.rmtree(vols, ignore_errors=True)
    vols.mkdir(parents=True)
    cases: dict[str, dict[str, object]] = {}
    # dense: 800 MiB of random data
    n = 200
    p = vols / "vol-be0c0001"
    text = vg_text("vg-dense", "DenseV-0000-1111-2222-3333-4444-555555", 1,
                   [("pv0", dashed(uuid(1)), PE_START // 512, n)],
                   lv_text("lv-dense", "DenseL-0000-1111-2222-3333-4444-555555", [(n, 1, '"pv0", 0')]))
    write_pv(p, PE_START + n * EXTENT, uuid(1), text)
    fill(p, PE_START, n * EXTENT, 1)
    cases["dense"] = {"id": "vol-be0c0001", "file": str(p), "offset": PE_START, "size": n * EXTENT,
                      "data": n * EXTENT}
    # sparse: 8 GiB LV, 256 MiB of data in 4 islands
    n = 2048
    p = vols / "vol-be0c0002"
    text = vg_text("vg-sparse", "SparsV-0000-1111-2222-3333-4444-555555", 1,
                   [("pv0", dashed(uuid(2)), PE_START // 512, n)],
                   lv_text("lv-sparse", "SparsL-0000-1111-2222-3333-4444-555555", [(n, 1, '"pv0", 0')]))
    write_pv(p, PE_START + n * EXTENT, uuid(2), text)
    for i, at in enumerate((0, 2 * GiB + 12345 * 4096, 5 * GiB, 8 * GiB - 64 * MiB)):
        fill(p, PE_START + at, 64 * MiB, 10 + i)
    cases["sparse"] = {"id": "vol-be0c0002", "file": str(p), "offset": PE_START, "size": n * EXTENT,
                       "data": 256 * MiB}
    # striped: 800 MiB over two files, 64 KiB stripes; plus the same bytes contiguous for qemu-img
    n = 200
    a, b = vols / "vol-be0c0003", vols / "vol-be0c0003Strip2"
    pvs = [("pv0", dashed(uuid(3)), PE_START // 512, n // 2), ("pv1", dashed(uuid(4)), PE_START // 512, n // 2)]
    text = vg_text("vg-striped", "StripV-0000-1111-2222-3333-4444-555555", 1, pvs,
                   lv_text("lv-striped", "StripL-0000-1111-2222-3333-4444-555555",
                           [(n, 2, '"pv0", 0, "pv1", 0')], tags='"vol-be0c0003"'))
    write_pv(a, PE_START + n // 2 * EXTENT, uuid(3), text)
    write_pv(b, PE_START + n // 2 * EXTENT, uuid(4), text)
    fill(a, PE_START, n // 2 * EXTENT, 20)
    fill(b, PE_START, n // 2 * EXTENT, 21)
    flat = work / "striped-flat.raw"
    with open(a, "rb") as fa, open(b, "rb") as fb, open(flat, "wb") as ff:
        fa.seek(PE_START)
        fb.seek(PE_START)
        while chunk := fa.read(64 * 1024):
            ff.write(chunk + fb.read(64 * 1024))
    cases["striped"] = {"id": "vol-be0c0003", "file": str(flat), "offset": 0, "size": n * EXTENT,
                        "data": n * EXTENT}
    (work / "cases.json").write_text(json.dumps(cases))
    return cases


def timed(argv: list[str] | str, shell: bool = False, output: Path | None = None) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of the command (for a shell pipeline, its largest process).

    Before the clock starts, the command's previous output is removed and dirty pages are written
    back: otherwise each run pays for the writeback of the previous runs (the kernel throttles
    writers past its dirty limits) and the numbers measure the disk, not the command.
    """
    if output is not None:
        output.unlink(missing_ok=True)
    os.sync()
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, shell=shell, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(proc.pid, 0)
    dt = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {argv}: {proc.stderr.read().decode() if proc.stderr else ''}")
    return dt, ru.ru_maxrss


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--workdir", default="/var/tmp/euca2kvm-bench")
    ap.add_argument("--cases", default="dense,sparse,striped")
    ap.add_argument("--extra", default="", help="extra euca2kvm export arguments, e.g. --workers 2")
    ap.add_argument("--qcow2", action="store_true", help="also time qcow2 exports")
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    cases = build(work)
    vols = work / "volumes"
    out = work / "out"
    for f in vols.iterdir():
        subprocess.run(["cat", str(f)], stdout=subprocess.DEVNULL, check=True)  # page cache
    exe = [sys.executable, "-m", "euca2kvm"]
    qemu_img = shutil.which("qemu-img")
    for name in args.cases.split(","):
        c = cases[name]
        off, size, src = int(c["offset"]), int(c["size"]), str(c["file"])  # type: ignore[call-overload]
        if name == "striped":
            subprocess.run(["cat", src], stdout=subprocess.DEVNULL, check=True)
        spec = json.dumps({"driver": "raw", "offset": off, "size": size, "file": {"driver": "file", "filename": src}})
        exp = [*exe, "export", str(c["id"]), "--source", str(vols), *args.extra.split()]
        cmds: dict[str, tuple[list[str] | str, bool, Path]] = {
            "euca2kvm raw": ([*exp, "-o", str(out / "raw")], False, out / "raw" / f"{c['id']}.raw"),
            "euca2kvm raw --no-verify": ([*exp, "-o", str(out / "rawnv"), "--no-verify"], False,
                                         out / "rawnv" / f"{c['id']}.raw"),
            "dd bs=1M": (f"dd if={src} of={work}/dd.raw bs=1M iflag=skip_bytes,count_bytes skip={off} "
                         f"count={size} status=none", True, work / "dd.raw"),
        }
        if qemu_img:
            cmds["qemu-img convert"] = ([qemu_img, "convert", "-f", "raw", "-O", "raw", f"json:{spec}",
                                         str(work / "qi.raw")], False, work / "qi.raw")
            cmds["qemu-img + sha256sum"] = (f"{qemu_img} convert -f raw -O raw 'json:{spec}' {work}/qs.raw && "
                                            f"sha256sum {work}/qs.raw", True, work / "qs.raw")
            if args.qcow2:
                cmds["euca2kvm qcow2"] = ([*exp, "-o", str(out / "q"), "--format", "qcow2"], False,
                                          out / "q" / f"{c['id']}.qcow2")
                cmds["euca2kvm qcow2 --no-verify"] = ([*exp, "-o", str(out / "qnv"), "--format", "qcow2",
                                                       "--no-verify"], False, out / "qnv" / f"{c['id']}.qcow2")
                cmds["qemu-img convert qcow2"] = ([qemu_img, "convert", "-f", "raw", "-O", "qcow2", f"json:{spec}",
                                                   str(work / "qi.qcow2")], False, work / "qi.qcow2")
        times: dict[str, list[float]] = {k: [] for k in cmds}
        rss: dict[str, int] = dict.fromkeys(cmds, 0)
        for argv, shell, dest in cmds.values():  # warm up
            timed(argv, shell, dest)
        order = random.Random(0)  # a fixed seed: the same shuffles on every machine
        for _ in range(args.runs):
            # Shuffled each round: a command's time depends on what ran just before it (the
            # previous command's output is still being written back), so a fixed order would
            # always hand the same command the same neighbour.
            for k in order.sample(list(cmds), len(cmds)):
                argv, shell, dest = cmds[k]
                dt, r = timed(argv, shell, dest)
                times[k].append(dt)
                rss[k] = max(rss[k], r)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"\n== {name}: LV {size / MiB:.0f} MiB, {int(c['data']) / MiB:.0f} MiB of data"  # type: ignore[call-overload]
              f"{' (qemu-img/dd read an equivalent contiguous file)' if name == 'striped' else ''}; "
              f"median of {args.runs}")
        for k in cmds:
            line = (f"  {k:28s} {med[k]:7.3f} s (min {min(times[k]):6.3f})  {size / med[k] / 1e9:6.2f} GB/s  "
                    f"alloc {allocated(cmds[k][2]) / MiB:8.1f} MiB  peak RSS {rss[k] / 1024:6.1f} MiB")
            print(line)
        e, nv = med["euca2kvm raw"], med["euca2kvm raw --no-verify"]
        ratios = [f"dd/euca2kvm = {med['dd bs=1M'] / e:.2f}x",
                  f"dd/euca2kvm(--no-verify) = {med['dd bs=1M'] / nv:.2f}x"]
        if qemu_img:
            q = med["qemu-img convert"]
            ratios.append(f"euca2kvm/qemu-img = {e / q:.2f}x")
            ratios.append(f"euca2kvm(--no-verify)/qemu-img = {nv / q:.2f}x")
            ratios.append(f"(qemu-img+sha256sum)/euca2kvm = {med['qemu-img + sha256sum'] / e:.2f}x")
            if args.qcow2:
                qq = med["qemu-img convert qcow2"]
                ratios.append(f"euca2kvm qcow2/qemu-img qcow2 = {med['euca2kvm qcow2'] / qq:.2f}x")
                nvq = med["euca2kvm qcow2 --no-verify"]
                ratios.append(f"euca2kvm qcow2(--no-verify)/qemu-img qcow2 = {nvq / qq:.2f}x")
        print("  " + ",\n  ".join(ratios))
        print("  samples (s): " + "; ".join(f"{k}: {' '.join(f'{t:.2f}' for t in v)}" for k, v in times.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
