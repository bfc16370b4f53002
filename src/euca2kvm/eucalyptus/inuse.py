# SPDX-License-Identifier: Apache-2.0
"""Is a source held by someone else? Loop devices, device-mapper and open descriptors.

Exporting a container that is attached and active gives a torn copy of a disk a guest is
writing. Everything here only reads /sys and /proc; nothing is locked or changed (tgt targets and
Eucalyptus processes are the cloud-level evidence of :mod:`.cloudinuse`).

The checks run on a :class:`Host`: :data:`LOCAL` is this machine; a source host reached over SSH
(``remote.hostcheck``) answers the same questions with read-only commands, so a remote source is
refused exactly as a local one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

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


def block_holders(path: str, sys_block: str = SYS_BLOCK) -> list[str]:
    """What holds a block device (dm, md): /sys/block/<dev>/holders."""
    hdir = os.path.join(sys_block, os.path.basename(path), "holders")
    if not path.startswith("/dev/") or not os.path.isdir(hdir):
        return []
    with contextlib.suppress(OSError):
        return sorted(os.listdir(hdir))
    return []


class Host(Protocol):
    """Where sources live and the checks run: this machine or a source host over SSH."""

    def path_of(self, name: str) -> str:
        """The host's own path for a source's name (local: its realpath; remote: the URL's path)."""
        ...

    def loop_backings(self) -> dict[str, str]: ...

    def dm_names(self) -> dict[str, str]: ...

    def block_holders(self, path: str) -> list[str]: ...

    def open_by(self, paths: Iterable[str]) -> dict[str, list[str]]: ...


class LocalHost:
    """This machine: /sys and /proc read directly."""

    def path_of(self, name: str) -> str:
        return os.path.realpath(name)

    def loop_backings(self) -> dict[str, str]:
        return loop_backings()

    def dm_names(self) -> dict[str, str]:
        return dm_names()

    def block_holders(self, path: str) -> list[str]:
        return block_holders(path)

    def open_by(self, paths: Iterable[str]) -> dict[str, list[str]]:
        return open_by(paths)


LOCAL = LocalHost()


def holders(files: Iterable[str], lvs: Iterable[tuple[str, str]] = (), host: Host = LOCAL) -> list[Holder]:
    """Everything on ``host`` that holds any of ``files`` (or has any of the (vg, lv) active in dm).

    Holders name the files as given (a remote file by its ``ssh://`` name).
    """
    named = {host.path_of(f): f for f in files}
    found: list[Holder] = []
    loops = host.loop_backings()
    for path, f in named.items():
        if path in loops:
            found.append(Holder(f, f"attached to {loops[path]} (losetup)"))
        for h in host.block_holders(path):
            found.append(Holder(f, f"held by /dev/{h}"))
    active = host.dm_names()
    for vg, lv in lvs:
        n = dm_name(vg, lv)
        if n in active:
            found.append(Holder(f"{vg}/{lv}", f"active in device-mapper as /dev/{active[n]} ({n})"))
    for path, who in host.open_by(list(named)).items():
        for w in who:
            found.append(Holder(named.get(path, path), f"open by {w}"))
    return found
