# SPDX-License-Identifier: Apache-2.0
"""Cloud-level "in use" evidence, on top of :mod:`.inuse` (loop devices, device-mapper, open files).

* the cloud database, through the inventory: an ``iscsivolumeinfo`` row with ``lodev_name`` set
  (the SC had the container on a loop device and treats it as exported at its last shutdown), a
  tgt target id/store name, an active ``volume_exports`` row, or an instance still ``running``;
* tgt targets on this host: ``tgtadm --lld iscsi --op show --mode target`` when ``tgtadm`` exists,
  matching each LUN's backing store against the volume's LV path, container file or VG;
* Eucalyptus and tgtd processes running on this host (``/proc/<pid>/comm`` and ``cmdline``): a live
  storage controller may attach, snapshot or delete volumes at any moment.

Everything is read-only. Database evidence describes the moment the inventory was captured; the
messages say so, and ``--force`` overrides every kind.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field

from .. import procs
from ..errors import ToolError
from .discovery import Volume
from .inventory import Instance, Inventory

PROC = "/proc"
# tgtadm answers from tgtd's in-memory state in milliseconds; a hung tgtd must not hang the tool.
TGTADM_TIMEOUT_S = 10
# A tgtd with thousands of targets prints a few MiB at most; more is not a tgtadm listing.
MAX_TGTADM_OUTPUT = 16 << 20
# /proc/<pid>/cmdline is read only this far: the program name and a few arguments suffice.
MAX_CMDLINE = 4096
# Process names of the cloud's storage side. comm is at most 15 characters, so the
# 16-character "eucalyptus-cloud" appears there as "eucalyptus-clou": argv[0] is checked as well.
EUCA_PROCESSES = ("eucalyptus-cloud", "eucalyptus-sc", "eucalyptus-clou")
TGTD = "tgtd"
_TARGET_RE = re.compile(r"^Target\s+(\d+):\s*(\S+)")
_BACKING_RE = re.compile(r"^\s*Backing store path:\s*(\S.*?)\s*$")


@dataclass(frozen=True)
class Evidence:
    """Why a volume (or the whole host) must not be exported without ``--force``."""

    source: str  # database | tgt | process
    what: str

    def __str__(self) -> str:
        return self.what


@dataclass
class HostState:
    """Host-wide facts gathered once per command."""

    processes: list[tuple[int, str]] = field(default_factory=list)  # (pid, name) of Eucalyptus/tgtd
    targets: list[tuple[int, str, str]] = field(default_factory=list)  # (tid, target name, backing store)
    tgtadm_error: str | None = None  # tgtadm exists but could not list targets

    def host_evidence(self) -> list[Evidence]:
        """Evidence against exporting anything from this host."""
        out: list[Evidence] = []
        euca = [(p, n) for p, n in self.processes if n != TGTD]
        if euca:
            who = ", ".join(f"{n} (pid {p})" for p, n in euca)
            out.append(
                Evidence(
                    "process",
                    f"Eucalyptus is running on this host: {who}; the storage controller "
                    "may attach, snapshot or delete volumes while they are copied",
                )
            )
        tgtd = [p for p, n in self.processes if n == TGTD]
        if tgtd and self.tgtadm_error is not None:
            out.append(
                Evidence(
                    "process",
                    f"tgtd is running (pid {', '.join(map(str, tgtd))}) and its targets "
                    f"cannot be listed ({self.tgtadm_error}); any volume may be exported "
                    "over iSCSI",
                )
            )
        return out


def _read_small(path: str, limit: int) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(limit)
    except OSError:
        return None


def cloud_processes(proc: str = PROC) -> list[tuple[int, str]]:
    """(pid, name) of running Eucalyptus storage/cloud processes and tgtd (never this process)."""
    out: list[tuple[int, str]] = []
    me = os.getpid()
    try:
        pids = sorted(int(p) for p in os.listdir(proc) if p.isdigit())
    except OSError:
        return out
    for pid in pids:
        if pid == me:
            continue
        comm = (
            (_read_small(os.path.join(proc, str(pid), "comm"), 64) or b"").decode("utf-8", "replace").strip()
        )
        raw = _read_small(os.path.join(proc, str(pid), "cmdline"), MAX_CMDLINE) or b""
        argv0 = os.path.basename(raw.split(b"\0", 1)[0].decode("utf-8", "replace"))
        for name in (argv0, comm):
            if name == TGTD:
                out.append((pid, TGTD))
                break
            if name in EUCA_PROCESSES:
                out.append((pid, "eucalyptus-cloud" if name == "eucalyptus-clou" else name))
                break
    return out


def parse_tgtadm_targets(text: str) -> list[tuple[int, str, str]]:
    """(tid, target name, backing store path) per LUN with a backing store, from ``tgtadm --op show``."""
    out: list[tuple[int, str, str]] = []
    tid, name = -1, ""
    for line in text.splitlines():
        m = _TARGET_RE.match(line)
        if m:
            tid, name = int(m.group(1)), m.group(2)
            continue
        b = _BACKING_RE.match(line)
        if b and tid >= 0 and b.group(1) not in ("None", "none"):
            out.append((tid, name, b.group(1)))
    return out


def tgt_targets(tgtadm: str | None = None) -> tuple[list[tuple[int, str, str]], str | None]:
    """(targets, error). No tgtadm on PATH gives ([], None): nothing can be exported over tgt then."""
    exe = tgtadm or shutil.which("tgtadm")
    if exe is None:
        return [], None
    cmd = [exe, "--lld", "iscsi", "--op", "show", "--mode", "target"]
    try:
        res = procs.run(cmd, timeout=TGTADM_TIMEOUT_S, ok=None, max_stdout=MAX_TGTADM_OUTPUT, what="tgtadm")
    except ToolError as e:
        return [], str(e)  # not runnable, no answer in time, or an output no tgtadm prints
    if res.status != 0:
        msg = res.stderr[:300]
        if "can't find the driver" in msg.lower() or "connect" in msg.lower():
            return [], None  # tgtd is not running: no targets exist
        return [], f"tgtadm failed ({res.status}): {msg}"
    return parse_tgtadm_targets(res.stdout.decode("utf-8", "replace")), None


def host_state(proc: str = PROC, tgtadm: str | None = None) -> HostState:
    targets, err = tgt_targets(tgtadm)
    return HostState(processes=cloud_processes(proc), targets=targets, tgtadm_error=err)


def _backing_matches(backing: str, vol: Volume | None, vg: str | None, lv: str | None) -> bool:
    real = os.path.realpath(backing)
    names: set[str] = set()
    if vg and lv:
        names |= {f"/dev/{vg}/{lv}", f"/dev/mapper/{vg.replace('-', '--')}-{lv.replace('-', '--')}"}
    if vol is not None:
        names |= set(vol.files)
        if vol.vg and vol.lv:
            names |= {
                f"/dev/{vol.vg}/{vol.lv}",
                f"/dev/mapper/{vol.vg.replace('-', '--')}-{vol.lv.replace('-', '--')}",
            }
    return backing in names or real in names


def volume_evidence(
    volume_id: str,
    vol: Volume | None,
    inventory: Inventory | None,
    host: HostState,
) -> list[Evidence]:
    """Database and tgt evidence that ``volume_id`` is attached or exported."""
    out: list[Evidence] = []
    sv = inventory.storage_volume(volume_id) if inventory is not None else None
    when = f"the cloud database (inventory captured {inventory.captured_at})" if inventory is not None else ""
    if sv is not None:
        if sv.lodev_name:
            out.append(
                Evidence(
                    "database",
                    f"{when} records {volume_id} attached to loop device {sv.lodev_name} "
                    "(iscsivolumeinfo.lodev_name): the SC had it exported",
                )
            )
        if sv.export_active:
            out.append(
                Evidence(
                    "database",
                    f"{when} has an active volume_exports row for {volume_id} "
                    "(attached to an instance over iSCSI)",
                )
            )
        if sv.tid is not None and sv.storename and not sv.lodev_name:
            out.append(
                Evidence("database", f"{when} records tgt target {sv.tid} ({sv.storename}) for {volume_id}")
            )
    for tid, name, backing in host.targets:
        if _backing_matches(backing, vol, sv.vg_name if sv else None, sv.lv_name if sv else None):
            out.append(
                Evidence(
                    "tgt", f"tgtd exports {volume_id} as target {tid} ({name}) with backing store {backing}"
                )
            )
    return out


def instance_evidence(instance: Instance) -> list[Evidence]:
    if instance.state in ("running", "pending", "stopping", "shutting-down"):
        return [
            Evidence(
                "database",
                f"instance {instance.id} is {instance.state} according to the inventory: "
                "stop it first, or the copy of its disks may be inconsistent",
            )
        ]
    return []


def describe(evidence: Iterable[Evidence]) -> str:
    return "; ".join(str(e) for e in evidence)
