# SPDX-License-Identifier: Apache-2.0
"""Plan a whole-instance export: inventory + discovered volumes -> ordered disks, names and blockers.

For each instance the boot volume comes first, then the attached volumes in natural device order
(:meth:`Inventory.ordered_volumes`). Each disk is written as ``<instance>-<device>.<ext>`` (both
parts taken from metadata, so sanitised) and attached to the KVM guest as ``vda``, ``vdb``, ... in
that order. Nothing here writes: the plan says what would be read, how much, where it would go,
and every reason it cannot be exported (a *blocker*). In-use blockers may be overridden with
``--force``; the others may not.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..blocks import BlockReader, data_bytes
from ..errors import (
    EXIT_FORMAT,
    EXIT_IN_USE,
    EXIT_IO,
    EXIT_USAGE,
    Euca2kvmError,
    FormatError,
    InUseError,
    IOFailure,
    UnsupportedError,
    UsageError,
)
from ..eucalyptus.cloudinuse import HostState, instance_evidence, volume_evidence
from ..eucalyptus.discovery import Discovery, Volume
from ..eucalyptus.inventory import Attachment, Instance, Inventory
from ..export import manifest
from ..export.formats import OutputFormat, output_bytes
from ..units import GiB

if TYPE_CHECKING:
    from ..kvm.ncconf import Hardware

# Exit code per blocker kind: what export-instance would fail with.
EXIT_BY_KIND = {
    "in-use": EXIT_IN_USE,
    "missing-file": EXIT_USAGE,
    "missing-pv": EXIT_FORMAT,
    "unsupported": EXIT_FORMAT,
    "format": EXIT_FORMAT,
    "no-boot-loader": EXIT_FORMAT,
    "no-volumes": EXIT_USAGE,
    "no-space": EXIT_IO,
    "name-collision": EXIT_USAGE,  # two sources, one output name: what `export` refuses with exit 2
}
# A Eucalyptus guest without a bootloader was started by the NC with kernel, ramdisk and a root device
# named sda1 or similar; on KVM the disk is virtio, so the root file system is vda (or vda1).
DEFAULT_CMDLINE = "ro console=ttyS0 console=tty0"


@dataclass(frozen=True)
class Blocker:
    kind: str  # a key of EXIT_BY_KIND
    message: str
    volume_id: str | None = None

    @property
    def forceable(self) -> bool:
        return self.kind == "in-use"

    @property
    def exit_code(self) -> int:
        return EXIT_BY_KIND.get(self.kind, EXIT_FORMAT)

    def error(self) -> Euca2kvmError:
        """The error export-instance raises for this blocker."""
        cls: type[Euca2kvmError] = {
            "in-use": InUseError,
            "missing-file": UsageError,
            "no-volumes": UsageError,
            "name-collision": UsageError,
            "no-space": IOFailure,
        }.get(self.kind, FormatError)
        return cls(self.message)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "volume_id": self.volume_id,
            "message": self.message,
            "forceable": self.forceable,
        }


@dataclass
class PlannedDisk:
    volume_id: str
    device: str | None  # as the cloud recorded it
    attachment: str  # boot | runtime
    is_root: bool
    name: str  # <instance>-<device>, sanitised; also the manifest id
    output: Path
    target_dev: str  # vda, vdb, ... in the KVM guest
    volume: Volume | None = None
    size: int | None = None
    bytes_to_read: int | None = None
    estimated_bytes: int | None = None
    blockers: list[Blocker] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        v = self.volume
        return {
            "volume_id": self.volume_id,
            "device": self.device,
            "attachment": self.attachment,
            "is_root": self.is_root,
            "name": self.name,
            "output": str(self.output),
            "target_dev": self.target_dev,
            "kind": v.kind if v else None,
            "vg": v.vg if v else None,
            "lv": v.lv if v else None,
            "files": v.files if v else [],
            "size": self.size,
            "bytes_to_read": self.bytes_to_read,
            "estimated_bytes": self.estimated_bytes,
            "blockers": [b.to_json() for b in self.blockers],
            "warnings": self.warnings,
        }


@dataclass
class InstancePlan:
    instance: Instance
    disks: list[PlannedDisk] = field(default_factory=list)
    blockers: list[Blocker] = field(default_factory=list)  # instance-level
    warnings: list[str] = field(default_factory=list)
    vcpus: int = 1
    memory_mib: int = 1024
    boot_verdict: str | None = None  # guest inspection of the boot disk
    boot_has_table: bool = False
    needs_kernel: bool = False  # EKI/ERI instance whose boot disk has no boot loader
    hardware: Hardware | None = None  # the NC's virtual hardware, chosen by the CLI (kvm.ncconf)

    @property
    def all_blockers(self) -> list[Blocker]:
        return [*self.blockers, *(b for d in self.disks for b in d.blockers)]

    def to_json(self) -> dict[str, Any]:
        i = self.instance
        return {
            "instance": i.id,
            "state": i.state,
            "vm_type": i.vm_type.name if i.vm_type else None,
            "vcpus": self.vcpus,
            "memory_mib": self.memory_mib,
            "kernel_id": _image_id(i.kernel_id),
            "ramdisk_id": _image_id(i.ramdisk_id),
            "root_device": i.root_device,
            "boot_verdict": self.boot_verdict,
            "needs_kernel": self.needs_kernel,
            "hardware": self.hardware.to_json() if self.hardware is not None else None,
            "disks": [d.to_json() for d in self.disks],
            "blockers": [b.to_json() for b in self.blockers],
            "warnings": self.warnings,
        }


def short_device(device: str | None) -> str | None:
    return device[5:] if device and device.startswith("/dev/") else device


def target_dev(index: int) -> str:
    """vda, vdb, ..., vdz, vdaa, ... for disk ``index`` (0-based)."""
    letters = ""
    n = index + 1
    while n:
        n, r = divmod(n - 1, 26)
        letters = chr(ord("a") + r) + letters
    return f"vd{letters}"


def estimate_output(data: int, fmt: OutputFormat) -> int:
    """Bytes an image of ``data`` allocated source bytes takes (same rule as the export preflight)."""
    return output_bytes(fmt, data)


def free_bytes(path: Path) -> int:
    """Free space where ``path`` is or would be created (its nearest existing ancestor)."""
    p = path.resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    st = os.statvfs(p)
    return st.f_bavail * st.f_frsize


def classify(err: Euca2kvmError) -> str:
    if isinstance(err, UnsupportedError):
        return "unsupported"
    if isinstance(err, FormatError) and "which is missing" in err.reason:
        return "missing-pv"
    return "format"


def check_volume(
    disk: PlannedDisk,
    d: Discovery,
    inv: Inventory | None,
    host: HostState,
    fmt: OutputFormat,
    sources: list[str],
) -> None:
    """Find the disk's volume among the sources and fill sizes, blockers and warnings."""
    vid = disk.volume_id
    try:
        vol = d.find(vid)
    except UsageError:
        expected = f" (expected {os.path.join(inv.volumes_dir, vid)})" if inv and inv.volumes_dir else ""
        disk.blockers.append(
            Blocker(
                "missing-file",
                f"{vid}: no container file, DAS LV or snapshot with this id "
                f"in {', '.join(sources)}{expected}",
                vid,
            )
        )
        return
    disk.volume = vol
    disk.size = vol.size
    if vol.problem_error is not None:
        disk.blockers.append(Blocker(classify(vol.problem_error), f"{vid}: {vol.problem}", vid))
    else:
        try:
            with contextlib.closing(vol.block_source()) as blocks:
                disk.bytes_to_read = data_bytes(blocks)
            disk.estimated_bytes = estimate_output(disk.bytes_to_read, fmt)
        except Euca2kvmError as e:
            disk.blockers.append(Blocker(classify(e), f"{vid}: {e}", vid))
    for h in vol.in_use:
        disk.blockers.append(Blocker("in-use", f"{vid}: {h}", vid))
    for ev in volume_evidence(vid, vol, inv, host):
        disk.blockers.append(Blocker("in-use", ev.what, vid))
    if inv is not None:
        meta = inv.volume(vid)
        if meta is not None and meta.size_gib is not None and vol.size != meta.size_gib * GiB:
            disk.warnings.append(
                f"{vid}: the cloud records {meta.size_gib} GiB, the LV holds {vol.size} bytes"
            )
        sv = inv.storage_volume(vid)
        if sv is not None and sv.vg_name and vol.vg and (sv.vg_name, sv.lv_name) != (vol.vg, vol.lv):
            disk.warnings.append(
                f"{vid}: the SC database names it {sv.vg_name}/{sv.lv_name}, the container "
                f"holds {vol.vg}/{vol.lv}"
            )


def _image_id(value: str | None) -> str | None:
    """An EKI/ERI id, or None; some EC2 servers send the literal "None" for an HVM instance."""
    return None if value is None or value.strip().lower() in ("", "none", "null") else value


def _inspect_boot(plan: InstancePlan, kernel: str | None) -> None:
    """Guest inspection of the boot disk; decides whether a direct kernel boot is needed."""
    boot = plan.disks[0] if plan.disks else None
    inst = plan.instance
    if boot is None or boot.volume is None or boot.blockers and not all(b.forceable for b in boot.blockers):
        return
    try:
        from ..kvm.guest import inspect_disk
        from ..lvm.reader import ExtentReader
    except ImportError:  # pragma: no cover - guest inspection not installed
        plan.boot_verdict = "unknown: guest inspection is not available"
        return
    try:
        vol = boot.volume  # a backend's volume (RBD) has no extent map, only its block source
        readers = BlockReader(vol.block_source()) if vol.blocks_factory else ExtentReader(vol.extent_map(), vol.id)
        with readers as reader:
            rep = inspect_disk(reader, boot.volume_id)
    except Euca2kvmError as e:
        plan.boot_verdict = f"unknown: inspection failed: {e}"
        return
    plan.boot_verdict = rep.verdict
    plan.boot_has_table = rep.table is not None
    kernel_id, ramdisk_id = _image_id(inst.kernel_id), _image_id(inst.ramdisk_id)
    ek = f"kernel {kernel_id}" + (f" and ramdisk {ramdisk_id}" if ramdisk_id else "")
    if kernel_id and rep.bootable == "no":
        plan.needs_kernel = True
        if kernel is None:
            plan.blockers.append(
                Blocker(
                    "no-boot-loader",
                    f"{inst.id} was started with a separate {ek} (EKI/ERI) and its boot volume "
                    f"{boot.volume_id} has no boot loader ({rep.reason}): a domain booting from the disk "
                    "would not start. Give the kernel and ramdisk files with --kernel FILE --ramdisk FILE "
                    "(e.g. from the EKI/ERI or the guest's /boot) to get a direct-kernel-boot domain",
                )
            )
    elif rep.bootable != "yes":
        if kernel_id and kernel is None:
            plan.warnings.append(
                f"{inst.id} was started with {ek} and guest inspection cannot tell whether its "
                f"boot volume boots by itself ({rep.verdict}); consider --kernel/--ramdisk"
            )
        elif not kernel_id:
            plan.warnings.append(f"boot volume {boot.volume_id}: {rep.verdict}")


def plan_instance(
    inst: Instance,
    inv: Inventory,
    d: Discovery,
    outdir: Path,
    fmt: OutputFormat,
    host: HostState,
    sources: list[str],
    kernel: str | None = None,
) -> InstancePlan:
    plan = InstancePlan(inst)
    vt = inst.vm_type
    if vt is not None and vt.cpus:
        plan.vcpus = vt.cpus
    if vt is not None and vt.memory_mib:
        plan.memory_mib = vt.memory_mib
    if vt is None or not vt.cpus or not vt.memory_mib:
        plan.warnings.append(
            f"{inst.id}: VM type {vt.name if vt else '(unknown)'} without CPU/memory figures; "
            f"the domain gets {plan.vcpus} vCPU and {plan.memory_mib} MiB"
        )
    ordered: list[Attachment] = inv.ordered_volumes(inst)
    if not ordered:
        plan.blockers.append(
            Blocker(
                "no-volumes",
                f"{inst.id} has no EBS volume in the inventory (an instance-store instance, or terminated)",
            )
        )
    used: set[str] = set()
    for i, att in enumerate(ordered):
        dev = short_device(att.device) or f"disk{i}"
        # The disk's id, as it is; output_path escapes it once (injectively, so distinct ids are
        # distinct files). Two attachments on one device name get the volume id, then the index.
        name = f"{inst.id}-{dev}"
        if name in used:
            name = f"{inst.id}-{dev}-{att.volume_id}"
        if name in used:
            name = f"{inst.id}-{dev}-{att.volume_id}-{i}"
        used.add(name)
        disk = PlannedDisk(
            volume_id=att.volume_id,
            device=att.device,
            attachment=att.kind,
            is_root=i == 0 and (att.is_root or att.kind == "boot"),
            name=name,
            output=manifest.output_path(outdir, name, fmt.ext),
            target_dev=target_dev(i),
        )
        check_volume(disk, d, inv, host, fmt, sources)
        plan.disks.append(disk)
    for ev in instance_evidence(inst):
        plan.blockers.append(Blocker("in-use", ev.what))
    if plan.disks and not plan.disks[0].is_root:
        plan.warnings.append(
            f"{inst.id}: no volume is recorded as the root device ({inst.root_device}); "
            f"{plan.disks[0].volume_id} is used as the first disk"
        )
    _inspect_boot(plan, kernel)
    return plan


def default_cmdline(plan: InstancePlan) -> str:
    """``root=`` the boot disk as the domain attaches it (vda on virtio, sda on scsi/sata, hda on ide)."""
    dev = plan.disks[0].target_dev if plan.disks and plan.disks[0].target_dev else "vda"
    root = f"/dev/{dev}1" if plan.boot_has_table else f"/dev/{dev}"
    return f"root={root} {DEFAULT_CMDLINE}"
