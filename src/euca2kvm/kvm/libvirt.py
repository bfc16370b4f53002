# SPDX-License-Identifier: Apache-2.0
"""A small domain model and its libvirt domain XML, plus the equivalent ``virt-install --import`` line.

The XML is written with ElementTree in a fixed element order, so the output is stable (golden-file tested)
and validates against libvirt's RelaxNG schema (``domain.rng``). Names are sanitised to what libvirt and its
tools accept; paths are made absolute; ElementTree escapes XML special characters, and characters XML 1.0
cannot carry at all are refused.

The defaults give a generic guest. The optional parts (explicit bus, disk serial, ``cache``, a read-only
cdrom, the NIC's MAC/model/bridge, ``<boot dev='hd'/>``, CPU topology, virtio-rng, the clock offset) are
what an instance needs to get the virtual hardware a Eucalyptus node controller gave it; see
:mod:`euca2kvm.kvm.ncconf`.
"""

from __future__ import annotations

import os
import re
import shlex
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from euca2kvm.errors import UsageError
from euca2kvm.outdir import OutDir, write_atomic

# Image formats QEMU opens for a guest disk (what euca2kvm export writes).
FORMATS = ("raw", "qcow2", "vmdk", "vhdx", "vpc", "vdi")
# Target device prefix -> bus. "vd" is the virtio disk KVM guests boot fastest from; "sd" and "hd" are for
# guests without virtio drivers.
BUS_BY_PREFIX = {"vd": "virtio", "sd": "sata", "hd": "ide"}
TARGET_DEV = re.compile(r"^(vd|sd|hd)[a-z]{1,3}$")
# Bus -> the target prefix libvirt expects for it.
PREFIX_BY_BUS = {"virtio": "vd", "scsi": "sd", "sata": "sd", "ide": "hd"}
NIC_MODELS = ("virtio", "e1000", "rtl8139")
CACHE_MODES = ("none", "writeback", "writethrough", "directsync", "unsafe")
CLOCK_OFFSETS = ("utc", "localtime")
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
# libvirt's disk <serial> is at most 20 characters on IDE/SATA (the ATA field), unbounded on virtio/scsi; the
# NC writes "<volId>-dev-<dev>" (vol-4708bf47-dev-sda, 20; longer for 17-hex ids, which QEMU then truncates).
SERIAL_RE = re.compile(r"^[A-Za-z0-9_.+-]{1,64}$")
PCI_SLOT_MAX = 31  # slot 0 is the host bridge
BRIDGE_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")  # IFNAMSIZ - 1
# libvirt forbids "/" in names; virsh and virt-install treat an all-digit name as a domain id, and a
# leading "-" as an option. Keep a conservative, shell- and file-name-safe set, capped in length.
NAME_ALLOWED = re.compile(r"[^A-Za-z0-9_.+-]+")
NAME_MAX = 64
MEMORY_MIB_RANGE = (16, 4 * 1024 * 1024)
VCPU_RANGE = (1, 512)
# XML 1.0 excludes C0 controls except TAB, LF, CR; libvirt also rejects newlines in file names.
_BAD_XML_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffe\uffff]")


def sanitize_name(name: str) -> str:
    """A libvirt-safe domain name derived from ``name`` (e.g. a volume or instance id)."""
    cleaned = NAME_ALLOWED.sub("-", name).strip("-.")
    cleaned = cleaned[:NAME_MAX].rstrip("-.")
    if not cleaned:
        raise UsageError(f"no usable characters in domain name {name!r}")
    if cleaned.isdigit():
        cleaned = f"vm-{cleaned}"
    return cleaned


def _clean_text(value: str, what: str) -> str:
    if _BAD_XML_CHARS.search(value) or "\n" in value or "\r" in value:
        raise UsageError(f"{what} contains control characters: {value!r}")
    return value


def _abs_path(path: str | os.PathLike[str], what: str) -> str:
    text = _clean_text(os.fspath(path), what)
    if not text:
        raise UsageError(f"empty {what}")
    return os.path.abspath(text)


@dataclass(frozen=True)
class Disk:
    """A file-backed disk. ``path`` is made absolute (relative paths resolve against the current directory)."""

    path: str | os.PathLike[str]
    format: str = "raw"
    target_dev: str = "vda"
    bus_name: str | None = None  # None: from the target prefix (vd virtio, sd sata, hd ide)
    serial: str | None = None
    cache: str | None = None
    cdrom: bool = False  # a read-only cdrom instead of a disk

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise UsageError(f"unsupported disk format {self.format!r} (expected one of {', '.join(FORMATS)})")
        if not TARGET_DEV.match(self.target_dev):
            raise UsageError(f"invalid target device {self.target_dev!r} (expected vdX, sdX or hdX)")
        if self.bus_name is not None and PREFIX_BY_BUS.get(self.bus_name) != self.target_dev[:2]:
            raise UsageError(f"target device {self.target_dev!r} does not fit bus {self.bus_name!r}")
        if self.serial is not None and not SERIAL_RE.match(self.serial):
            raise UsageError(f"invalid disk serial {self.serial!r}")
        if self.cache is not None and self.cache not in CACHE_MODES:
            raise UsageError(f"invalid cache mode {self.cache!r}")
        if self.cdrom and self.bus not in ("ide", "sata", "scsi"):
            raise UsageError("a cdrom needs an ide, sata or scsi target")
        object.__setattr__(self, "path", _abs_path(self.path, "disk path"))

    @property
    def bus(self) -> str:
        return self.bus_name or BUS_BY_PREFIX[self.target_dev[:2]]


@dataclass(frozen=True)
class Domain:
    """A KVM guest: x86_64, machine ``pc``, boots from its first disk (or a kernel given directly)."""

    name: str
    memory_mib: int
    vcpus: int
    disks: list[Disk] = field(default_factory=list)
    kernel: str | os.PathLike[str] | None = None
    initrd: str | os.PathLike[str] | None = None
    cmdline: str | None = None
    network: str | None = "default"  # libvirt network name; None for no NIC (unless bridge)
    domain_type: str = "kvm"
    bridge: str | None = None  # a host bridge instead of a libvirt network
    mac: str | None = None
    nic_model: str = "virtio"
    nic_pci_slot: int | None = None  # the NIC's slot on PCI bus 0 (the guest's interface name follows it)
    boot_dev: bool = False  # <os><boot dev='hd'/> instead of a boot order on the first disk
    cpu_topology: bool = False  # <cpu><topology sockets='1' cores=vcpus threads='1'/>
    rng: bool = False  # virtio-rng fed from the host's /dev/urandom
    clock: str = "utc"
    description: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", sanitize_name(self.name))
        if not MEMORY_MIB_RANGE[0] <= self.memory_mib <= MEMORY_MIB_RANGE[1]:
            raise UsageError(f"memory {self.memory_mib} MiB out of range {MEMORY_MIB_RANGE}")
        if not VCPU_RANGE[0] <= self.vcpus <= VCPU_RANGE[1]:
            raise UsageError(f"vcpus {self.vcpus} out of range {VCPU_RANGE}")
        if not self.disks:
            raise UsageError("a domain needs at least one disk")
        devs = [d.target_dev for d in self.disks]
        if len(set(devs)) != len(devs):
            raise UsageError(f"duplicate target devices: {devs}")
        if self.domain_type not in ("kvm", "qemu"):
            raise UsageError(f"domain type must be kvm or qemu, not {self.domain_type!r}")
        if self.kernel is None and (self.initrd is not None or self.cmdline is not None):
            raise UsageError("initrd and cmdline need a kernel")
        if self.kernel is not None:
            object.__setattr__(self, "kernel", _abs_path(self.kernel, "kernel path"))
        if self.initrd is not None:
            object.__setattr__(self, "initrd", _abs_path(self.initrd, "initrd path"))
        if self.cmdline is not None:
            _clean_text(self.cmdline, "kernel command line")
        if self.network is not None and not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", self.network):
            raise UsageError(f"invalid network name {self.network!r}")
        if self.bridge is not None and (self.network is not None or not BRIDGE_RE.match(self.bridge)):
            raise UsageError(f"invalid bridge {self.bridge!r} (a bridge replaces the network)")
        if self.mac is not None and not MAC_RE.match(self.mac):
            raise UsageError(f"invalid MAC address {self.mac!r} (expected lower-case xx:xx:xx:xx:xx:xx)")
        if self.mac is not None and int(self.mac[:2], 16) & 1:
            raise UsageError(f"MAC address {self.mac} is a multicast address")
        if self.nic_model not in NIC_MODELS:
            raise UsageError(f"NIC model must be one of {', '.join(NIC_MODELS)}, not {self.nic_model!r}")
        if self.nic_pci_slot is not None and not 1 <= self.nic_pci_slot <= PCI_SLOT_MAX:
            raise UsageError(f"NIC PCI slot {self.nic_pci_slot} out of range 1-{PCI_SLOT_MAX}")
        if self.clock not in CLOCK_OFFSETS:
            raise UsageError(f"clock offset must be utc or localtime, not {self.clock!r}")
        if self.description is not None:
            _clean_text(self.description, "description")
        if self.disks[0].cdrom:
            raise UsageError("the first disk (the boot disk) cannot be a cdrom")
        object.__setattr__(self, "disks", list(self.disks))

    @property
    def has_nic(self) -> bool:
        return self.network is not None or self.bridge is not None


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


def domain_element(domain: Domain) -> ET.Element:
    """The ``<domain>`` element; children in libvirt's customary order."""
    root = ET.Element("domain", {"type": domain.domain_type})
    _sub(root, "name", domain.name)
    if domain.description is not None:
        _sub(root, "description", domain.description)
    _sub(root, "memory", str(domain.memory_mib), unit="MiB")
    _sub(root, "currentMemory", str(domain.memory_mib), unit="MiB")
    _sub(root, "vcpu", str(domain.vcpus))
    os_el = _sub(root, "os")
    _sub(os_el, "type", "hvm", arch="x86_64", machine="pc")
    if domain.kernel is not None:
        _sub(os_el, "kernel", str(domain.kernel))
        if domain.initrd is not None:
            _sub(os_el, "initrd", str(domain.initrd))
        if domain.cmdline is not None:
            _sub(os_el, "cmdline", domain.cmdline)
    if domain.boot_dev:
        _sub(os_el, "boot", dev="hd")
    features = _sub(root, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    if domain.cpu_topology:
        cpu = _sub(root, "cpu")
        _sub(cpu, "topology", sockets="1", cores=str(domain.vcpus), threads="1")
    _sub(root, "clock", offset=domain.clock)
    _sub(root, "on_poweroff", "destroy")
    _sub(root, "on_reboot", "restart")
    _sub(root, "on_crash", "destroy")
    devices = _sub(root, "devices")
    for i, disk in enumerate(domain.disks):
        d = _sub(devices, "disk", type="file", device="cdrom" if disk.cdrom else "disk")
        _sub(d, "driver", name="qemu", type=disk.format, **({"cache": disk.cache} if disk.cache else {}))
        _sub(d, "source", file=str(disk.path))
        _sub(d, "target", dev=disk.target_dev, bus=disk.bus)
        if disk.cdrom:
            _sub(d, "readonly")
        if disk.serial is not None:
            _sub(d, "serial", disk.serial)
        if i == 0 and not domain.boot_dev:
            _sub(d, "boot", order="1")
    if domain.has_nic:
        if domain.bridge is not None:
            nic = _sub(devices, "interface", type="bridge")
            _sub(nic, "source", bridge=domain.bridge)
        else:
            nic = _sub(devices, "interface", type="network")
            _sub(nic, "source", network=str(domain.network))
        if domain.mac is not None:
            _sub(nic, "mac", address=domain.mac)
        _sub(nic, "model", type=domain.nic_model)
        if domain.nic_pci_slot is not None:
            _sub(nic, "address", type="pci", domain="0x0000", bus="0x00", slot=f"0x{domain.nic_pci_slot:02x}",
                 function="0x0")
    serial = _sub(devices, "serial", type="pty")
    _sub(serial, "target", port="0")
    console = _sub(devices, "console", type="pty")
    _sub(console, "target", type="serial", port="0")
    graphics = _sub(devices, "graphics", type="vnc", port="-1", autoport="yes", listen="127.0.0.1")
    _sub(graphics, "listen", type="address", address="127.0.0.1")
    video = _sub(devices, "video")
    _sub(video, "model", type="vga")
    if domain.rng:
        rng = _sub(devices, "rng", model="virtio")
        _sub(rng, "backend", "/dev/urandom", model="random")
    return root


def domain_xml(domain: Domain) -> str:
    """The domain XML as text, indented, ending with a newline."""
    root = domain_element(domain)
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="unicode") + "\n"


def write_domain(domain: Domain, path: Path) -> Path:
    """Write the domain XML to ``path`` atomically, never through a symlink there; returns ``path``."""
    path = Path(path)
    write_atomic(path, domain_xml(domain), mode=0o644)
    return path


def install_script_path(xml_path: Path) -> Path:
    """``NAME.virt-install.sh`` beside ``NAME.xml``."""
    return xml_path.with_name(xml_path.name.removesuffix(".xml") + ".virt-install.sh")


def write_domain_files(domain: Domain, xml_path: Path, *, seed: tuple[str, bytes] | None = None) -> tuple[Path, Path]:
    """The one writer of a guest's files: the seed (``(name, bytes)``, if any, first: the domain
    names it), the domain XML at ``xml_path`` and its ``virt-install`` script beside it.

    Each file is replaced atomically in its directory (:class:`~euca2kvm.outdir.OutDir`: a
    temporary of mode 0600 renamed over the name); a symlink or a non-regular file at any of the
    names refuses all of them (IOFailure) before one is written. Returns the XML's and the script's paths.
    """
    xml_path = Path(xml_path)
    script = install_script_path(xml_path)
    text = ("#!/bin/sh\n# Defines this guest in libvirt, the equivalent of virsh define "
            f"{shlex.quote(str(xml_path))}\nexec {shlex.join(virt_install_command(domain))}\n")
    files = ([(seed[0], seed[1], 0o644)] if seed is not None else []) + [
        (xml_path.name, domain_xml(domain).encode(), 0o644), (script.name, text.encode(), 0o755)]
    with OutDir(xml_path.parent) as od:
        for name, _, _ in files:
            od.check_replaceable(name)  # a symlink or directory at any name refuses them all, before any write
        for name, data, mode in files:
            od.write_file(name, data, mode=mode)
    return xml_path, script


def _opt(value: str) -> str:
    """Escape a value inside a virt-install comma-separated option (a literal comma is written twice)."""
    return value.replace(",", ",,")


def virt_install_command(domain: Domain) -> list[str]:
    """The ``virt-install --import`` argument list defining an equivalent guest (no shell quoting needed)."""
    cmd = [
        "virt-install", "--import", "--noautoconsole",
        "--virt-type", domain.domain_type,
        "--name", domain.name,
        "--memory", str(domain.memory_mib),
        "--vcpus", str(domain.vcpus),
        "--arch", "x86_64",
        "--machine", "pc",
        "--osinfo", "detect=on,require=off",
    ]
    if domain.cpu_topology:
        cmd[cmd.index("--vcpus") + 1] = f"{domain.vcpus},sockets=1,cores={domain.vcpus},threads=1"
    for i, disk in enumerate(domain.disks):
        spec = f"path={_opt(str(disk.path))},format={disk.format},bus={disk.bus},target.dev={disk.target_dev}"
        if disk.cdrom:
            spec += ",device=cdrom,readonly=on"
        if disk.cache:
            spec += f",cache={disk.cache}"
        if disk.serial:
            spec += f",serial={disk.serial}"
        if i == 0 and not domain.boot_dev:
            spec += ",boot.order=1"
        cmd += ["--disk", spec]
    if domain.boot_dev and domain.kernel is None:
        cmd += ["--boot", "hd"]
    if domain.kernel is not None:
        boot = f"kernel={_opt(str(domain.kernel))}"
        if domain.initrd is not None:
            boot += f",initrd={_opt(str(domain.initrd))}"
        if domain.cmdline is not None:
            boot += f",kernel_args={_opt(domain.cmdline)}"
        cmd += ["--boot", boot]
    if domain.has_nic:
        net = f"bridge={domain.bridge}" if domain.bridge is not None else f"network={domain.network}"
        net += f",mac={domain.mac}" if domain.mac else ""
        if domain.nic_pci_slot is not None:
            net += f",address.type=pci,address.domain=0,address.bus=0,address.slot={domain.nic_pci_slot}"
        cmd += ["--network", f"{net},model={domain.nic_model}"]
    else:
        cmd += ["--network", "none"]
    cmd += ["--graphics", "vnc,listen=127.0.0.1", "--serial", "pty", "--console", "pty,target.type=serial"]
    if domain.clock != "utc":
        cmd += ["--clock", f"offset={domain.clock}"]
    if domain.rng:
        cmd += ["--rng", "/dev/urandom"]
    return cmd
