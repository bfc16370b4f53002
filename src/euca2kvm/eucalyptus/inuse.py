# SPDX-License-Identifier: Apache-2.0
"""Is a source held by someone else? Loop devices, device-mapper and open descriptors.

Exporting a container that is attached and active gives a torn copy of a disk a guest is
writing. Everything here only reads /sys and /proc; nothing is locked or changed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass

SYS_BLOCK = "/sys/block"
PROC = "/proc"
# /proc can list thousands of processes with thousands of descriptors; the scan is linear and
# cheap (readlink only), but bounded so a pathological host cannot stall the tool.
MAX_FDS_SCANNED = 2_000_000


@dataclass(frozen=True)
class Holder:
    path: str  # the source that is held
    what: str  # human description: "attached to /dev/loop3"

    def __str__(self) -> str:
        return f"{self.path}: {self.what}"


def dm_name(vg: str, lv: str) -> str:
    """Device-mapper name lvm2 gives an active LV: dashes doubled, VG and LV joined by '-'."""
    return vg.replace("-", "--") + "-" + lv.replace("-", "--")


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(4096).strip()
    except OSError:
        return None


def loop_backings(sys_block: str = SYS_BLOCK) -> dict[str, str]:
    """Backing file (realpath) -> /dev/loopN for every attached loop device."""
    out: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for name in os.listdir(sys_block):
            if not name.startswith("loop"):
                continue
            backing = _read(os.path.join(sys_block, name, "loop", "backing_file"))
            if backing:
                if backing.endswith(" (deleted)"):
                    backing = backing[: -len(" (deleted)")]
                out[os.path.realpath(backing)] = f"/dev/{name}"
    return out


def dm_names(sys_block: str = SYS_BLOCK) -> dict[str, str]:
    """dm name -> dm-N for every active device-mapper device (empty without dm)."""
    out: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for name in os.listdir(sys_block):
            if name.startswith("dm-"):
                n = _read(os.path.join(sys_block, name, "dm", "name"))
                if n:
                    out[n] = name
    return out


def open_by(paths: Iterable[str], proc: str = PROC) -> dict[str, list[str]]:
    """realpath -> ["pid 123 (tgtd)", ...] for processes other than this one holding it open."""
    wanted = {os.path.realpath(p) for p in paths}
    out: dict[str, list[str]] = {}
    me = str(os.getpid())
    scanned = 0
    try:
        pids = [p for p in os.listdir(proc) if p.isdigit() and p != me]
    except OSError:
        return out
    for pid in pids:
        fd_dir = os.path.join(proc, pid, "fd")
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            scanned += 1
            if scanned > MAX_FDS_SCANNED:
                return out
            try:
                target = os.readlink(os.path.join(fd_dir, fd))
            except OSError:
                continue
            if target in wanted:
                comm = _read(os.path.join(proc, pid, "comm")) or "?"
                out.setdefault(target, []).append(f"pid {pid} ({comm})")
    return out


def holders(files: Iterable[str], lvs: Iterable[tuple[str, str]] = ()) -> list[Holder]:
    """Everything that holds any of ``files`` (or has any of the (vg, lv) active in dm)."""
    files = [os.path.realpath(f) for f in files]
    found: list[Holder] = []
    loops = loop_backings()
    for f in files:
        if f in loops:
            found.append(Holder(f, f"attached to {loops[f]} (losetup)"))
        base = os.path.basename(f)
        # A block-device source held by dm/md: /sys/block/<dev>/holders lists them.
        hdir = os.path.join(SYS_BLOCK, base, "holders")
        if f.startswith("/dev/") and os.path.isdir(hdir):
            with contextlib.suppress(OSError):
                for h in os.listdir(hdir):
                    found.append(Holder(f, f"held by /dev/{h}"))
    active = dm_names()
    for vg, lv in lvs:
        n = dm_name(vg, lv)
        if n in active:
            found.append(Holder(f"{vg}/{lv}", f"active in device-mapper as /dev/{active[n]} ({n})"))
    for path, who in open_by(files).items():
        for w in who:
            found.append(Holder(path, f"open by {w}"))
    return found
