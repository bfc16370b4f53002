# SPDX-License-Identifier: Apache-2.0
"""Ground-truth device-mapper fixtures from the real kernel, in a QEMU TCG guest.

Usage: ``python -m fixturegen.oracle OUTDIR`` (root not needed; network only for apt-get download).

Boot 1 (``create``) runs ``guest/create.sh`` with the container files attached read-write: real
lvm2 and the real kernel dm build a raid1 LV, a mirror LV, a thin pool with thin LVs and a thin
snapshot, and classic COW snapshots, then deactivate. Boot 2 (``verify``) attaches the same files
read-only (``snapshot=on``), re-activates, and reports the layout (``lvs``/``pvs`` JSON, dm tables,
``vgcfgbackup``) and the sha256 of every LV computed by the guest kernel. The host compresses each
container with xz and writes ``truth.json``.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # allow ``python fixturegen/oracle.py OUTDIR``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from fixturegen import initrd
else:
    from . import initrd

MIB = 1 << 20
# Container files: (name, size). Sized for lvm's 4 MiB extents with room to spare; sparse.
CONTAINERS = [("dm-raid0.img", 48 * MIB), ("dm-raid1.img", 48 * MIB),
              ("dm-thin.img", 48 * MIB), ("dm-cow.img", 48 * MIB)]
OUT_DISK_SIZE = 4 * MIB  # the guest writes its report here (well under 1 MiB of text)
GUEST_RAM_MIB = 512  # lvm + ~20 MiB of initrd patterns; the recipe's proven size
QEMU_TIMEOUT = 900  # one TCG boot + job takes 30-120 s; this only stops a hung guest
XZ_PRESET = 9  # fixtures are tiny; best ratio keeps the committed files small
COPY_CHUNK = MIB


PROVENANCE = """# Device-mapper ground-truth fixtures

Made by `python -m fixturegen.oracle tests/data/dm` (see `fixturegen/`). Real lvm2 and the real
kernel device-mapper, inside a QEMU TCG guest, created these LVM2 container files
(`fixturegen/guest/create.sh`: raid1, mirror with core log, thin pool with two thin LVs and a
thin snapshot written after the snapshot, classic COW snapshots with the origin written after
the snapshot, one of them overflowed and invalid). A second boot attached them read-only,
re-activated every VG and hashed every LV with the guest kernel (`fixturegen/guest/verify.sh`).

* kernel: {kernel} (Debian cloud kernel, downloaded, never installed)
* lvm2 (host binary copied into the guest): {lvm}
* qemu: {qemu}, `-accel tcg`

`truth.json`: per LV its segments (lvm's own `lvs` report: type, start, size, PE ranges with
the container file name, chunk sizes, thin ids, transaction ids), `kernel_size` and `sha256` as
computed by the guest kernel (`FAIL` = the kernel returned a read error, e.g. an invalid
snapshot), every dm table and status line, the `vgcfgbackup` text, and each container's
`pe_start`. `*-report.txt` are the raw guest reports.

| container (xz-compressed here) | size | sha256 of the uncompressed file |
| --- | --- | --- |
{containers}
"""


def qemu_version() -> str:
    return initrd.run(["qemu-system-x86_64", "--version"]).splitlines()[0]


def run_guest(kernel: initrd.Kernel, rd: Path, mode: str, disks: list[Path], outdisk: Path,
              log: Path, readonly: bool) -> str:
    outdisk.write_bytes(b"")
    with outdisk.open("r+b") as f:
        f.truncate(OUT_DISK_SIZE)
    cmd = ["qemu-system-x86_64", "-accel", "tcg", "-m", str(GUEST_RAM_MIB), "-smp", "1",
           "-nographic", "-no-reboot", "-monitor", "none", "-nic", "none", "-serial", f"file:{log}",
           "-kernel", str(kernel.vmlinuz), "-initrd", str(rd),
           "-append", f"console=ttyS0 panic=-1 quiet loglevel=3 e2k.mode={mode} "
                      f"e2k.out=/dev/vd{chr(ord('a') + len(disks))}"]
    for d in disks:
        cmd += ["-drive", f"file={d},format=raw,if=virtio" + (",snapshot=on" if readonly else "")]
    cmd += ["-drive", f"file={outdisk},format=raw,if=virtio"]
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           timeout=QEMU_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"guest {mode} timed out after {QEMU_TIMEOUT}s; serial log {log}") from e
    if p.returncode != 0:
        raise RuntimeError(f"qemu failed (rc {p.returncode}): {p.stderr.decode(errors='replace')[-2000:]}")
    print(f"guest {mode}: {time.monotonic() - t0:.1f}s", file=sys.stderr)
    report = outdisk.read_bytes().split(b"\0", 1)[0].decode(errors="replace")
    if "@@RC 0" not in report:
        raise RuntimeError(f"guest {mode} failed:\n{report[-4000:]}\nserial log: {log}")
    return report


def sections(report: str) -> dict[str, str]:
    return {m[1]: m[2] for m in re.finditer(r"^@@BEGIN (\S+)\n(.*?)^@@END \1$", report, re.S | re.M)}


def pe_ranges(text: str, devmap: dict[str, str]) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for tok in text.split():
        name, _, rng = tok.rpartition(":")
        a, _, b = rng.partition("-")
        name = devmap.get(name, name)
        out.append({"pv" if name.endswith(".img") else "lv": name, "first": int(a), "last": int(b)})
    return out


def truth(report: str, devmap: dict[str, str]) -> dict[str, object]:
    sec = sections(report)
    lvs_rows = json.loads(sec["lvs"])["report"][0]["lv"]
    pvs_rows = json.loads(sec["pvs"])["report"][0]["pv"]
    hashes: dict[str, tuple[int, str]] = {}
    dm_hashes: dict[str, dict[str, object]] = {}
    for line in sec["hashes"].splitlines():
        f = line.split()
        if f[0] == "LVHASH":
            hashes[f[1]] = (int(f[2]), f[3])
        elif f[0] == "DMHASH":
            dm_hashes[f[1]] = {"size": int(f[2]), "sha256": f[3]}
    lvs: dict[str, dict[str, object]] = {}
    for r in lvs_rows:
        key = f"{r['vg_name']}/{r['lv_name'].strip('[]')}"
        lv = lvs.setdefault(key, {"attr": r["lv_attr"], "size": int(r["lv_size"]), "role": r["lv_role"],
                                  "extent_size": int(r["vg_extent_size"]), "segments": []})
        for k in ("pool_lv", "origin", "data_lv", "metadata_lv"):
            if r[k]:
                lv[k] = r[k].strip("[]")
        for k in ("transaction_id", "thin_id"):
            if r[k]:
                lv[k] = int(r[k])
        seg: dict[str, object] = {"type": r["segtype"], "start": int(r["seg_start"]),
                                  "size": int(r["seg_size"]),
                                  "pe_ranges": pe_ranges(r["seg_pe_ranges"], devmap)}
        for k in ("chunk_size", "stripes", "stripe_size", "region_size"):
            if r[k] and int(r[k]):
                seg[k] = int(r[k])
        lv["segments"].append(seg)  # type: ignore[attr-defined]
        lv["type"] = r["segtype"]
        if key in hashes:
            lv["kernel_size"], lv["sha256"] = hashes[key]
    pvs = {devmap[r["pv_name"]]: {"vg": r["vg_name"], "pe_start": int(r["pe_start"])} for r in pvs_rows}
    return {"pvs": pvs, "lvs": lvs, "dm_hashes": dm_hashes,
            "dm_table": sec["dmtable"].splitlines(), "dm_status": sec["dmstatus"].splitlines(),
            "vgcfg": {k.removeprefix("vgcfg-"): v for k, v in sec.items() if k.startswith("vgcfg-")}}


def compress(src: Path, dst: Path) -> str:
    h = hashlib.sha256()
    comp = lzma.LZMACompressor(preset=XZ_PRESET)
    with src.open("rb") as fi, dst.open("wb") as fo:
        while chunk := fi.read(COPY_CHUNK):
            h.update(chunk)
            fo.write(comp.compress(chunk))
        fo.write(comp.flush())
    return h.hexdigest()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m fixturegen.oracle OUTDIR", file=sys.stderr)
        return 2
    outdir = Path(argv[0]).resolve()
    outdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="euca2kvm-oracle-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        kernel = initrd.fetch_kernel(work / "kroot")
        rd = work / "initrd.gz"
        mods = initrd.build_initrd(kernel, rd, work)
        disks = []
        for name, size in CONTAINERS:
            p = work / name
            with p.open("wb") as f:
                f.truncate(size)
            disks.append(p)
        devmap = {f"/dev/vd{chr(ord('a') + i)}": name for i, (name, _) in enumerate(CONTAINERS)}
        try:
            create = run_guest(kernel, rd, "create", disks, work / "out.img", work / "create.log", False)
            verify = run_guest(kernel, rd, "verify", disks, work / "out.img", work / "verify.log", True)
        except RuntimeError:
            for log in work.glob("*.log"):  # keep the serial logs of a failed run for diagnosis
                shutil.copy(log, outdir / f"failed-{log.name}")
            raise
        (outdir / "create-report.txt").write_text(create)
        (outdir / "verify-report.txt").write_text(verify)
        t = truth(verify, devmap)
        lvm_version = initrd.run(["lvm", "version"]).splitlines()[0].split(":", 1)[1].strip()
        containers = {}
        for p in disks:
            containers[p.name] = {"xz": p.name + ".xz", "size": p.stat().st_size,
                                  "sha256": compress(p, outdir / (p.name + ".xz"))}
        doc = {"generator": "python -m fixturegen.oracle OUTDIR",
               "kernel_package": f"{kernel.package} {kernel.version}", "lvm2": lvm_version,
               "modules": mods, "containers": containers, **t}
        (outdir / "truth.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        (outdir / "README.md").write_text(PROVENANCE.format(
            kernel=doc["kernel_package"], lvm=lvm_version, qemu=qemu_version(),
            containers="\n".join(f"| {k} | {v['size']} | {v['sha256']} |" for k, v in containers.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
