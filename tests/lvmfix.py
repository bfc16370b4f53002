# SPDX-License-Identifier: Apache-2.0
"""Real-lvm2 fixture builder: Eucalyptus-style LVM2 container files plus their ground truth.

Run as ``python tests/lvmfix.py OUTDIR`` (root, loop devices, lvm2 2.03.x) or call
:func:`build_all`; tests use :func:`cached` (cache dir ``/var/tmp/euca2kvm-fixtures-v<FIXTURE_VERSION>``,
overridable by env ``EUCA2KVM_FIXTURES``). Everything is made by the real lvm2 on loop devices,
every command pinned with ``--devices /dev/loopN``. Pseudo-random data is then written at byte
offsets computed only from what lvm2 reports (``pvs -o pe_start``, ``vgs -o vg_extent_size``,
``lvs --segments -o seg_pe_ranges,stripes,stripe_size``), and each LV's sha256 is computed from
those bytes (zeros elsewhere). Nothing here imports the project.

Layout: ``OUTDIR/<scenario>/<container files>`` (one directory = one Eucalyptus volumes dir) and
``OUTDIR/truth.json`` (written last, atomically). Scenarios (see ``SCENARIOS``):

  euca       vol-4708bf47 (1 GiB + 4 MiB, the OverlayManager recipe), raw snapshot snap-5e6f7a8b,
             stray temp file vol-4708bf47Ab3dE9
  seed       volume-1a2b3c4d: 1001 MiB container, 800 MiB LV
  dots       legacy names vg-Yw9nRg.. / lv-Q2xpaA..
  multiseg   lvA 8M, lvB 4M, lvA +12M (1 MiB extents): lvA has two segments
  striped    one VG over two files: lv-stripe (-i2 -I64k) and lv-span (linear across both PVs)
  align      pvcreate --dataalignment 64k --metadatasize 128k --pvmetadatacopies 2
  ext32m     vgcreate -s 32M
  ring       32 KiB mda rewritten until the current copy wraps round the ring end
  missing    VG of two PVs, the second file absent: lv-here ok, lv-gone refused
  badmda     two mdas, one byte of the newest text in mda 1 flipped (mda 2 still valid): ok
  badonly    one mda, its only copy flipped: refused
  truncated  container cut inside the LV's data area: refused
  segtypes   linear + ``zero`` + ``error`` LVs
  thin       linear LV + hand-made thin pool and thin LV (vgcfgrestore --force): thin refused
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
import pvck  # noqa: E402  (sibling module, also when run as a script)

# Bump when a scenario or the truth schema changes: the cache dir name carries it.
FIXTURE_VERSION = 1
CACHE_ENV = "EUCA2KVM_FIXTURES"
DEFAULT_CACHE = Path(f"/var/tmp/euca2kvm-fixtures-v{FIXTURE_VERSION}")
MiB = 1 << 20
# Each lvm2 command takes ~0.1 s here; 120 s means it hangs (e.g. waiting on a lock).
CMD_TIMEOUT_S = 120
# 160 KiB per patch: longer than two 64 KiB stripe chunks, so a patch on a striped LV lands on both PVs.
PATCH = 160 * 1024
# Hashing block: big enough for hashlib speed, small enough to keep memory flat.
HASH_BLOCK = MiB
# Seed of every pseudo-random byte, so fixtures and their hashes are reproducible.
SEED = "euca2kvm-fixtures"
# The ring scenario needs ~20 rewrites to wrap a 32 KiB mda; stop rather than loop forever.
RING_MAX_CHANGES = 200
ENV = {**os.environ, "LVM_SUPPRESS_FD_WARNINGS": "1", "LC_ALL": "C"}


class FixtureError(RuntimeError):
    """The fixture build failed (a tool refused, or lvm2 reported something unexpected)."""


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run an external command with a timeout; raise FixtureError on failure when ``check``."""
    cp = subprocess.run(list(args), capture_output=True, text=True, timeout=CMD_TIMEOUT_S, env=ENV,
                        stdin=subprocess.DEVNULL, check=False)
    if check and cp.returncode != 0:
        raise FixtureError(f"{' '.join(args)}: rc {cp.returncode}: {cp.stderr.strip()}")
    return cp


@contextlib.contextmanager
def loops(paths: list[Path], readonly: bool = False) -> Iterator[list[str]]:
    """Attach each file to its own loop device; always detach exactly those devices."""
    devs: list[str] = []
    ro = ["-r"] if readonly else []
    try:
        for p in paths:
            devs.append(sh("losetup", "-f", "--show", *ro, str(p)).stdout.strip())
        yield devs
    finally:
        for d in reversed(devs):
            sh("losetup", "-d", d, check=False)


class Lvm:
    """lvm2 commands pinned to our loop devices."""

    def __init__(self, devs: list[str]) -> None:
        self.devs = devs
        self.pin = [a for d in devs for a in ("--devices", d)]

    def __call__(self, cmd: str, *args: str) -> str:
        # lvm2 without kernel device-mapper: LV commands need --driverloaded n.
        dl = ["--driverloaded", "n"] if cmd.startswith("lv") or cmd == "vgcfgrestore" else []
        return sh(cmd, *self.pin, *dl, *args).stdout

    def report(self, cmd: str, fields: str, *args: str) -> list[dict[str, str]]:
        out = self(cmd, "--reportformat", "json", "--units", "b", "--nosuffix", "-o", fields, *args)
        # lvm2 may print notices ("Retrying metadata scan.") into stdout, in the middle of the JSON.
        out = "\n".join(ln for ln in out.splitlines() if ln.strip()[:1] in ("{", "}", "[", "]", '"'))
        return [row for rep in json.loads(out)["report"] for rows in rep.values() for row in rows]


def layout(lvm: Lvm, devfile: dict[str, str]) -> dict[str, dict[str, Any]]:
    """What lvm2 reports about every visible LV: extent size, segments, areas (file, pe_start, PE range)."""
    pvs = {r["pv_name"]: r for r in lvm.report("pvs", "pv_name,pv_uuid,pe_start,dev_size,vg_name")}
    ext = {r["vg_name"]: int(r["vg_extent_size"]) for r in lvm.report("vgs", "vg_name,vg_extent_size")}
    fields = ("vg_name,lv_name,lv_uuid,lv_tags,lv_size,segtype,seg_start_pe,seg_size_pe,seg_size,"
              "seg_pe_ranges,stripes,stripe_size")
    lvs: dict[str, dict[str, Any]] = {}
    for s in lvm.report("lvs", fields, "--segments"):
        lv = lvs.setdefault(s["lv_name"], {
            "vg": s["vg_name"], "lv": s["lv_name"], "lv_uuid": s["lv_uuid"], "size": int(s["lv_size"]),
            "tags": [t for t in s["lv_tags"].split(",") if t], "extent_size": ext[s["vg_name"]],
            "segments": []})
        areas = []
        for rng in s["seg_pe_ranges"].split():
            dev, _, pe = rng.rpartition(":")
            first, _, last = pe.partition("-")
            area: dict[str, Any] = {"pe_first": int(first), "pe_last": int(last)}
            if dev in devfile:
                pv = pvs[dev]
                area.update(file=devfile[dev], pv_uuid=pv["pv_uuid"], pe_start=int(pv["pe_start"]))
            else:  # stacked on a sub-LV (thin pool data/metadata)
                area["sublv"] = dev
            areas.append(area)
        lv["segments"].append({
            "segtype": s["segtype"], "start_extent": int(s["seg_start_pe"]),
            "extent_count": int(s["seg_size_pe"]), "size": int(s["seg_size"]),
            "stripes": int(s["stripes"]), "stripe_size": int(s["stripe_size"]), "areas": areas})
    for lv in lvs.values():
        lv["segments"].sort(key=lambda g: g["start_extent"])
        lv["files"] = sorted({a["file"] for g in lv["segments"] for a in g["areas"] if "file" in a})
        lv["vg_files"] = sorted(devfile[dev] for dev, pv in pvs.items() if pv["vg_name"] == lv["vg"])
    return lvs


def lv_pieces(lv: dict[str, Any], off: int, n: int) -> Iterator[tuple[str, int, int]]:
    """Map LV bytes [off, off+n) to (file, file offset, length) pieces, from the lvm2 segment report.

    Linear: pe_start + pe_first*extent + offset-in-segment. Striped (dm-stripe, N areas, chunk S):
    chunk c = o // S lives on area c % N at pe_start + pe_first*extent + (c // N)*S + o % S.
    """
    ext = lv["extent_size"]
    while n > 0:
        seg = next(g for g in lv["segments"]
                   if g["start_extent"] * ext <= off < (g["start_extent"] + g["extent_count"]) * ext)
        if seg["segtype"] not in ("linear", "striped") or not seg["areas"]:
            raise FixtureError(f"no data mapping for {seg['segtype']} segment")
        o = off - seg["start_extent"] * ext
        left = (seg["start_extent"] + seg["extent_count"]) * ext - off
        if len(seg["areas"]) == 1:
            a, phys, k = seg["areas"][0], o, min(n, left)
        else:
            size, nstr = seg["stripe_size"], len(seg["areas"])
            c = o // size
            a = seg["areas"][c % nstr]
            phys, k = (c // nstr) * size + o % size, min(n, left, size - o % size)
        yield a["file"], a["pe_start"] + a["pe_first"] * ext + phys, k
        off, n = off + k, n - k


def patch_bytes(key: str, off: int, n: int) -> bytes:
    return random.Random(f"{SEED}:{key}:{off}").randbytes(n)


def patch_offsets(lv: dict[str, Any]) -> list[int]:
    """Start, middle (odd offset), end of the LV, plus a patch straddling every segment boundary."""
    size, ext = lv["size"], lv["extent_size"]
    offs = [0, size // 2 - 777, size - PATCH]
    offs += [g["start_extent"] * ext - PATCH // 2 for g in lv["segments"][1:]]
    return sorted({min(max(0, o), size - PATCH) for o in offs})


def expected_sha256(size: int, patches: list[tuple[int, bytes]]) -> str:
    """sha256 of `size` zero bytes overlaid, in order, with the patches."""
    h, zero = hashlib.sha256(), bytes(HASH_BLOCK)
    for b in range(0, size, HASH_BLOCK):
        n = min(HASH_BLOCK, size - b)
        hit = [(o, d) for o, d in patches if o < b + n and o + len(d) > b]
        if not hit:
            h.update(zero[:n])
            continue
        buf = bytearray(n)
        for o, d in hit:
            lo, hi = max(o, b), min(o + len(d), b + n)
            buf[lo - b:hi - b] = d[lo - o:hi - o]
        h.update(buf)
    return h.hexdigest()


def fill(d: Path, lv: dict[str, Any]) -> str:
    """Write the deterministic patches into the container files; return the LV's expected sha256."""
    key = f"{lv['vg']}/{lv['lv']}"
    patches = [(o, patch_bytes(key, o, PATCH)) for o in patch_offsets(lv)]
    for o, data in patches:
        pos = 0
        for name, phys, k in lv_pieces(lv, o, len(data)):
            fd = os.open(d / name, os.O_WRONLY)
            try:
                os.pwrite(fd, data[pos:pos + k], phys)
            finally:
                os.close(fd)
            pos += k
    lv["patches"] = [[o, len(p)] for o, p in patches]
    return expected_sha256(lv["size"], patches)


def sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def with_lvm(d: Path, files: dict[str, int], setup: Callable[[Lvm, list[str]], None]) -> dict[str, Any]:
    """Create sparse files (unless present), attach, run setup, return the lvm2 layout; always detach."""
    paths = [p if p.exists() else sparse(p, size) for p, size in ((d / n, s) for n, s in files.items())]
    with loops(paths) as devs:
        lvm = Lvm(devs)
        setup(lvm, devs)
        return layout(lvm, {dev: p.name for dev, p in zip(devs, paths, strict=True)})


def flip_text_byte(path: Path, mda_index: int) -> dict[str, Any]:
    """Flip one byte of the current text (raw_locn[0] of mda N, offsets from pvck): the first LV
    segment's start PE, ``"pv0", 0`` -> ``"pv0", 1``. The text still parses; only the checksum tells,
    and a reader that skips the check maps the LV one extent off (wrong hash)."""
    m = pvck.headers(path)["mdas"][mda_index - 1]
    rl = m["raw_locn"][0]
    base = m["start"] + rl["offset"]
    with open(path, "r+b") as f:
        f.seek(base)
        text = f.read(min(rl["size"], m["size"] - rl["offset"]))
        at = text.find(b'"pv0", ')
        if at < 0:
            raise FixtureError("no stripes entry to corrupt")
        off = base + at + len(b'"pv0", ')
        old = text[at + len(b'"pv0", ')]
        f.seek(off)
        f.write(bytes([old ^ 0x01]))
    return {"file": path.name, "mda_index": mda_index, "offset": off, "old": old, "new": old ^ 0x01}


def linear_container(d: Path, vg: str, lv: str, lv_mib: int, name: str = "c0") -> dict[str, Any]:
    """A container file ``d/name`` made by lvm2: one PV, VG ``vg`` (1 MiB extents), one linear LV ``lv`` of
    ``lv_mib`` MiB, never written (all holes); its dir, file, the LV's byte offset in it and its size."""
    def setup(lvm: Lvm, devs: list[str]) -> None:
        lvm("pvcreate", devs[0])
        lvm("vgcreate", "-s", "1M", vg, devs[0])
        lvm("lvcreate", "-n", lv, "-L", f"{lv_mib}M", vg)

    meta = with_lvm(d, {name: (lv_mib + 8) * MiB}, setup)[lv]
    area = meta["segments"][0]["areas"][0]
    return {"dir": d, "file": d / name, "offset": area["pe_start"] + area["pe_first"] * meta["extent_size"],
            "size": meta["size"]}


def euca_container(d: Path, vol: str, payload: Path) -> Path:
    """OverlayManager's recipe: size GiB + 4 MiB sparse file, pvcreate, vgcreate, lvcreate --addtag -l 100%FREE;
    then the payload written into the LV at the offset lvm2 reports."""
    sh("dd", "if=/dev/zero", f"of={d / vol}", "count=1", "bs=1M", f"seek={1024 + 4 - 1}", "status=none")

    def setup(lvm: Lvm, devs: list[str]) -> None:
        lvm("pvcreate", devs[0])
        lvm("vgcreate", f"euca-ebs-storage-vg-{vol}", devs[0])
        lvm("lvcreate", "--addtag", vol, "-n", f"euca-{vol}", "-l", "100%FREE", f"euca-ebs-storage-vg-{vol}")

    lv = with_lvm(d, {vol: 0}, setup)[f"euca-{vol}"]
    area = lv["segments"][0]["areas"][0]
    offset = area["pe_start"] + area["pe_first"] * lv["extent_size"]
    sh("dd", f"if={payload}", f"of={d / vol}", "bs=1M", f"seek={offset}", "oflag=seek_bytes",
       "conv=notrunc,sparse", "status=none")
    return d / vol


# ---------------------------------------------------------------- scenarios

Truth = dict[str, Any]


def add_lv(t: Truth, d: Path, lv: dict[str, Any], expect: str = "ok", why: str | None = None,
           sha: str | None = None, write: bool = True) -> None:
    """Record one LV; fill it with data first when it is a readable linear/striped LV."""
    if write and expect == "ok":
        sha = fill(d, lv)
    lv.setdefault("patches", [])
    t["lvs"].append({"scenario": d.name, "dir": d.name, **lv, "sha256": sha, "expect": expect, "why": why})


def simple(d: Path, t: Truth, vol: str, vg: str, lv: str, size: int, *, pv_args: tuple[str, ...] = (),
           vg_args: tuple[str, ...] = ("-s", "1M"), lv_args: tuple[str, ...] = ("-l", "100%FREE"),
           expect: str = "ok", why: str | None = None) -> dict[str, Any]:
    """One file, one PV, one VG, one LV."""

    def setup(lvm: Lvm, devs: list[str]) -> None:
        lvm("pvcreate", *pv_args, devs[0])
        lvm("vgcreate", *vg_args, vg, devs[0])
        lvm("lvcreate", "-n", lv, *lv_args, vg)

    rec: dict[str, Any] = with_lvm(d, {vol: size}, setup)[lv]
    add_lv(t, d, rec, expect, why)
    return rec


def sc_euca(d: Path, t: Truth) -> None:
    vol, mb = "vol-4708bf47", 1024 + 4  # size_GB * 1 GiB + LVM_HEADER_LENGTH (4 MiB), as OverlayManager
    sh("dd", "if=/dev/zero", f"of={d / vol}", "count=1", "bs=1M", f"seek={mb - 1}", "status=none")
    simple(d, t, vol, f"euca-ebs-storage-vg-{vol}", f"euca-{vol}", 0,
           lv_args=("--addtag", vol, "-l", "100%FREE"), vg_args=())
    snap, size = "snap-5e6f7a8b", 1 << 30  # a snapshot is the LV dd'ed out: a plain raw 1 GiB file
    patches = [(o, patch_bytes(snap, o, PATCH)) for o in (0, size // 2 - 777, size - PATCH)]
    with open(sparse(d / snap, size), "r+b") as f:
        for o, data in patches:
            f.seek(o)
            f.write(data)
    t["raw"].append({"dir": d.name, "file": snap, "size": size, "sha256": expected_sha256(size, patches)})
    (d / f"{vol}Ab3dE9").write_bytes(patch_bytes("stray", 0, MiB))  # createTempFile leftover
    t["ignored"].append({"dir": d.name, "file": f"{vol}Ab3dE9", "why": "temp-file"})


def sc_seed(d: Path, t: Truth) -> None:
    simple(d, t, "volume-1a2b3c4d", "vg-1a2b3c4d", "lv-1a2b3c4d", 1001 * MiB,
           vg_args=(), lv_args=("-L", "800M"))


def sc_dots(d: Path, t: Truth) -> None:
    simple(d, t, "vol-d0750001", "vg-Yw9nRg..", "lv-Q2xpaA..", 12 * MiB)


def sc_multiseg(d: Path, t: Truth) -> None:
    def setup(lvm: Lvm, devs: list[str]) -> None:
        lvm("pvcreate", devs[0])
        lvm("vgcreate", "-s", "1M", "vg-mseg", devs[0])
        lvm("lvcreate", "-n", "lvA", "-L", "8M", "vg-mseg")
        lvm("lvcreate", "-n", "lvB", "-L", "4M", "vg-mseg")
        lvm("lvextend", "-L", "+12M", "vg-mseg/lvA")

    lvs = with_lvm(d, {"vol-5e900002": 32 * MiB}, setup)
    if len(lvs["lvA"]["segments"]) != 2:
        raise FixtureError("lvA should have two segments")
    for lv in lvs.values():
        add_lv(t, d, lv)


def sc_striped(d: Path, t: Truth) -> None:
    def setup(lvm: Lvm, devs: list[str]) -> None:
        lvm("pvcreate", *devs)
        lvm("vgcreate", "-s", "1M", "vg-str", *devs)
        lvm("lvcreate", "-i2", "-I64k", "-n", "lv-stripe", "-L", "8M", "vg-str")
        pv = {r["pv_name"]: r for r in lvm.report("pvs", "pv_name,pv_pe_count,pv_pe_alloc_count")}
        free_a = int(pv[devs[0]]["pv_pe_count"]) - int(pv[devs[0]]["pv_pe_alloc_count"])
        lvm("lvcreate", "-n", "lv-span", "-l", str(free_a + 3), "vg-str", *devs)

    lvs = with_lvm(d, {"vol-57a00003": 24 * MiB, "vol-57a0000b": 24 * MiB}, setup)
    if len(lvs["lv-span"]["files"]) != 2 or lvs["lv-stripe"]["segments"][0]["stripes"] != 2:
        raise FixtureError("striped / spanning layout not as intended")
    for lv in lvs.values():
        add_lv(t, d, lv)


def sc_align(d: Path, t: Truth) -> None:
    simple(d, t, "vol-a1190004", "vg-align", "lv-align", 24 * MiB,
           pv_args=("--dataalignment", "64k", "--metadatasize", "128k", "--pvmetadatacopies", "2"))


def sc_ext32m(d: Path, t: Truth) -> None:
    simple(d, t, "vol-e3200005", "vg-ext32m", "lv-ext32m", 132 * MiB, vg_args=("-s", "32M"),
           lv_args=("-l", "3"))


def sc_ring(d: Path, t: Truth) -> None:
    proof: dict[str, Any] = {}

    def setup(lvm: Lvm, devs: list[str]) -> None:
        lvm("pvcreate", "--metadatasize", "32k", "--dataalignment", "4k", devs[0])
        lvm("vgcreate", "-s", "1M", "vg-ring", devs[0])
        lvm("lvcreate", "-n", "lv-ring0", "-L", "4M", "vg-ring")
        name = "lv-ring0"
        for i in range(RING_MAX_CHANGES):
            if i % 7 == 6:
                new = f"lv-ring{i}"
                lvm("lvrename", "vg-ring", name, new)
                name = new
            elif i % 3 == 2:
                lvm("lvchange", "--deltag", f"t{i - 1:03d}-{'x' * 40}", f"vg-ring/{name}")
            else:
                lvm("lvchange", "--addtag", f"t{i:03d}-{'x' * 40}", f"vg-ring/{name}")
            m = pvck.headers(Path(devs[0]))["mdas"][0]
            rl = m["raw_locn"][0]
            if rl["offset"] + rl["size"] > m["size"]:
                proof.update(changes=i + 1, mda_start=m["start"], mda_size=m["size"],
                             raw_locn_offset=rl["offset"], raw_locn_size=rl["size"],
                             wrap_bytes=rl["offset"] + rl["size"] - m["size"])
                return
        raise FixtureError("metadata ring never wrapped")

    lvs = with_lvm(d, {"vol-41190006": 16 * MiB}, setup)
    for lv in lvs.values():
        add_lv(t, d, lv)
    t["ring"] = {"dir": d.name, "file": "vol-41190006", **proof}


def sc_missing(d: Path, t: Truth) -> None:
    a, b = "vol-3155a007", "vol-3155b007"

    def setup(lvm: Lvm, devs: list[str]) -> None:
        lvm("pvcreate", *devs)
        lvm("vgcreate", "-s", "1M", "vg-miss", devs[0])
        lvm("vgextend", "vg-miss", devs[1])
        lvm("lvcreate", "-n", "lv-here", "-L", "4M", "vg-miss", devs[0])
        lvm("lvcreate", "-n", "lv-gone", "-L", "4M", "vg-miss", devs[1])

    lvs = with_lvm(d, {a: 16 * MiB, b: 16 * MiB}, setup)
    (d / b).unlink()  # the second PV never made it into this volumes dir
    add_lv(t, d, lvs["lv-here"])
    add_lv(t, d, lvs["lv-gone"], "refused", "missing-pv")
    t["missing_files"].append({"dir": d.name, "file": b})


def lvm2_sees(path: Path) -> list[str]:
    """vg/lv names real lvm2 finds on a container (read-only loop), [] if it finds none."""
    with loops([path], readonly=True) as devs:
        try:
            rows = Lvm(devs).report("lvs", "vg_name,lv_name")
        except (FixtureError, ValueError):
            return []
    return [f"{r['vg_name']}/{r['lv_name']}" for r in rows]


def sc_badmda(d: Path, t: Truth) -> None:
    rec = simple(d, t, "vol-bad0d008", "vg-badmda", "lv-badmda", 16 * MiB,
                 pv_args=("--pvmetadatacopies", "2"))
    t["corruptions"].append({"dir": d.name, **flip_text_byte(d / "vol-bad0d008", 1),
                             "lvm2_sees": lvm2_sees(d / "vol-bad0d008")})
    if t["corruptions"][-1]["lvm2_sees"] != [f"{rec['vg']}/{rec['lv']}"]:
        raise FixtureError("lvm2 should still read the VG from the second mda")


def sc_badonly(d: Path, t: Truth) -> None:
    simple(d, t, "vol-bad1d009", "vg-badonly", "lv-badonly", 16 * MiB)
    t["lvs"][-1].update(expect="refused", why="corrupt-metadata", sha256=None)
    t["corruptions"].append({"dir": d.name, **flip_text_byte(d / "vol-bad1d009", 1),
                             "lvm2_sees": lvm2_sees(d / "vol-bad1d009")})


def sc_truncated(d: Path, t: Truth) -> None:
    rec = simple(d, t, "vol-7c0d000a", "vg-trunc", "lv-trunc", 16 * MiB)
    cut = rec["segments"][0]["areas"][0]["pe_start"] + rec["size"] // 2
    os.truncate(d / "vol-7c0d000a", cut)
    t["lvs"][-1].update(expect="refused", why="truncated", sha256=None)
    t["truncations"].append({"dir": d.name, "file": "vol-7c0d000a", "size": cut})


def sc_segtypes(d: Path, t: Truth) -> None:
    def setup(lvm: Lvm, devs: list[str]) -> None:
        lvm("pvcreate", devs[0])
        lvm("vgcreate", "-s", "1M", "vg-segtypes", devs[0])
        lvm("lvcreate", "-n", "lv-lin", "-L", "4M", "vg-segtypes")
        lvm("lvcreate", "--type", "zero", "-n", "lv-zero", "-L", "4M", "vg-segtypes")
        lvm("lvcreate", "--type", "error", "-n", "lv-err", "-L", "4M", "vg-segtypes")

    lvs = with_lvm(d, {"vol-5e6700b0": 16 * MiB}, setup)
    add_lv(t, d, lvs["lv-lin"])
    add_lv(t, d, lvs["lv-zero"], sha=expected_sha256(lvs["lv-zero"]["size"], []), write=False)
    add_lv(t, d, lvs["lv-err"], "refused", "error-segment")


# dm-thin data block of the hand-made pool: chunk_size 128 sectors (64 KiB), the lvm2 default.
THIN_CHUNK = 64 * 1024
THIN_MARKER = b"THIN-BLOCK0-MARKER"


def _lv_block(name: str, lvid: str, status: str, seg: list[str]) -> str:
    body = "".join(f"\t\t\t\t{line}\n" for line in seg)
    return (f'\t\t{name} {{\n\t\t\tid = "{lvid}"\n\t\t\tstatus = [{status}]\n\t\t\tflags = []\n'
            f"\t\t\tsegment_count = 1\n\n\t\t\tsegment1 {{\n{body}\t\t\t}}\n\t\t}}\n\n")


def thin_text(s: str, pre: dict[str, Any]) -> str:
    """Turn LVs tdata + tmeta of a vgcfgbackup text into thin pool `pool` + thin LV `thin1`."""
    ids = dict(re.findall(r'\n\t\t(tdata|tmeta) \{\n\t\t\tid = "([^"]+)"', s))
    keep = re.search(r"\t\tlv-lin \{\n.*?\n\t\t\}\n", s, re.S)
    if keep is None or len(ids) != 2:
        raise FixtureError("unexpected vgcfgbackup layout")
    ext = {n: pre[n]["segments"][0] for n in ("tdata", "tmeta")}
    rw = '"READ", "WRITE"'
    vis = rw + ', "VISIBLE"'
    blocks = keep[0] + "\n" + _lv_block("pool", "PooLLv-aaaa-bbbb-cccc-dddd-eeee-ffff01", vis, [
        "start_extent = 0", f"extent_count = {ext['tdata']['extent_count']}", 'type = "thin-pool"',
        'metadata = "pool_tmeta"', 'pool = "pool_tdata"', "transaction_id = 1",
        f"chunk_size = {THIN_CHUNK // 512}", 'discards = "passdown"', "zero_new_blocks = 0"])
    blocks += _lv_block("thin1", "ThinLv-aaaa-bbbb-cccc-dddd-eeee-ffff02", vis, [
        "start_extent = 0", f"extent_count = {ext['tdata']['extent_count']}", 'type = "thin"',
        'thin_pool = "pool"', "transaction_id = 0", "device_id = 1"])
    for sub in ("tmeta", "tdata"):
        g = ext[sub]
        blocks += _lv_block(f"pool_{sub}", ids[sub], rw, [
            "start_extent = 0", f"extent_count = {g['extent_count']}", 'type = "striped"', "stripe_count = 1",
            f'stripes = [ "pv0", {g["areas"][0]["pe_first"]} ]'])
    i = s.index("\tlogical_volumes {")
    j = s.index("\n\t}\n", i)
    return s[:i] + "\tlogical_volumes {\n\n" + blocks + s[j + 1:]


def sc_thin(d: Path, t: Truth) -> None:
    vol, pre = "vol-7f1a000c", {}

    def setup(lvm: Lvm, devs: list[str]) -> None:
        lvm("pvcreate", devs[0])
        lvm("vgcreate", "-s", "1M", "vg-thin", devs[0])
        for name, size in (("lv-lin", "4M"), ("tdata", "8M"), ("tmeta", "2M")):
            lvm("lvcreate", "-n", name, "-L", size, "vg-thin")
        pre.update(layout(lvm, {devs[0]: vol}))
        lvm("vgcfgbackup", "-f", str(d / "orig.vg"), "vg-thin")
        (d / "thin.vg").write_text(thin_text((d / "orig.vg").read_text(), pre))
        lvm("vgcfgrestore", "--force", "-f", str(d / "thin.vg"), "vg-thin")

    try:
        lvs = with_lvm(d, {vol: 32 * MiB}, setup)
        tdata, tmeta = (pre[n]["segments"][0]["areas"][0] for n in ("tdata", "tmeta"))
        nblocks = pre["tdata"]["size"] // THIN_CHUNK
        (d / "thin.xml").write_text(
            f'<superblock uuid="" time="0" transaction="1" data_block_size="{THIN_CHUNK // 512}" '
            f'nr_data_blocks="{nblocks}">\n <device dev_id="1" mapped_blocks="1" transaction="0" '
            'creation_time="0" snap_time="0">\n  <range_mapping origin_begin="0" data_begin="5" length="1" '
            'time="0"/>\n </device>\n</superblock>\n')
        sparse(d / "tmeta.bin", pre["tmeta"]["size"])
        sh("thin_restore", "-q", "-i", str(d / "thin.xml"), "-o", str(d / "tmeta.bin"))
        ext = pre["tdata"]["extent_size"]
        with open(d / vol, "r+b") as f:
            f.seek(tmeta["pe_start"] + tmeta["pe_first"] * ext)
            f.write((d / "tmeta.bin").read_bytes())
            f.seek(tdata["pe_start"] + tdata["pe_first"] * ext + 5 * THIN_CHUNK)  # pool data block 5
            f.write(THIN_MARKER)
    finally:
        for tmp in ("orig.vg", "thin.vg", "thin.xml", "tmeta.bin"):
            (d / tmp).unlink(missing_ok=True)
    add_lv(t, d, lvs["lv-lin"])
    add_lv(t, d, lvs["pool"], "refused", "thin")
    add_lv(t, d, lvs["thin1"], "refused", "thin")


SCENARIOS: dict[str, Callable[[Path, Truth], None]] = {
    "euca": sc_euca, "seed": sc_seed, "dots": sc_dots, "multiseg": sc_multiseg, "striped": sc_striped,
    "align": sc_align, "ext32m": sc_ext32m, "ring": sc_ring, "missing": sc_missing, "badmda": sc_badmda,
    "badonly": sc_badonly, "truncated": sc_truncated, "segtypes": sc_segtypes, "thin": sc_thin,
}


def lvm_version() -> str:
    m = re.search(r"LVM version:\s*(\S+)", sh("lvm", "version", check=False).stdout)
    return m[1] if m else "unknown"


def build_all(outdir: Path) -> dict[str, Any]:
    """Build every scenario under outdir and write outdir/truth.json last (atomically)."""
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "truth.json").unlink(missing_ok=True)
    t: Truth = {"fixture_version": FIXTURE_VERSION, "lvm_version": lvm_version(), "scenarios": {},
                "lvs": [], "files": {}, "raw": [], "ignored": [], "missing_files": [], "ring": None,
                "corruptions": [], "truncations": []}
    for name, fn in SCENARIOS.items():
        d = outdir / name
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        fn(d, t)
        t["scenarios"][name] = {"dir": name, "files": sorted(p.name for p in d.iterdir())}
    not_lvm = {(r["dir"], r["file"]) for r in t["raw"] + t["ignored"]}
    for name, sc in t["scenarios"].items():
        for f in sc["files"]:
            p = outdir / name / f
            entry: dict[str, Any] = {"dir": name, "file": f, "size": p.stat().st_size}
            if (name, f) not in not_lvm:
                h = pvck.headers(p)
                h.pop("lines")
                entry.update(pvck_headers=h, pvck_metadata=pvck.metadata(p))
            t["files"][f"{name}/{f}"] = entry
    tmp = outdir / f".truth.json.{os.getpid()}"
    tmp.write_text(json.dumps(t, indent=1, sort_keys=True))
    os.replace(tmp, outdir / "truth.json")
    return t


def _complete(root: Path) -> dict[str, Any] | None:
    try:
        t: dict[str, Any] = json.loads((root / "truth.json").read_text())
    except (OSError, ValueError):
        return None
    if t.get("fixture_version") != FIXTURE_VERSION:
        return None
    for key, f in t["files"].items():
        p = root / key
        if not p.is_file() or p.stat().st_size != f["size"]:
            return None
    return t


def cached() -> tuple[Path, dict[str, Any]]:
    """Fixture dir (env EUCA2KVM_FIXTURES, else the versioned /var/tmp one) and its truth; built if needed."""
    root = Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent test processes build once
        t = _complete(root)
        return root, (t if t is not None else build_all(root))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/lvmfix.py OUTDIR")
    truth = build_all(Path(sys.argv[1]))
    print(f"{len(truth['lvs'])} LVs in {len(truth['scenarios'])} scenarios -> {sys.argv[1]}/truth.json")


# lvm2's default data offset: container byte DEFAULT_PE_START + n is the LV's byte n.
DEFAULT_PE_START = MiB


def seeded_overlay(d: Path, vid: str, seed: int, size: int = 12 * MiB, data: int = MiB) -> None:
    """An overlay container ``d/vid`` made by the real lvm2 (the Eucalyptus names and tag), with ``data``
    bytes of random data seeded by ``seed`` at 1 MiB into its LV."""
    vg, lv = f"euca-ebs-storage-vg-{vid}", f"euca-{vid}"

    def setup(lvm: Lvm, devs: list[str]) -> None:
        lvm("pvcreate", *devs)
        lvm("vgcreate", vg, *devs)
        lvm("lvcreate", "--addtag", vid, "-n", lv, "-l", "100%FREE", vg)

    with_lvm(d, {vid: size}, setup)
    with open(d / vid, "r+b") as f:
        f.seek(DEFAULT_PE_START + MiB)
        f.write(random.Random(seed).randbytes(data))
