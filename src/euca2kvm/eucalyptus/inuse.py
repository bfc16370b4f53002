# SPDX-License-Identifier: Apache-2.0
"""Is a source held by someone else? Loop devices, device-mapper and open descriptors.

Exporting a container that is attached and active gives a torn copy of a disk a guest is
writing. Everything here only reads /sys and /proc, and asks tgtadm for its targets; nothing is
locked or changed (what tgt targets and Eucalyptus processes mean is :mod:`.cloudinuse`'s).

The checks run on a :class:`Host`: :data:`LOCAL` is this machine; a source host reached over SSH
(``remote.hostcheck``) answers the same questions with read-only commands, so a remote source is
refused exactly as a local one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

SYS_BLOCK = "/sys/block"
PROC = "/proc"
# /proc can list thousands of processes with thousands of descriptors; the scan is linear and
# cheap (readlink only), but bounded so a pathological host cannot stall the tool.
MAX_FDS_SCANNED = 2_000_000
# /proc/<pid>/cmdline is read only this far: the program name and a few arguments suffice.
MAX_CMDLINE = 4096
# tgt's read-only listing of targets and their LUNs' backing stores.
TGTADM_SHOW = ("--lld", "iscsi", "--op", "show", "--mode", "target")
# tgtadm answers from tgtd's in-memory state in milliseconds; a hung tgtd must not hang the tool.
TGTADM_TIMEOUT_S = 10
# A tgtd with thousands of targets prints a few MiB at most; more is not a tgtadm listing.
MAX_TGTADM_OUTPUT = 16 << 20


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

    def processes(self) -> list[tuple[int, str, str]]:
        """(pid, comm, argv[0]) of the host's processes (not this tool's own)."""
        ...

    def tgtadm_show(self) -> tuple[int, str] | None:
        """``tgtadm --lld iscsi --op show --mode target``'s (status, output; stderr when it failed),
        None when the host has no tgtadm. ToolError when it cannot be run or does not answer."""
        ...


def _read_bytes(path: str, limit: int) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(limit)
    except OSError:
        return None


def processes(proc: str = PROC) -> list[tuple[int, str, str]]:
    """(pid, comm, argv[0]) of every process of this machine but this one."""
    out: list[tuple[int, str, str]] = []
    me = os.getpid()
    try:
        pids = sorted(int(p) for p in os.listdir(proc) if p.isdigit())
    except OSError:
        return out
    for pid in pids:
        if pid == me:
            continue
        comm = (_read_bytes(os.path.join(proc, str(pid), "comm"), 64) or b"").decode("utf-8", "replace").strip()
        raw = _read_bytes(os.path.join(proc, str(pid), "cmdline"), MAX_CMDLINE) or b""
        out.append((pid, comm, raw.split(b"\0", 1)[0].decode("utf-8", "replace")))
    return out


def tgtadm_show(tgtadm: str | None = None) -> tuple[int, str] | None:
    exe = tgtadm or shutil.which("tgtadm")
    if exe is None:
        return None
    from .. import procs  # here: only a host with tgtd pays for the process runner's imports

    res = procs.run([exe, *TGTADM_SHOW], timeout=TGTADM_TIMEOUT_S, ok=None, max_stdout=MAX_TGTADM_OUTPUT,
                    what="tgtadm")
    return res.status, res.stdout.decode("utf-8", "replace") if res.status == 0 else res.stderr[:300]


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

    def processes(self) -> list[tuple[int, str, str]]:
        return processes()

    def tgtadm_show(self) -> tuple[int, str] | None:
        return tgtadm_show()


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
