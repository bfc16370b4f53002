# SPDX-License-Identifier: Apache-2.0
"""A parsed libvirt domain (:mod:`euca2kvm.kvm.domainxml`) as a ``qemu-system-x86_64`` command line.

Every writable disk goes behind a throwaway qcow2 overlay in the caller's private directory: the image is the
overlay's read-only backing node, named in the ``-blockdev`` JSON (so QEMU parses no file name and follows no
backing file named inside an image), and is never written. CD-ROMs (the NoCloud seed) and ``<readonly/>``
disks are attached read-only as they are. Disk buses, NIC models, MACs, disk serials, vCPUs, memory and the
direct-kernel-boot triple come from the domain; the first NIC gets user-mode networking with
``restrict=on`` whose only opening is ``hostfwd=tcp:127.0.0.1:PORT-:22``, the others none at all.
"""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path
from typing import Any

from euca2kvm.errors import FormatError, UsageError
from euca2kvm.export import qemu_img
from euca2kvm.kvm.domainxml import DiskSpec, DomainSpec

SSH_PORT = 22  # the guest's sshd
# libvirt bus / model -> QEMU device
DEVICE_BY_BUS = {"virtio": "virtio-blk-pci", "ide": "ide-hd", "sata": "ide-hd", "scsi": "scsi-hd"}
CDROM_BY_BUS = {"ide": "ide-cd", "sata": "ide-cd", "scsi": "scsi-cd"}
NIC_DEVICE = {"virtio": "virtio-net-pci", "e1000": "e1000", "e1000e": "e1000e", "rtl8139": "rtl8139"}
# The pc machine's IDE has two channels of two units; QEMU's AHCI controller six ports.
IDE_SLOTS = 4
SATA_SLOTS = 6
SCSI_SLOTS = 16
# QEMU refuses an IDE/SATA drive serial longer than ATA's 20-character field.
ATA_SERIAL_MAX = 20


def _slot(target: str) -> int:
    """0 for hda/sda/vda, 1 for ...b, 26 for ...aa."""
    letters = re.sub(r"^(xvd|vd|sd|hd)", "", target)
    n = 0
    for ch in letters:
        n = n * 26 + (ord(ch) - ord("a") + 1)
    return n - 1


def _check_image(disk: DiskSpec) -> int:
    """Validate a disk file; its virtual size. Symlinks and backing chains are refused."""
    try:
        st = os.lstat(disk.path)
    except OSError as e:
        raise UsageError(f"disk {disk.target}: {disk.path}: {e.strerror}") from e
    if not (st.st_mode & 0o170000) == 0o100000:
        raise UsageError(f"disk {disk.target}: {disk.path} is not a regular file (symlinks are not followed)")
    info = qemu_img.info(str(disk.path))
    found = info.get("format")
    if found != disk.format:
        raise FormatError(f"the domain declares {disk.format} for {disk.target} but the file is {found}",
                          str(disk.path))
    if info.get("backing-filename") or info.get("full-backing-filename"):
        raise FormatError("images with a backing file are not booted (the chain could name any host file)",
                          str(disk.path))
    size = info.get("virtual-size")
    if not isinstance(size, int) or size <= 0:
        raise FormatError(f"qemu-img reports no virtual size ({size!r})", str(disk.path))
    return size


def _image_node(disk: DiskSpec) -> dict[str, Any]:
    node: dict[str, Any] = {"driver": disk.format, "read-only": True,
                            "file": {"driver": "file", "filename": str(disk.path), "read-only": True}}
    if disk.format == "qcow2":
        node["backing"] = None  # never follow a backing file named inside the image
    return node


def qemu_args(spec: DomainSpec, accel: str, workdir: Path, serial: Path, port: int) -> list[str]:
    """The QEMU arguments for ``spec``; creates the overlays in ``workdir``."""
    if not spec.nics:
        raise UsageError(f"{spec.source}: the domain has no network interface, so nothing can log in over SSH")
    args = ["-accel", accel, "-machine", "pc", "-cpu", "host" if accel == "kvm" else "max",
            "-smp", str(spec.vcpus), "-m", str(spec.memory_mib), "-nodefaults", "-display", "none",
            "-monitor", "none", "-serial", f"file:{serial}"]
    if spec.kernel is not None:
        for what, p in (("kernel", spec.kernel), ("initrd", spec.initrd)):
            if p is not None and not p.is_file():
                raise UsageError(f"{what} {p} is not a file")
        args += ["-kernel", str(spec.kernel)]
        if spec.initrd is not None:
            args += ["-initrd", str(spec.initrd)]
        if spec.cmdline is not None:
            args += ["-append", spec.cmdline]
    controllers: set[str] = set()
    has_order = any(d.boot_order is not None for d in spec.disks)
    first_disk = next(d for d in spec.disks if d.device == "disk")
    for i, disk in enumerate(spec.disks):
        node = f"d{i}"
        size = _check_image(disk)
        if disk.readonly:
            blockdev = {**_image_node(disk), "node-name": node}
        else:
            overlay = workdir / f"overlay{i}.qcow2"
            qemu_img.create(str(overlay), "qcow2", size)
            blockdev = {"driver": "qcow2", "node-name": node,
                        "file": {"driver": "file", "filename": str(overlay)}, "backing": _image_node(disk)}
        args += ["-blockdev", json.dumps(blockdev)]
        slot = _slot(disk.target)
        table = CDROM_BY_BUS if disk.device == "cdrom" else DEVICE_BY_BUS
        dev = f"{table[disk.bus]},drive={node}"
        if disk.bus == "ide":
            if slot >= IDE_SLOTS:
                raise FormatError(f"IDE disk {disk.target}: the pc machine has {IDE_SLOTS} IDE slots",
                                  str(spec.source))
            dev += f",bus=ide.{slot // 2},unit={slot % 2}"
        elif disk.bus == "sata":
            if slot >= SATA_SLOTS:
                raise FormatError(f"SATA disk {disk.target}: one AHCI controller has {SATA_SLOTS} ports",
                                  str(spec.source))
            if "ahci" not in controllers:
                args += ["-device", "ahci,id=ahci0"]
                controllers.add("ahci")
            dev += f",bus=ahci0.{slot}"
        elif disk.bus == "scsi":
            if slot >= SCSI_SLOTS:
                raise FormatError(f"SCSI disk {disk.target}: at most {SCSI_SLOTS} targets", str(spec.source))
            if "scsi" not in controllers:
                args += ["-device", "virtio-scsi-pci,id=scsi0"]
                controllers.add("scsi")
            dev += f",bus=scsi0.0,channel=0,scsi-id={slot},lun=0"
        if disk.serial and (disk.bus in ("virtio", "scsi") or len(disk.serial) <= ATA_SERIAL_MAX):
            dev += f",serial={disk.serial}"
        if has_order and disk.boot_order is not None:
            dev += f",bootindex={disk.boot_order}"
        elif not has_order and disk is first_disk:
            dev += ",bootindex=1"
        args += ["-device", dev]
    for i, nic in enumerate(spec.nics):
        netdev = f"user,id=n{i},restrict=on"
        if i == 0:
            netdev += f",hostfwd=tcp:127.0.0.1:{port}-:{SSH_PORT}"
        args += ["-netdev", netdev, "-device", f"{NIC_DEVICE[nic.model]},netdev=n{i}"
                 + (f",mac={nic.mac}" if nic.mac else "")]
    if spec.rng:
        args += ["-device", "virtio-rng-pci"]
    return args


def free_port() -> int:
    """A TCP port on 127.0.0.1 the kernel just handed out as free (QEMU binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
