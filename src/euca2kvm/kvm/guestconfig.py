# SPDX-License-Identifier: Apache-2.0
"""What a guest's own configuration expects of its virtual hardware, and where the domain differs.

:func:`parse` turns guest files (``{guest path: bytes}``, as :mod:`.guestfiles` reads them) into a
:class:`GuestConfig`: the block devices ``/etc/fstab`` and the kernel command lines of the boot
loader name (``root=``), the interfaces pinned to a MAC address (CentOS ``ifcfg-*`` ``HWADDR=``,
udev ``70-persistent-net.rules``, netplan ``match: macaddress``, systemd ``.link``/``.network``
``[Match] MACAddress=``), the interface names ``/etc/network/interfaces`` configures, whether
cloud-init is installed and which SSH authorized keys exist. :func:`check` compares that with a
domain's disk bus and MAC address. Both are pure functions over hostile bytes: any input yields a
result (odd lines are skipped), never an exception; every record names the guest file and line.

netplan is YAML, and PyYAML is not a dependency of euca2kvm: its files are read line by line with
the indentation as the structure (block style, as netplan's documentation and generators write it;
a flow-style ``match: {macaddress: ...}`` on one line is recognised too). That is all the
information needed here: which ``macaddress:`` keys sit under a ``match:`` and the sibling
``set-name:``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import UsageError
from .imagefile import clean_text

# Guest text kept in a record (a device spec, an interface name) is cut to this many characters.
MAX_FIELD = 256
# Lines examined per file: a 1 MiB file of one-byte lines is a million lines; config files are short.
MAX_LINES = 50_000

FSTAB = "/etc/fstab"
BOOT_CONFIGS = ("/boot/grub/grub.cfg", "/boot/grub2/grub.cfg", "/boot/grub/menu.lst", "/boot/grub/grub.conf",
                "/boot/extlinux/extlinux.conf", "/boot/extlinux.conf", "/boot/syslinux/syslinux.cfg",
                "/boot/syslinux.cfg", "/extlinux.conf", "/boot/grub2/grubenv", "/boot/grub/grubenv")
BLS_DIR = "/boot/loader/entries/"
IFCFG_DIR = "/etc/sysconfig/network-scripts/"
UDEV_NET_RULES = "/etc/udev/rules.d/70-persistent-net.rules"
INTERFACES = "/etc/network/interfaces"
INTERFACES_DIR = "/etc/network/interfaces.d/"
NETPLAN_DIR = "/etc/netplan/"
NETWORKD_DIR = "/etc/systemd/network/"
CLOUD_INIT = ("/usr/bin/cloud-init", "/etc/cloud/cloud.cfg")
CLOUD_INIT_DISABLED = "/etc/cloud/cloud-init.disabled"
ROOT_KEYS = ("/root/.ssh/authorized_keys", "/root/.ssh/authorized_keys2")
HOME_KEYS = re.compile(r"^/home/[^/]+/\.ssh/authorized_keys2?$")

# Which kernel disk names a libvirt disk bus gives the guest. IDE disks are /dev/sd* under libata
# (every kernel since 2.6.28 that distributions ship) and /dev/hd* under the old IDE driver.
BUS_NAMES: dict[str, frozenset[str]] = {
    "virtio": frozenset({"vd"}), "scsi": frozenset({"sd"}), "sata": frozenset({"sd"}),
    "usb": frozenset({"sd"}), "ide": frozenset({"sd", "hd"}), "xen": frozenset({"xvd"}),
}
_DISK_NAME = re.compile(r"^/dev/(xvd|vd|sd|hd)[a-z]{1,3}\d*$")
# /dev/disk/by-id names carry the bus: virtio-SERIAL, scsi-/ata-/wwn- for SCSI and SATA disks.
_BY_ID = {"virtio-": "vd", "scsi-": "sd", "ata-": "sd", "wwn-": "sd", "usb-": "sd", "xen-": "xvd"}
_MAC = re.compile(r"^[0-9a-f]{2}([:-])[0-9a-f]{2}(\1[0-9a-f]{2}){4}$")
_KERNEL_LINE = re.compile(r"^\s*(linux|linux16|linuxefi|kernel|append|options)\s", re.IGNORECASE)
_UDEV_ADDR = re.compile(r'ATTRS?\{address\}\s*==\s*"([^"]*)"')
_UDEV_NAME = re.compile(r'(?<![A-Za-z_])NAME\s*:?=\s*"([^"]*)"')
_FLOW_MATCH = re.compile(r"match\s*:\s*\{[^}]*macaddress\s*:\s*([^,}\s]+)")
_FLOW_NAME = re.compile(r"set-name\s*:\s*([^,}\s]+)")
_YAML_KEY = re.compile(r"^(\s*)(-\s+)?([A-Za-z0-9_.\"'-]+)\s*:\s*(.*?)\s*$")


@dataclass(frozen=True)
class DeviceRef:
    """A block device the guest names: an fstab line or a ``root=`` on a kernel command line."""

    file: str
    line: int
    spec: str
    mountpoint: str  # "/" for root=
    options: str = ""


@dataclass(frozen=True)
class MacPin:
    """An interface the guest binds to one MAC address (a NIC with another MAC is not it)."""

    file: str
    line: int
    mac: str  # lower case, colon separated
    name: str  # the interface name the guest gives it, "" if none
    how: str  # ifcfg, udev, netplan, networkd


@dataclass(frozen=True)
class GuestWarning:
    file: str  # the guest file the warning is about
    line: int  # 1-based; 0 when the warning is about a file's absence
    kind: str  # device-name, mac-pin, no-way-in
    message: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def render(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.message}"


@dataclass
class GuestConfig:
    devices: list[DeviceRef] = field(default_factory=list)
    pins: list[MacPin] = field(default_factory=list)
    interfaces: list[tuple[str, int, str]] = field(default_factory=list)  # (file, line, name) configured
    cloud_init: bool = False
    cloud_init_files: list[str] = field(default_factory=list)
    keys: dict[str, int] = field(default_factory=dict)  # authorized_keys file -> number of keys
    root: bool = False  # a Linux root filesystem (something under /etc) was read
    files: list[str] = field(default_factory=list)  # guest files parsed
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> list[str]:
        root = [d.spec for d in self.devices if d.mountpoint == "/"]
        macs = sorted({p.mac for p in self.pins})
        keys = sum(self.keys.values())
        return [f"root device: {', '.join(dict.fromkeys(root)) or 'not named'}",
                f"interfaces pinned to a MAC: {', '.join(macs) or 'none'}",
                f"cloud-init: {'yes' if self.cloud_init else 'no'}; SSH authorized keys: {keys}"
                f"{' in ' + ', '.join(sorted(self.keys)) if self.keys else ''}"]


def _text(field_: str) -> str:
    return clean_text(field_, MAX_FIELD)


def _lines(data: bytes) -> Iterator[tuple[int, str]]:
    # Lines end at \n only (what an editor or sed numbers as lines); str.splitlines would also split
    # at form feeds and Unicode separators and shift every line number after them.
    for no, line in enumerate(data.decode("utf-8", "replace").split("\n", MAX_LINES)[:MAX_LINES], 1):
        yield no, line.removesuffix("\r")


def _mac(raw: str) -> str | None:
    m = raw.strip().strip("\"'").lower()
    return m.replace("-", ":") if _MAC.match(m) else None


def _unescape_fstab(spec: str) -> str:
    """fstab escapes spaces and tabs in fields as octal (``\\040``)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), spec)


def parse_fstab(path: str, data: bytes) -> list[DeviceRef]:
    out = []
    for no, line in _lines(data):
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        opts = fields[3] if len(fields) > 3 else ""
        out.append(DeviceRef(path, no, _text(_unescape_fstab(fields[0])), _text(_unescape_fstab(fields[1])),
                             _text(opts)))
    return out


def parse_kernel_lines(path: str, data: bytes) -> list[DeviceRef]:
    """``root=`` on GRUB ``linux``/``kernel``, SYSLINUX ``append``, BLS ``options`` and grubenv ``kernelopts``."""
    out = []
    for no, line in _lines(data):
        if _KERNEL_LINE.match(line):
            args = line.split()[1:]
        elif line.startswith("kernelopts="):
            args = line[len("kernelopts="):].split()
        else:
            continue
        for a in args:
            a = a.strip("\"'")
            if a.startswith("root=") and len(a) > 5:
                out.append(DeviceRef(path, no, _text(a[5:]), "/"))
    return out


def _assignments(data: bytes) -> Iterator[tuple[int, str, str]]:
    """Shell-style ``KEY=value`` lines (ifcfg files), quotes removed."""
    for no, line in _lines(data):
        key, sep, value = line.strip().partition("=")
        if sep and key.isidentifier():
            yield no, key, value.split("#", 1)[0].strip().strip("\"'")


def parse_ifcfg(path: str, data: bytes) -> list[MacPin]:
    device = path.rsplit("/", 1)[-1].removeprefix("ifcfg-")
    hw: list[tuple[int, str]] = []
    for no, key, value in _assignments(data):
        if key == "DEVICE" and value:
            device = value
        elif key == "HWADDR" and (mac := _mac(value)):
            hw.append((no, mac))
    return [MacPin(path, no, mac, _text(device), "ifcfg") for no, mac in hw]


def parse_udev_rules(path: str, data: bytes) -> list[MacPin]:
    out = []
    for no, line in _lines(data):
        if line.lstrip().startswith("#"):
            continue
        addr = _UDEV_ADDR.search(line)
        if addr and (mac := _mac(addr.group(1))):
            name = _UDEV_NAME.search(line)
            out.append(MacPin(path, no, mac, _text(name.group(1)) if name else "", "udev"))
    return out


def parse_netplan(path: str, data: bytes) -> list[MacPin]:
    """``macaddress:`` under ``match:`` (see the module docstring), named by the sibling ``set-name:``."""
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing mappings
    pins: list[tuple[int, str, tuple[tuple[int, str], ...]]] = []  # line, mac, path of the interface
    names: dict[tuple[tuple[int, str], ...], str] = {}
    for no, line in _lines(data):
        body = line.split(" #", 1)[0]
        m = _YAML_KEY.match(body)
        if not m or body.lstrip().startswith("#"):
            continue
        indent = len(m.group(1)) + (len(m.group(2)) if m.group(2) else 0)
        key, value = m.group(3).strip("\"'"), m.group(4)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parent = tuple(stack)
        if key == "macaddress" and stack and stack[-1][1] == "match" and (mac := _mac(value)):
            pins.append((no, mac, parent[:-1]))
        elif value.startswith("{") and (flow := _FLOW_MATCH.search(f"{key}: {value}")):
            if mac := _mac(flow.group(1)):
                set_name = _FLOW_NAME.search(value)
                pins.append((no, mac, (*parent, (indent, key))))
                if set_name:
                    names[(*parent, (indent, key))] = set_name.group(1).strip("\"'")
        elif key == "set-name" and value:
            names[parent] = value.strip("\"'")
        if not value:
            stack.append((indent, key))
    return [MacPin(path, no, mac, _text(names.get(iface, "")), "netplan") for no, mac, iface in pins]


def parse_networkd(path: str, data: bytes) -> list[MacPin]:
    """systemd ``.link``/``.network``: ``MACAddress=`` in ``[Match]``; ``Name=`` in ``[Link]`` (``.link``)."""
    section, name = "", ""
    macs: list[tuple[int, str]] = []
    for no, line in _lines(data):
        s = line.strip()
        if s.startswith("["):
            section = s
            continue
        key, sep, value = s.partition("=")
        if not sep:
            continue
        if section == "[Match]" and key.strip() in ("MACAddress", "PermanentMACAddress"):
            macs += [(no, mac) for v in value.split() if (mac := _mac(v))]
        elif section == "[Link]" and key.strip() == "Name" or section == "[Match]" and key.strip() == "Name":
            name = value.strip()
    return [MacPin(path, no, mac, _text(name), "networkd") for no, mac in macs]


def parse_interfaces(path: str, data: bytes) -> list[tuple[str, int, str]]:
    """Interface names ifupdown configures (``auto``, ``allow-*``, ``iface NAME``)."""
    out = []
    for no, line in _lines(data):
        words = line.split("#", 1)[0].split()
        if len(words) >= 2 and (words[0] in ("auto", "iface") or words[0].startswith("allow-")):
            names = words[1:2] if words[0] == "iface" else words[1:]
            out += [(path, no, _text(n)) for n in names if n != "lo"]
    return out


def _count_keys(data: bytes) -> int:
    return sum(1 for _, line in _lines(data) if line.strip() and not line.lstrip().startswith("#"))


def parse(files: Mapping[str, bytes], present: frozenset[str] | set[str] = frozenset()) -> GuestConfig:
    """The configuration in ``files`` (guest path -> content); ``present`` names paths that exist
    whether or not their content was read (a program, a symlink)."""
    cfg = GuestConfig(files=sorted(files))
    for path in sorted(files):
        data = files[path]
        if path == FSTAB:
            cfg.devices += parse_fstab(path, data)
        elif path in BOOT_CONFIGS or path.startswith(BLS_DIR) and path.endswith(".conf"):
            cfg.devices += parse_kernel_lines(path, data)
        elif path.startswith(IFCFG_DIR + "ifcfg-"):
            cfg.pins += parse_ifcfg(path, data)
        elif path == UDEV_NET_RULES:
            cfg.pins += parse_udev_rules(path, data)
        elif path.startswith(NETPLAN_DIR) and path.endswith(".yaml"):
            cfg.pins += parse_netplan(path, data)
        elif path.startswith(NETWORKD_DIR) and path.endswith((".link", ".network")):
            cfg.pins += parse_networkd(path, data)
        elif path == INTERFACES or path.startswith(INTERFACES_DIR):
            cfg.interfaces += parse_interfaces(path, data)
        elif (path in ROOT_KEYS or HOME_KEYS.match(path)) and (n := _count_keys(data)):
            cfg.keys[path] = n
    known = set(files) | set(present)
    cfg.root = any(p.startswith("/etc/") for p in known)
    cfg.cloud_init_files = [p for p in CLOUD_INIT if p in known]
    cfg.cloud_init = bool(cfg.cloud_init_files)
    if cfg.cloud_init and CLOUD_INIT_DISABLED in known:
        cfg.cloud_init = False
        cfg.notes.append(f"cloud-init is installed but disabled by {CLOUD_INIT_DISABLED}")
    return cfg


def _needs(spec: str) -> str | None:
    """The kernel name prefix (vd, sd, hd, xvd) a device spec depends on; None if bus-independent."""
    m = _DISK_NAME.match(spec)
    if m:
        return m.group(1)
    if spec.startswith("/dev/disk/by-id/"):
        name = spec[len("/dev/disk/by-id/"):]
        return next((prefix for start, prefix in _BY_ID.items() if name.startswith(start)), None)
    return None


def check(cfg: GuestConfig, disk_bus: str, nic_mac: str | None) -> list[GuestWarning]:
    """Warnings where a domain with ``disk_bus`` and a NIC with ``nic_mac`` (None: not known yet, any
    pinned MAC is then reported) does not give the guest what its configuration names."""
    names = BUS_NAMES.get(disk_bus)
    if names is None:
        raise UsageError(f"unknown disk bus {disk_bus!r} (one of {', '.join(sorted(BUS_NAMES))})")
    out = []
    for d in cfg.devices:
        what = "root=" if d.mountpoint == "/" and d.file != FSTAB else f"fstab entry for {d.mountpoint}"
        if d.spec.startswith("/dev/disk/by-path/"):
            out.append(GuestWarning(d.file, d.line, "device-name",
                                    f"{what} names {d.spec}, a path that depends on the virtual hardware; "
                                    "use UUID= or LABEL="))
            continue
        need = _needs(d.spec)
        if need is not None and need not in names:
            soft = " (nofail/noauto: boot goes on without it)" if re.search(r"\b(nofail|noauto)\b",
                                                                            d.options) else ""
            provided = " or ".join(f"/dev/{n}*" for n in sorted(names))
            out.append(GuestWarning(d.file, d.line, "device-name",
                                    f"{what} names {d.spec}, but {disk_bus} disks appear as {provided}{soft}"))
    mac = _mac(nic_mac) if nic_mac else None
    by_how: dict[str, list[MacPin]] = {}
    for p in cfg.pins:
        by_how.setdefault(p.how, []).append(p)
    for pins in by_how.values():
        if mac is not None and any(p.mac == mac for p in pins):
            continue  # the domain's NIC is the pinned one; other pins name NICs it does not have
        for p in pins:
            iface = f"interface {p.name}" if p.name else "an interface"
            domain = f"the domain's NIC has {mac}" if mac else "the domain's MAC is not known"
            out.append(GuestWarning(p.file, p.line, "mac-pin",
                                    f"{iface} is pinned to MAC {p.mac}; {domain}, so it comes up unconfigured"))
    if cfg.root and not cfg.cloud_init and not cfg.keys:
        out.append(GuestWarning(ROOT_KEYS[0], 0, "no-way-in",
                                "no cloud-init and no SSH authorized key in the guest: nothing lets a seed "
                                "or a key in"))
    return out
