# SPDX-License-Identifier: Apache-2.0
"""The virtual hardware a Eucalyptus 4.x node controller (NC) gives a KVM instance, and why.

The NC renders its libvirt domain with ``tools/libvirt.xsl`` (eucalyptus/eucalyptus, maint-4.4; the rng
and SMBIOS parts came later, in commits c941e5e0 and e43a363d). For KVM and an EBS root it gives:

* each EBS disk (the root too: ``storage/vbr.c`` iqn_creator, ``node/xml.c`` gen_volume_xml) bus virtio
  with the device name's ``sd`` renamed ``vd`` when the NC's ``eucalyptus.conf`` sets USE_VIRTIO_DISK
  (the root: USE_VIRTIO_ROOT; Windows guests: always virtio), else the device name on bus ``scsi``;
  ``<serial>`` ``<volId>-dev-<devName>``, ``<driver name='qemu' cache='none'/>``;
* the NIC with the instance's MAC, model virtio when USE_VIRTIO_NET (Windows: always), else e1000, at PCI
  address 00:02.0 ("ensuring that primary nic is eth0"; on systemd guests it is what names it ens2);
* ``<boot dev='hd'/>``, ``<vcpu>N`` with topology 1 socket x N cores x 1 thread, memory from the VM
  type, ``<rng model='virtio'>`` from /dev/urandom, ``<clock offset='localtime'/>``;
* SMBIOS serial and uuid starting ``ec2``, deliberately NOT reproduced: it makes cloud-init's
  ds-identify look for the EC2 metadata service, which a plain KVM host does not have.

Defaults: the NC reads the three flags with ``GET_VAR_INT(..., 0)`` (``node/handlers.c``): a key that
is missing from the file means 0. The ``tools/eucalyptus.conf`` every NC package installs sets all three
to "1", so without ``--nc-config`` an NC is assumed to have run with the packaged file: virtio everywhere.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
from dataclasses import dataclass, field
from typing import Any

from ..errors import FormatError, IOFailure, UsageError

KEYS = ("USE_VIRTIO_ROOT", "USE_VIRTIO_DISK", "USE_VIRTIO_NET")
# The packaged eucalyptus.conf is ~12 KiB; a file far larger is not an NC configuration (bounded read).
MAX_CONF_BYTES = 1 << 20
PACKAGED = "Eucalyptus default: tools/eucalyptus.conf sets {key}=\"1\""
DISK_BUSES = ("virtio", "scsi", "ide", "sata")
NIC_MODELS = ("virtio", "e1000", "rtl8139")
PREFIX = {"virtio": "vd", "scsi": "sd", "sata": "sd", "ide": "hd"}
IDE_UNITS = "abcd"  # two IDE channels x master/slave on the pc machine
NIC_PCI_SLOT = 2  # libvirt.xsl's <address type='pci' ... slot='0x02'/> for the instance's device 0 NIC
ATA_SERIAL_MAX = 20  # the ATA IDENTIFY serial field (IDE and SATA); virtio and SCSI carry longer ones
_ASSIGN = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
_ATOI = re.compile(r"^\s*([+-]?[0-9]+)")
_DEVICE = re.compile(r"^(?:/dev/)?(?:xvd|vd|sd|hd)([a-z]{1,3})[0-9]*$")


@dataclass(frozen=True)
class NcConfig:
    """The three virtio flags and, for each, where its value came from."""

    values: dict[str, bool]
    origins: dict[str, str]

    def why(self, key: str) -> str:
        return self.origins[key]


DEFAULT = NcConfig(values=dict.fromkeys(KEYS, True), origins={k: PACKAGED.format(key=k) for k in KEYS})


def _atoi(text: str) -> int:
    """C ``atoi``: the leading integer, 0 when there is none (what the NC does with the value)."""
    m = _ATOI.match(text)
    return int(m.group(1)) if m else 0


def parse_nc_config(text: str, path: str) -> NcConfig:
    """The virtio flags from the text of an NC's eucalyptus.conf (shell ``KEY="value"`` lines, never run)."""
    values = dict.fromkeys(KEYS, False)
    origins = {k: f"{k} not set in {path}: the NC reads it as 0" for k in KEYS}
    offset = 0
    for lineno, line in enumerate(text.splitlines(keepends=True), 1):
        start, offset = offset, offset + len(line.encode("utf-8", "surrogateescape"))
        m = _ASSIGN.match(line)
        if m is None or m.group(1) not in KEYS:
            continue
        key = m.group(1)
        try:
            words = shlex.split(m.group(2), comments=True, posix=True)
        except ValueError as e:
            raise FormatError(f"line {lineno} (byte {start}): {key}: {e}", path=path) from None
        raw = words[0] if words else ""
        values[key] = _atoi(raw) != 0
        origins[key] = f"{key}={shlex.quote(raw)} in {path} line {lineno}"
    return NcConfig(values, origins)


def read_nc_config(path: str) -> NcConfig:
    """Read an NC's eucalyptus.conf: a regular file, not followed through a symlink, bounded."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NOCTTY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except OSError as e:
        raise IOFailure(f"cannot read {path}: {e.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UsageError(f"{path}: not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_CONF_BYTES + 1)
    except OSError as e:
        raise IOFailure(f"cannot read {path}: {e.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_CONF_BYTES:
        raise FormatError(f"larger than {MAX_CONF_BYTES} bytes; not an NC eucalyptus.conf", path=path)
    nul = data.find(b"\0")
    if nul >= 0:
        raise FormatError(f"byte {nul}: NUL byte; not a text file", path=path)
    return parse_nc_config(data.decode("utf-8", "surrogateescape"), path)


@dataclass(frozen=True)
class DiskChoice:
    bus: str
    target_dev: str
    serial: str | None
    reason: str


@dataclass
class Hardware:
    """The chosen disks (in the given order), the seed cdrom's target, the NIC, each with its reason."""

    disks: list[DiskChoice]
    nic_model: str
    nic_reason: str
    mac: str | None
    mac_reason: str
    nic_pci_slot: int = NIC_PCI_SLOT
    cdrom_bus: str = "ide"
    cdrom_dev: str = "hdc"
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "disks": [{"target_dev": d.target_dev, "bus": d.bus, "serial": d.serial, "reason": d.reason}
                      for d in self.disks],
            "nic_model": self.nic_model, "nic_reason": self.nic_reason, "nic_pci_slot": self.nic_pci_slot,
            "mac": self.mac,
            "mac_reason": self.mac_reason, "cdrom": {"bus": self.cdrom_bus, "target_dev": self.cdrom_dev},
            "notes": self.notes,
        }

    def lines(self) -> list[str]:
        out = [f"disk {d.target_dev}: bus {d.bus} ({d.reason})" for d in self.disks]
        out.append(f"nic {self.nic_model} at PCI 00:{self.nic_pci_slot:02x}.0 ({self.nic_reason})")
        out.append(f"MAC {self.mac} ({self.mac_reason})" if self.mac else f"MAC: {self.mac_reason}")
        return out + self.notes


def _letters(index: int) -> str:
    letters, n = "", index + 1
    while n:
        n, r = divmod(n - 1, 26)
        letters = chr(ord("a") + r) + letters
    return letters


def _short(device: str | None) -> str | None:
    return device[5:] if device and device.startswith("/dev/") else device


def choose_hardware(
    disks: list[tuple[str, str | None]],
    platform: str | None,
    nc: NcConfig,
    nc_given: bool,
    disk_bus: str | None = None,
    nic_model: str | None = None,
    mac: str | None = None,
    mac_origin: str = "database",
) -> Hardware:
    """Bus, target device and serial per ``(volume_id, device)`` (boot disk first), NIC model, MAC.

    ``disk_bus``/``nic_model`` (the command-line overrides) win over the NC's flags; ``nc_given``
    says whether ``nc`` came from a file (for the reasons only).
    """
    if disk_bus is not None and disk_bus not in DISK_BUSES:
        raise UsageError(f"--disk-bus must be one of {', '.join(DISK_BUSES)}")
    if nic_model is not None and nic_model not in NIC_MODELS:
        raise UsageError(f"--nic-model must be one of {', '.join(NIC_MODELS)}")
    windows = (platform or "").lower() == "windows"
    used: set[str] = set()
    chosen: list[DiskChoice] = []
    for i, (volume_id, device) in enumerate(disks):
        key = "USE_VIRTIO_ROOT" if i == 0 else "USE_VIRTIO_DISK"
        if disk_bus is not None:
            bus, reason = disk_bus, "--disk-bus"
        elif windows:
            bus, reason = "virtio", "Windows guests always get virtio on KVM"
        elif nc.values[key]:
            bus, reason = "virtio", nc.why(key)
        else:
            bus, reason = "scsi", nc.why(key)
        prefix = PREFIX[bus]
        m = _DEVICE.match(device or "")
        target = f"{prefix}{m.group(1)}" if m else None  # sd->vd renaming, as libvirt.xsl does
        if target is None or target in used or bus == "ide" and target[2:] not in IDE_UNITS:
            free = [f"{prefix}{_letters(n)}" for n in range(26 * 27) if f"{prefix}{_letters(n)}" not in used]
            target = free[0]
            if bus == "ide" and target[2:] not in IDE_UNITS:
                raise UsageError(f"{len(disks)} disks do not fit on IDE (at most {len(IDE_UNITS)}); "
                                 "choose another --disk-bus")
            if device:
                reason += f"; {device} renamed {target}"
        used.add(target)
        serial: str | None = f"{volume_id}-dev-{_short(device) or target}"  # what the NC sets
        if bus in ("ide", "sata") and serial is not None and len(serial) > ATA_SERIAL_MAX:
            serial = None
            reason += f"; no serial (more than {ATA_SERIAL_MAX} characters for ATA)"
        chosen.append(DiskChoice(bus, target, serial, reason))
    if nic_model is not None:
        model, nic_reason = nic_model, "--nic-model"
    elif windows:
        model, nic_reason = "virtio", "Windows guests always get virtio on KVM"
    elif nc.values["USE_VIRTIO_NET"]:
        model, nic_reason = "virtio", nc.why("USE_VIRTIO_NET")
    else:
        model, nic_reason = "e1000", nc.why("USE_VIRTIO_NET")
    hw = Hardware(disks=chosen, nic_model=model, nic_reason=nic_reason, mac=mac,
                  mac_reason=mac_origin if mac else "none recorded: libvirt picks one, and a guest "
                  "pinned to its old MAC comes up without network")
    free_ide = [f"hd{u}" for u in IDE_UNITS if f"hd{u}" not in used]
    if free_ide:
        hw.cdrom_bus, hw.cdrom_dev = "ide", ("hdc" if "hdc" in free_ide else free_ide[0])
    else:
        hw.cdrom_bus = "sata"
        hw.cdrom_dev = next(f"sd{_letters(n)}" for n in range(26 * 27) if f"sd{_letters(n)}" not in used)
    if not nc_given and disk_bus is None:
        hw.notes.append("no --nc-config: assuming the NC ran with the packaged eucalyptus.conf")
    return hw
