# SPDX-License-Identifier: Apache-2.0
"""Read a libvirt domain XML (what ``export-instance`` and ``euca2kvm libvirt`` write) into a plain model.

The file is untrusted: it is read through one bounded ``O_NOFOLLOW`` read, any DTD, entity declaration or
entity reference other than XML's five predefined ones is refused before parsing (the stdlib expat parser
would expand internal entities: "billion laughs"), and every value taken from it is checked: memory and vCPU
ranges, MAC syntax, disk bus and format names from short allow-lists, no control characters in paths or
command lines. Only what a boot needs is kept: memory, vCPUs, the direct-kernel-boot triple, file-backed
disks and CD-ROMs in document order (target, bus, format, read-only, boot order), NICs (MAC, model) and
whether a virtio RNG is present. Errors are :class:`FormatError` naming the file.
"""

from __future__ import annotations

import os
import re
import stat
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from euca2kvm import safefs
from euca2kvm.errors import FormatError, IOFailure, UsageError

# A domain with a few dozen disks is a few KiB; 1 MiB is generous and bounds memory and parse time.
MAX_XML_BYTES = 1 << 20
# Disk image formats a boot test opens (export and export-instance write these); other drivers (vmdk
# extents, vvfat...) can reference further host files and are refused.
DISK_FORMATS = ("raw", "qcow2")
DISK_BUSES = ("virtio", "ide", "sata", "scsi")
NIC_MODELS = ("virtio", "e1000", "e1000e", "rtl8139")
MAX_DISKS = 16
MAX_NICS = 4
MEMORY_MIB_RANGE = (16, 64 * 1024)
VCPU_RANGE = (1, 64)
SERIAL = re.compile(r"^[A-Za-z0-9._-]{0,64}$")
MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
# libvirt's memory units (docs: formatdomain "Memory Allocation"); the default unit is KiB.
MEMORY_UNITS = {
    "b": 1, "bytes": 1, "k": 1 << 10, "kib": 1 << 10, "kb": 1000, "m": 1 << 20, "mib": 1 << 20, "mb": 1000**2,
    "g": 1 << 30, "gib": 1 << 30, "gb": 1000**3, "t": 1 << 40, "tib": 1 << 40, "tb": 1000**4,
}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_FORBIDDEN = re.compile(rb"<!DOCTYPE|<!ENTITY|&(?!(?:lt|gt|amp|quot|apos|#[0-9]+|#x[0-9a-fA-F]+);)", re.IGNORECASE)


@dataclass(frozen=True)
class DiskSpec:
    """One file-backed disk or CD-ROM of the domain."""

    path: Path
    format: str
    device: str  # "disk" or "cdrom"
    bus: str
    target: str
    readonly: bool
    boot_order: int | None = None
    serial: str | None = None  # the NC's <serial>volId-dev-devName</serial>: /dev/disk/by-id names in the guest


@dataclass(frozen=True)
class NicSpec:
    mac: str | None
    model: str


@dataclass
class DomainSpec:
    """What a boot test needs from a domain XML."""

    source: Path
    name: str
    memory_mib: int
    vcpus: int
    disks: list[DiskSpec] = field(default_factory=list)
    nics: list[NicSpec] = field(default_factory=list)
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str | None = None
    rng: bool = False

    @property
    def seeds(self) -> list[DiskSpec]:
        return [d for d in self.disks if d.device == "cdrom"]


def read_bounded(path: Path, limit: int = MAX_XML_BYTES) -> bytes:
    """The whole file (never through a symlink, regular files only); a file over ``limit`` bytes is a
    format error (exit 3), the size checked again while reading (:func:`euca2kvm.safefs.read_bounded`)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError as e:
        raise UsageError(f"{path} does not exist") from e
    except OSError as e:
        raise IOFailure(f"cannot read {path}: {e.strerror}") from e
    if stat.S_ISREG(st.st_mode) and st.st_size > limit:
        raise FormatError(f"file is {st.st_size} bytes, more than the {limit} allowed here", str(path))
    return safefs.read_bounded(path, limit)


def _text(value: str | None, what: str, where: str) -> str:
    if value is None or not value.strip():
        raise FormatError(f"missing {what}", where)
    value = value.strip()
    if _CONTROL.search(value):
        raise FormatError(f"{what} contains control characters: {value!r}", where)
    return value


def _path(value: str | None, what: str, where: str, base: Path) -> Path:
    p = Path(_text(value, what, where))
    return p if p.is_absolute() else base / p


def _int(value: str | None, what: str, where: str, lo: int, hi: int) -> int:
    text = _text(value, what, where)
    if not text.isdigit() or len(text) > 20:
        raise FormatError(f"{what} is not a number: {text!r}", where)
    n = int(text)
    if not lo <= n <= hi:
        raise FormatError(f"{what} {n} out of range {lo}..{hi}", where)
    return n


def _memory_mib(el: ET.Element | None, where: str) -> int:
    if el is None:
        raise FormatError("no <memory> element", where)
    unit = (el.get("unit") or "KiB").lower()
    if unit not in MEMORY_UNITS:
        raise FormatError(f"unknown memory unit {el.get('unit')!r}", where)
    raw = _int(el.text, "memory", where, 1, 1 << 50)
    mib = raw * MEMORY_UNITS[unit] // (1 << 20)
    if not MEMORY_MIB_RANGE[0] <= mib <= MEMORY_MIB_RANGE[1]:
        raise FormatError(f"memory {mib} MiB out of range {MEMORY_MIB_RANGE[0]}..{MEMORY_MIB_RANGE[1]}", where)
    return mib


def _disk(el: ET.Element, where: str, base: Path) -> DiskSpec | None:
    device = el.get("device", "disk")
    if device not in ("disk", "cdrom"):
        return None  # floppies, LUNs: nothing a boot test attaches
    if el.get("type", "file") != "file":
        raise FormatError(f"disk type {el.get('type')!r} is not supported (only file-backed disks)", where)
    source = el.find("source")
    if source is None or source.get("file") is None:
        if device == "cdrom":
            return None  # an empty CD-ROM drive
        raise FormatError("a disk without <source file=...>", where)
    target = el.find("target")
    if target is None:
        raise FormatError("a disk without <target>", where)
    dev = _text(target.get("dev"), "disk target dev", where)
    if not re.fullmatch(r"(vd|sd|hd|xvd)[a-z]{1,2}", dev):
        raise FormatError(f"invalid disk target {dev!r}", where)
    bus = target.get("bus") or {"vd": "virtio", "sd": "scsi", "hd": "ide"}.get(dev[:2], "")
    if bus not in DISK_BUSES:
        raise FormatError(f"disk {dev}: bus {bus!r} is not supported (expected one of {', '.join(DISK_BUSES)})",
                          where)
    if device == "cdrom" and bus == "virtio":
        raise FormatError(f"cdrom {dev} on the virtio bus", where)
    driver = el.find("driver")
    fmt = (driver.get("type") if driver is not None else None) or "raw"
    if fmt not in DISK_FORMATS:
        raise FormatError(f"disk {dev}: format {fmt!r} is not supported (expected one of "
                          f"{', '.join(DISK_FORMATS)})", where)
    serial = el.findtext("serial")
    if serial is not None:
        serial = serial.strip()
        if not SERIAL.match(serial):  # it goes into a QEMU -device option: no commas, nothing odd
            raise FormatError(f"disk {dev}: invalid serial {serial[:40]!r}", where)
    boot = el.find("boot")
    order = _int(boot.get("order"), f"disk {dev} boot order", where, 1, 1000) if boot is not None else None
    return DiskSpec(path=_path(source.get("file"), f"disk {dev} source file", where, base), format=fmt,
                    device=device, bus=bus, target=dev, readonly=device == "cdrom" or el.find("readonly") is not None,
                    boot_order=order, serial=serial or None)


def _nic(el: ET.Element, where: str) -> NicSpec:
    mac_el = el.find("mac")
    mac = None
    if mac_el is not None:
        mac = _text(mac_el.get("address"), "interface mac address", where).lower()
        if not MAC.match(mac):
            raise FormatError(f"invalid MAC address {mac!r}", where)
        if int(mac[:2], 16) & 1:
            raise FormatError(f"MAC address {mac} is a multicast address", where)
    model_el = el.find("model")
    model = (model_el.get("type") if model_el is not None else None) or "virtio"
    if model not in NIC_MODELS:
        raise FormatError(f"interface model {model!r} is not supported (expected one of {', '.join(NIC_MODELS)})",
                          where)
    return NicSpec(mac, model)


def parse_domain(path: Path) -> DomainSpec:
    """Parse the domain XML at ``path``; relative file names resolve against the XML's directory."""
    path = Path(path).absolute()
    where = str(path)
    data = read_bounded(path)
    bad = _FORBIDDEN.search(data)
    if bad:
        raise FormatError(f"DTDs and entity references are not accepted ({bad.group(0)[:16]!r})", where,
                          bad.start())
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        raise FormatError(f"not well-formed XML: {e}", where) from e
    if root.tag != "domain":
        raise FormatError(f"root element is <{root.tag[:40]}>, not <domain>", where)
    name = _text(root.findtext("name"), "domain name", where)[:64]
    vcpus = _int(root.findtext("vcpu"), "vcpu count", where, *VCPU_RANGE)
    spec = DomainSpec(source=path, name=name, memory_mib=_memory_mib(root.find("memory"), where), vcpus=vcpus)
    base = path.parent
    os_el = root.find("os")
    if os_el is not None:
        if os_el.find("kernel") is not None:
            spec.kernel = _path(os_el.findtext("kernel"), "kernel", where, base)
            if os_el.find("initrd") is not None:
                spec.initrd = _path(os_el.findtext("initrd"), "initrd", where, base)
            if os_el.find("cmdline") is not None:
                spec.cmdline = _text(os_el.findtext("cmdline"), "kernel command line", where)
        loader = os_el.find("loader")
        if loader is not None:
            raise FormatError("a firmware <loader> (UEFI) is not supported by the boot test", where)
    devices = root.find("devices")
    if devices is None:
        raise FormatError("no <devices> element", where)
    for d in devices.findall("disk"):
        disk = _disk(d, where, base)
        if disk is not None:
            spec.disks.append(disk)
    if not any(d.device == "disk" for d in spec.disks):
        raise FormatError("the domain has no file-backed disk", where)
    if len(spec.disks) > MAX_DISKS:
        raise FormatError(f"{len(spec.disks)} disks, more than {MAX_DISKS}", where)
    targets = [d.target for d in spec.disks]
    if len(set(targets)) != len(targets):
        raise FormatError(f"duplicate disk targets {targets}", where)
    spec.nics = [_nic(n, where) for n in devices.findall("interface")]
    if len(spec.nics) > MAX_NICS:
        raise FormatError(f"{len(spec.nics)} interfaces, more than {MAX_NICS}", where)
    spec.rng = any((r.get("model") or "") == "virtio" for r in devices.findall("rng"))
    return spec
