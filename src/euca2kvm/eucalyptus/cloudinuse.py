# SPDX-License-Identifier: Apache-2.0
"""Cloud-level "in use" evidence, on top of :mod:`.inuse` (loop devices, device-mapper, open files).

* the cloud database, through the inventory: an ``iscsivolumeinfo`` row with ``lodev_name`` set
  (the SC had the container on a loop device and treats it as exported at its last shutdown), a
  tgt target id/store name, an active ``volume_exports`` row, or an instance still ``running``;
* tgt targets on the source's host: ``tgtadm --lld iscsi --op show --mode target`` when ``tgtadm``
  exists, matching each LUN's backing store against the volume's LV path, container file or VG;
* Eucalyptus and tgtd processes running on that host (``/proc/<pid>/comm`` and ``cmdline``): a live
  storage controller may attach, snapshot or delete volumes at any moment.

The host is an :class:`.inuse.Host`: this machine, or a source host over SSH, asked the same
questions with read-only commands (``remote.hostcheck``).

Everything is read-only. Database evidence describes the moment the inventory was captured; the
messages say so, and ``--force`` overrides every kind.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from ..errors import ToolError
from .discovery import Volume
from .inuse import Host, processes, tgtadm_show
from .inventory import Instance, Inventory

PROC = "/proc"
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
    where: str = "this host"  # or the ssh:// name of a source host
    local: bool = True  # backing stores are paths of this machine (else of the source host)

    def host_evidence(self) -> list[Evidence]:
        """Evidence against exporting anything from this host."""
        out: list[Evidence] = []
        euca = [(p, n) for p, n in self.processes if n != TGTD]
        if euca:
            who = ", ".join(f"{n} (pid {p})" for p, n in euca)
            out.append(
                Evidence(
                    "process",
                    f"Eucalyptus is running on {self.where}: {who}; the storage controller "
                    "may attach, snapshot or delete volumes while they are copied",
                )
            )
        tgtd = [p for p, n in self.processes if n == TGTD]
        if tgtd and self.tgtadm_error is not None:
            out.append(
                Evidence(
                    "process",
                    f"tgtd is running on {self.where} (pid {', '.join(map(str, tgtd))}) and its targets "
                    f"cannot be listed ({self.tgtadm_error}); any volume may be exported "
                    "over iSCSI",
                )
            )
        return out


def cloud_processes(proc: str = PROC, host: Host | None = None) -> list[tuple[int, str]]:
    """(pid, name) of running Eucalyptus storage/cloud processes and tgtd on ``host`` (default: this
    machine, its /proc at ``proc``), never this process."""
    out: list[tuple[int, str]] = []
    for pid, comm, argv0 in (host.processes() if host is not None else processes(proc)):
        for name in (os.path.basename(argv0), comm):
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


def tgt_targets(tgtadm: str | None = None, host: Host | None = None) -> tuple[list[tuple[int, str, str]], str | None]:
    """(targets, error) on ``host`` (default: this machine, ``tgtadm`` or the one on PATH). No tgtadm
    gives ([], None): nothing can be exported over tgt then."""
    try:
        res = host.tgtadm_show() if host is not None else tgtadm_show(tgtadm)
    except ToolError as e:
        return [], str(e)  # not runnable, no answer in time, or an output no tgtadm prints
    if res is None:
        return [], None
    status, text = res
    if status != 0:
        msg = text[:300]
        if "can't find the driver" in msg.lower() or "connect" in msg.lower():
            return [], None  # tgtd is not running: no targets exist
        return [], f"tgtadm failed ({status}): {msg}"
    return parse_tgtadm_targets(text), None


def host_state(proc: str = PROC, tgtadm: str | None = None, host: Host | None = None) -> HostState:
    """The facts of ``host`` (default: this machine); a remote host's are named by ``host.name``."""
    targets, err = tgt_targets(tgtadm, host)
    return HostState(processes=cloud_processes(proc, host), targets=targets, tgtadm_error=err,
                     where="this host" if host is None else str(getattr(host, "name", "the source host")),
                     local=host is None)


def combine(states: list[HostState]) -> HostState:
    """One state for the hosts of several sources (their evidence adds up)."""
    if len(states) == 1:
        return states[0]
    return HostState(processes=[p for s in states for p in s.processes],
                     targets=[t for s in states for t in s.targets],
                     tgtadm_error=next((s.tgtadm_error for s in states if s.tgtadm_error), None),
                     where=" and ".join(s.where for s in states), local=all(s.local for s in states))


def _backing_matches(backing: str, vol: Volume | None, vg: str | None, lv: str | None, local: bool = True) -> bool:
    real = os.path.realpath(backing) if local else os.path.normpath(backing)
    names: set[str] = set()
    if vol is not None:  # a remote volume's files by their path on its host
        names |= {os.path.normpath(unquote(urlsplit(f).path)) for f in vol.files if f.startswith("ssh://")}
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
        if _backing_matches(backing, vol, sv.vg_name if sv else None, sv.lv_name if sv else None, host.local):
            out.append(
                Evidence(
                    "tgt", f"tgtd on {host.where} exports {volume_id} as target {tid} ({name}) with backing store "
                    f"{backing}"
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
