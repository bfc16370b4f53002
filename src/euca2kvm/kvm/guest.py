# SPDX-License-Identifier: Apache-2.0
"""Inspect a guest disk: partition table, content of each partition, boot loader, and a verdict.

``inspect_disk(reader, name)`` reads only small bounded structures through ``reader.pread`` and
never writes. Any input, however corrupt, yields a :class:`GuestReport` (with notes about what
was wrong) or a project error from the reader itself (I/O failure, an external tool failing).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import Euca2kvmError, FormatError, IOFailure
from ..lvm.device import Device
from ..lvm.scan import scan
from ..units import human
from .bootloader import BootCode, boot_sector, grub_core, mbr_code, uefi_loader
from .filesystems import Content, probe, probe_iso
from .imagefile import Reader, Window, open_image, read_at
from .partitions import (
    GPT_BIOS_BOOT,
    GPT_EFI_SYSTEM,
    GPT_PROTECTIVE,
    MBR_EFI_TYPE,
    SECTOR,
    Partition,
    PartitionTable,
    mbr_looks_valid,
    read_gpt,
    read_mbr,
)

__all__ = ["GuestReport", "PartitionReport", "inspect_disk", "open_image"]

# A disk whose first MiB is all zero is reported as blank (every partition table, boot sector and
# superblock the inspector knows lives inside it).
BLANK_PROBE = 1 << 20


@dataclass
class PartitionReport:
    partition: Partition
    content: Content | None = None  # None for the extended container
    boot: BootCode | None = None  # the partition's boot sector / UEFI loader


@dataclass
class GuestReport:
    name: str
    size: int
    table: PartitionTable | None = None
    partitions: list[PartitionReport] = field(default_factory=list)
    whole_disk: Content | None = None  # content of an unpartitioned disk
    boot: list[BootCode] = field(default_factory=list)
    bootable: str = "unknown"  # yes / no / unknown
    reason: str = ""
    notes: list[str] = field(default_factory=list)
    # The guest's own configuration and what a domain would not give it (guestfiles.attach_config).
    config: dict[str, Any] | None = None

    @property
    def verdict(self) -> str:
        return f"{self.bootable}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["verdict"] = self.verdict
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str)

    def lines(self) -> list[str]:
        out = [f"{self.name}: {human(self.size)} ({self.size} bytes)"]
        t = self.table
        if t is None:
            out.append("partition table: none")
        else:
            extra = f", {t.header} header, protective MBR {t.protective_mbr}" if t.kind == "gpt" else ""
            out.append(f"partition table: {t.kind.upper()} id {t.id}, {t.sector_size}-byte sectors{extra}")
            out += [f"  note: {n}" for n in t.notes]
        for pr in self.partitions:
            p = pr.partition
            flags = " bootable" if p.bootable else ""
            name = f" name={p.name!r}" if p.name else ""
            out.append(f"  {p.index:>3}: start {p.start} size {p.size} ({human(p.size)}) type {p.type} "
                       f"({p.type_name}){flags}{name}")
            if pr.content is not None:
                out.append("       " + _content_line(pr.content))
                out += ["       " + ln for ln in _lvm_lines(pr.content.lvm)]
            if pr.boot is not None and pr.boot.loader != "none":
                out.append(f"       boot: {pr.boot.loader} ({pr.boot.detail})")
            out += [f"       note: {n}" for n in p.notes + (pr.content.notes if pr.content else [])]
        if self.whole_disk is not None:
            out.append("whole disk: " + _content_line(self.whole_disk))
            out += [f"  note: {n}" for n in self.whole_disk.notes]
        for b in self.boot:
            out.append(f"boot code at {b.where}: {b.loader} ({b.detail})")
        out += [f"note: {n}" for n in self.notes]
        if self.config is not None:
            out += _config_lines(self.config)
        out.append(f"bootable: {self.verdict}")
        return out

    def render(self) -> str:
        return "\n".join(self.lines()) + "\n"


def _config_lines(cfg: dict[str, Any]) -> list[str]:
    """The guest configuration section (see guestfiles.attach_config); its strings are escaped already."""
    read = ", ".join(f"{s['where']} {s['fstype']} on {s['mount']}" for s in cfg["sources"] if s["mount"])
    out = [f"guest config (read-only, from {read or 'no filesystem'}; checked against a {cfg['disk_bus']} disk "
           f"and {'NIC MAC ' + cfg['mac'] if cfg['mac'] else 'an unknown NIC MAC'}):"]
    out += ["  " + ln for ln in cfg["summary"]]
    out += ["  warning: " + (f"{w['file']}:{w['line']}: " if w["line"] else f"{w['file']}: " if w["file"] else "")
            + w["message"] for w in cfg["warnings"]]
    out += [f"  note: {n}" for n in cfg["notes"]]
    return out


def _lvm_lines(lvm: object) -> list[str]:
    if not isinstance(lvm, dict):
        return []
    out = []
    for vg in lvm.get("vgs", []):
        missing = f", PVs not on this partition: {', '.join(vg['pvs_missing'])}" if vg["pvs_missing"] else ""
        out.append(f"guest VG {vg['name']} (seqno {vg['seqno']}, {vg['pvs']} PV{'s' if vg['pvs'] != 1 else ''}"
                   f"{missing})")
        for lv in vg["lvs"]:
            state = f"  [cannot be read: {lv['problem']}]" if lv["problem"] else ""
            out.append(f"  LV {lv['name']} {human(lv['size'])} {','.join(lv['segment_types'])}{state}")
    if lvm.get("orphan"):
        out.append("LVM PV without VG metadata (an orphan PV, or a VG kept only on other PVs)")
    out += [f"LVM error: {e}" for e in lvm.get("errors", [])]
    return out


def _content_line(c: Content) -> str:
    parts = [c.type]
    if c.version:
        parts.append(f"version {c.version}")
    if c.label:
        parts.append(f"label {c.label!r}")
    if c.uuid:
        parts.append(f"uuid {c.uuid}")
    if c.size is not None:
        parts.append(f"size {human(c.size)}")
    if c.needs_recovery is not None:
        parts.append("needs journal recovery" if c.needs_recovery else "journal clean")
    return ", ".join(parts)


def _guest_lvm(reader: Reader, offset: int, size: int) -> dict[str, Any] | None:
    """The guest's own LVM (VGs and LVs) on the PV at ``offset``/``size`` of the disk, read with the
    project's LVM reader through ``reader`` (CentOS-style guests keep their root on an LV).

    A guest VG may span PVs on other partitions or disks; LVs needing those are reported as such.
    """
    dev = Device(f"guest partition at {offset}", offset, size, reader=reader.pread)
    res = scan([dev])
    vgs = []
    for g in res.vgs:
        lvs = []
        for lv in g.visible_lvs():
            problem = None
            try:
                g.lv_map(lv)
            except Euca2kvmError as e:
                problem = str(e)
            lvs.append({"name": lv.name, "size": g.vg.lv_size(lv), "segment_types": lv.segment_types,
                        "problem": problem})
        vgs.append({"name": g.name, "id": g.vg.id, "seqno": g.vg.seqno, "pvs": len(g.vg.pvs),
                    "pvs_missing": sorted(g.missing), "lvs": lvs})
    errors = [str(e) for e in res.errors.values()]
    # A PV with no VG metadata anywhere on it (pvcreate only, or its VG's metadata lives on other PVs)
    orphan = bool(res.orphans)
    return {"vgs": vgs, "orphan": orphan, "warnings": res.warnings, "errors": errors}


def _probe(reader: Reader, offset: int, size: int, where: str, notes: list[str]) -> Content:
    """Content at a byte range; reader failures on one partition become notes, not a failed report."""
    try:
        c = probe(Window(reader, offset, size))
        if c.type == "LVM2_member":
            c.lvm = _guest_lvm(reader, offset, size)
        return c
    except (FormatError, IOFailure) as e:
        notes.append(f"{where}: cannot read content: {e}")
        return Content("unreadable")


def inspect_disk(reader: Reader, name: str) -> GuestReport:
    """Inspect the disk readable through ``reader`` (``.size``, ``.pread``); see the module docstring."""
    rep = GuestReport(name=name, size=reader.size)
    sector0 = read_at(reader, 0, SECTOR)
    if sector0 is None:
        rep.bootable, rep.reason = "no", f"disk is smaller than one {SECTOR}-byte sector"
        return rep
    gpt, gpt_problems = read_gpt(reader, sector0)
    rep.notes += gpt_problems
    whole = Window(reader, 0, reader.size)
    if gpt is not None:
        rep.table = gpt
    elif mbr_looks_valid(sector0) and not _is_volume_boot_sector(whole):
        rep.table = read_mbr(reader, sector0)
        if any(p.type == f"0x{GPT_PROTECTIVE:02x}" for p in rep.table.partitions):
            rep.table.notes.append("protective (0xEE) partition but no valid GPT header")
    for p in rep.table.partitions if rep.table else []:
        pr = PartitionReport(p)
        rep.partitions.append(pr)
        if p.extended:
            continue
        w = Window(reader, p.start, p.size)
        if w.size == 0:
            p.notes.append("starts beyond the end of the disk; not probed")
            continue
        pr.content = _probe(reader, p.start, p.size, f"partition {p.index}", rep.notes)
        if _is_esp(p) or (pr.content.type == "vfat" and rep.table and rep.table.kind == "mbr"
                          and p.type == f"0x{MBR_EFI_TYPE:02x}"):
            pr.boot = uefi_loader(w, f"partition {p.index}")
        if pr.boot is None or pr.boot.loader == "none" and p.bootable:
            pr.boot = boot_sector(w, f"partition {p.index}")
    if rep.table is None:
        rep.whole_disk = _probe(reader, 0, reader.size, "disk", rep.notes)
    else:
        # Hybrid ISOs (isohybrid, grub-mkrescue) carry both an MBR and an ISO 9660 at the disk start.
        iso = probe_iso(whole)
        if iso is not None:
            iso.notes.append("hybrid: ISO 9660 across the whole disk as well as the partition table")
            rep.whole_disk = iso
    _boot_code(reader, sector0, rep)
    rep.bootable, rep.reason = _verdict(reader, sector0, rep)
    return rep


def _is_volume_boot_sector(w: Window) -> bool:
    """A filesystem boot sector at LBA 0 (a "superfloppy" FAT/NTFS) also ends in 55AA: not an MBR."""
    c = probe(w)
    return c.type in ("vfat", "ntfs")


def _is_esp(p: Partition) -> bool:
    return p.type == GPT_EFI_SYSTEM


def _boot_code(reader: Reader, sector0: bytes, rep: GuestReport) -> None:
    if rep.table is None:
        rep.boot.append(boot_sector(Window(reader, 0, reader.size), "disk sector 0"))
        if rep.whole_disk is not None and rep.whole_disk.type == "vfat":
            uefi = uefi_loader(Window(reader, 0, reader.size), "disk")
            if uefi is not None and uefi.loader != "none":
                rep.boot.append(uefi)
        return
    rep.boot.append(mbr_code(sector0))
    core = grub_core(reader, sector0)
    if core is not None:
        rep.boot.append(core)


def _verdict(reader: Reader, sector0: bytes, rep: GuestReport) -> tuple[str, str]:
    uefi = [pr for pr in rep.partitions if pr.boot is not None and pr.boot.loader == "UEFI"]
    uefi_why = (f"EFI System Partition {uefi[0].partition.index} holds {uefi[0].boot.detail} "
                "(needs UEFI firmware)") if uefi and uefi[0].boot else ""
    if rep.table is None:
        return _verdict_unpartitioned(reader, sector0, rep)
    mbr = rep.boot[0]
    core = rep.boot[1] if len(rep.boot) > 1 else None
    kind = "MBR" if rep.table.kind == "mbr" else "GPT protective MBR"
    bios: tuple[str, str]
    if mbr.loader == "GRUB":
        if core is not None and core.loader == "GRUB core.img":
            bios = ("yes", f"{kind} with GRUB boot.img, core.img at {core.where}")
        else:
            why = core.detail if core else "no sector"
            bios = ("unknown", f"{kind} with GRUB boot.img but core.img not found ({why})")
        if rep.table.kind == "gpt" and not any(pr.partition.type == GPT_BIOS_BOOT for pr in rep.partitions):
            bios = (bios[0], bios[1] + "; no BIOS boot partition")
    elif mbr.loader in ("ISOLINUX", "Memtest86+"):
        bios = ("yes", f"{kind} with {mbr.detail}")
    elif mbr.loader in ("SYSLINUX", "Windows"):
        bios = _verdict_chainload(rep, f"{kind} with {mbr.loader} boot code")
    elif mbr.loader == "none":
        bios = ("no", f"{kind} boot code area (bytes 0-439) is empty")
    else:
        bios = ("unknown", f"{kind} boot code not recognised")
    if bios[0] == "yes":
        return bios[0], bios[1] + (f"; also {uefi_why}" if uefi_why else "")
    if uefi_why:
        return "yes", f"{uefi_why}; BIOS: {bios[0]}, {bios[1]}"
    if rep.table.kind == "gpt" and bios[0] != "yes":
        esp = [pr for pr in rep.partitions if _is_esp(pr.partition)]
        if esp:
            c = esp[0].content
            detail = (esp[0].boot.detail if esp[0].boot else "") if c is not None and c.type == "vfat" else \
                f"its content is {c.type if c else 'unreadable'}, not FAT"
            return "unknown", (f"GPT EFI System Partition without a default UEFI loader ({detail}); "
                               f"BIOS: {bios[1]}")
        if bios[0] == "no" or bios[0] == "unknown" and not any(
                pr.partition.type == GPT_BIOS_BOOT for pr in rep.partitions):
            return "unknown", f"GPT without an EFI System Partition or BIOS boot partition ({bios[1]})"
    return bios


def _verdict_chainload(rep: GuestReport, what: str) -> tuple[str, str]:
    """MBR code that jumps to the active partition's boot sector (SYSLINUX mbr.bin, Windows)."""
    active = [pr for pr in rep.partitions if pr.partition.bootable and not pr.partition.extended]
    if not active:
        return "no", f"{what} but no active partition"
    pr = active[0]
    fs = f" {pr.content.version or pr.content.type}" if pr.content and pr.content.type != "unknown" else ""
    desc = f"active{fs} partition {pr.partition.index}"
    if pr.boot is None or pr.boot.loader == "none":
        return "no", f"{what}, {desc} has no boot code ({pr.boot.detail if pr.boot else 'unreadable'})"
    if pr.boot.loader == "unknown":
        return "unknown", f"{what}, {desc} boot sector code not recognised"
    return "yes", f"{what}, {desc} with {pr.boot.detail}"


def _verdict_unpartitioned(reader: Reader, sector0: bytes, rep: GuestReport) -> tuple[str, str]:
    c = rep.whole_disk
    what = f"whole-disk {c.version or c.type}" if c is not None and c.type != "unknown" else ""
    bs = rep.boot[0]
    uefi = next((b for b in rep.boot if b.loader == "UEFI"), None)
    if bs.loader in ("SYSLINUX", "GRUB", "Windows", "ISOLINUX"):
        return "yes", f"no partition table; {what or 'disk'} boot sector with {bs.detail}"
    if uefi is not None:
        return "yes", f"no partition table; {what} holds {uefi.detail} (needs UEFI firmware)"
    if bs.loader == "unknown":
        return "unknown", f"no partition table; {what or 'disk'} boot sector code not recognised"
    if not what:
        head = read_at(reader, 0, min(BLANK_PROBE, reader.size))
        if head is not None and head == bytes(len(head)):
            return "no", "disk is blank (the first MiB is zero)"
    why = "no partition table and no boot sector signature 55AA"
    if sector0[510:512] == b"\x55\xaa" and bs.loader == "none":
        why = f"no partition table; boot sector has no boot code ({bs.detail})"
    if c is not None and c.type == "iso9660" and "El Torito boot record" in c.notes:
        return "no", f"{why} (an El Torito ISO 9660 image boots only as a CD-ROM)"
    if what:
        return "no", f"{why} ({what}; boots only with an external kernel)"
    return "no", why
