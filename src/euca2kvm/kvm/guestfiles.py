# SPDX-License-Identifier: Apache-2.0
"""Read a few configuration files from a guest's filesystems, read-only, without mounting anything.

Which files: ``/etc/fstab``, the boot loader configuration, the network configuration and the
ways in (see :data:`WANTED`); :mod:`.guestconfig` parses them. Where from: every ext2/3/4 and XFS
filesystem of the disk, on a partition or on an LV of the guest's own LVM (read with the project's
LVM reader, as :mod:`.guest` does). A filesystem holding ``/etc`` is a root; one holding ``grub``,
``grub2``, ``extlinux``, ``syslinux`` or ``loader`` at its top and no ``etc`` is a separate ``/boot``.

How:

* ext2/3/4 through e2fsprogs' ``debugfs -c`` (:mod:`.extfiles`), given the host file holding the
  filesystem and the byte offset, so nothing is copied, attached or written. That needs the
  filesystem to be one contiguous byte range of a raw file: a partition of a raw image or of a
  volume whose LV is linear, a guest LV in one piece. Other layouts (a qcow2 image, a guest LV in
  several pieces) are reported as not read, and :meth:`GuestSetup.warnings` says so.
* XFS through :mod:`.xfsfiles`, euca2kvm's own reader on the image reader (xfs_db has no way to
  print a file, nor to open a byte range of a file).

Bounds: a file larger than :data:`MAX_FILE` is not read (noted), at most :data:`MAX_FILES` files
and :data:`MAX_HOMES` home directories per filesystem, tool output capped. Symlinks are never
followed (a symlink's presence is recorded, its target is not read): nothing outside the guest
filesystem is ever opened by its name. Only names of a plain form (:data:`SAFE_NAME`) taken from
the guest are used in a path or a debugfs request.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import Euca2kvmError, FormatError, IOFailure
from ..lvm.device import Device
from ..lvm.extents import ExtentMap, Kind
from ..lvm.reader import ExtentReader
from ..lvm.scan import scan
from . import guestconfig
from .extfiles import DebugfsView, Entries
from .filesystems import probe
from .guest import GuestReport, inspect_disk
from .imagefile import RawReader, Reader, Window, clean_text, open_image
from .xfsfiles import XfsView

# Config files are a few KiB; a 1 MiB grub.cfg is already absurd. Larger files are not read.
MAX_FILE = 1 << 20
# Files read per filesystem (the wanted list below plus ifcfg-*, netplan, home keys).
MAX_FILES = 96
# Home directories whose authorized_keys are looked at.
MAX_HOMES = 32
# Names from the guest used in a path: no separators, no spaces, no control characters, no "..".
SAFE_NAME = re.compile(r"^[A-Za-z0-9_@+][A-Za-z0-9._@+:-]{0,127}$")

EXT_TYPES = ("ext2", "ext3", "ext4")
BOOT_TOP = ("grub", "grub2", "extlinux", "syslinux", "loader")

# Directory -> the entries wanted in it (exact names, or a pattern for a family of files).
WANTED: dict[str, tuple[str, ...] | re.Pattern[str]] = {
    "/etc": ("fstab",),
    "/etc/sysconfig/network-scripts": re.compile(r"^ifcfg-"),
    "/etc/udev/rules.d": ("70-persistent-net.rules",),
    "/etc/network": ("interfaces",),
    "/etc/network/interfaces.d": re.compile(r""),
    "/etc/netplan": re.compile(r"\.yaml$"),
    "/etc/systemd/network": re.compile(r"\.(link|network)$"),
    "/etc/cloud": ("cloud.cfg", "cloud-init.disabled"),
    "/usr/bin": ("cloud-init",),
    "/root/.ssh": ("authorized_keys", "authorized_keys2"),
    "/boot": ("extlinux.conf", "syslinux.cfg"),
    "/boot/grub": ("grub.cfg", "menu.lst", "grub.conf", "grubenv"),
    "/boot/grub2": ("grub.cfg", "grubenv"),
    "/boot/extlinux": ("extlinux.conf",),
    "/boot/syslinux": ("syslinux.cfg",),
    "/boot/loader/entries": re.compile(r"\.conf$"),
}
HOME_WANTED = ("authorized_keys", "authorized_keys2")



class FsView(Protocol):
    def entries(self, path: str, want: Callable[[str], bool]) -> Entries | None:
        """The entries of the directory at ``path`` whose names ``want`` accepts (None: no such directory)."""

    def prefetch(self, paths: list[str]) -> None:
        """A hint: ``entries`` will be asked for these directories (debugfs lists them in one run)."""

    def read_many(self, files: list[tuple[str, int]]) -> dict[str, bytes]:
        """The regular files ``(path, size)`` (sizes from their entries, each at most MAX_FILE)."""


@dataclass
class GuestFiles:
    where: str  # "partition 1", "LV centos/root"
    fstype: str
    mount: str = ""  # "/", "/boot", or "" when neither
    files: dict[str, bytes] = field(default_factory=dict)  # guest path (as mounted) -> content
    present: set[str] = field(default_factory=set)  # paths that exist, read or not
    notes: list[str] = field(default_factory=list)
    unread: str = ""  # why the filesystem could not be read at all


def collect(view: FsView, where: str, fstype: str) -> GuestFiles:
    """The wanted files of one filesystem (see the module docstring)."""
    got = GuestFiles(where, fstype)
    top = view.entries("/", lambda n: n in ("etc", "home", "boot", *BOOT_TOP)) or {}
    if top.get("etc", ("",))[0] == "dir":
        got.mount, prefix = "/", ""
    elif any(top.get(n, ("",))[0] == "dir" for n in BOOT_TOP):
        got.mount, prefix = "/boot", "/boot"
    else:
        return got
    dirs: list[tuple[str, tuple[str, ...] | re.Pattern[str]]] = [
        (d[len(prefix):] or "/", w) for d, w in WANTED.items() if d.startswith(prefix + "/") or d == prefix]
    view.prefetch([d for d, _ in dirs] + (["/home"] if prefix == "" else []))
    if prefix == "":
        homes = view.entries("/home", lambda n: bool(SAFE_NAME.match(n))) or {}
        users = sorted(n for n, (kind, _) in homes.items() if kind == "dir" and SAFE_NAME.match(n))
        if len(users) > MAX_HOMES:
            got.notes.append(f"{where}: {len(users)} home directories, only the first {MAX_HOMES} looked at")
        homedirs = [f"/home/{u}/.ssh" for u in users[:MAX_HOMES]]
        view.prefetch(homedirs)
        dirs += [(h, HOME_WANTED) for h in homedirs]
    reads: list[tuple[str, int]] = []
    for d, want in dirs:
        try:
            listing = view.entries(d, _wanted(want))
        except FormatError as e:  # one odd directory (hostile, or beyond the XFS reader) costs only itself
            got.notes.append(f"{where}: {d} not read: {clean_text(str(e), 300)}")
            continue
        for name, (kind, size) in sorted((listing or {}).items()):
            inside = f"{d.rstrip('/')}/{name}"
            path = prefix + inside
            got.present.add(path)
            if kind == "symlink":
                got.notes.append(f"{where}: {path} is a symlink, not followed")
            elif kind != "file":
                continue
            elif size > MAX_FILE:
                got.notes.append(f"{where}: {path} is {size} bytes, larger than {MAX_FILE}; not read")
            else:
                reads.append((inside, size))
    if len(reads) > MAX_FILES:
        got.notes.append(f"{where}: {len(reads)} files wanted, only the first {MAX_FILES} read")
    contents = view.read_many(reads[:MAX_FILES])
    for inside, _ in reads[:MAX_FILES]:
        if inside in contents:
            got.files[prefix + inside] = contents[inside]
        else:
            got.notes.append(f"{where}: {prefix + inside} could not be read")
    return got


def _wanted(want: tuple[str, ...] | re.Pattern[str]) -> Callable[[str], bool]:
    def ok(name: str) -> bool:
        if not SAFE_NAME.match(name) or name in (".", ".."):
            return False
        return name in want if isinstance(want, tuple) else bool(want.search(name))
    return ok


def host_range(reader: Reader, offset: int, size: int) -> tuple[str, int] | None:
    """The host file and offset holding bytes ``offset..offset+size`` of ``reader`` in one piece."""
    if isinstance(reader, RawReader):
        return reader.path, offset
    if isinstance(reader, ExtentReader):
        return _one_piece(reader.emap, offset, size)
    if isinstance(reader, _LvReader):
        piece = _one_piece(reader.emap, offset, size)
        return host_range(reader.disk, piece[1], size) if piece else None
    return None


def _one_piece(emap: ExtentMap, offset: int, size: int) -> tuple[str, int] | None:
    start: tuple[str, int] | None = None
    pos = offset
    for e in emap.extents(offset, offset + size):
        if e.kind is not Kind.DATA or e.path is None:
            return None
        here = (e.path, e.offset + (pos - e.start))
        if start is None:
            start = here
        elif here != (start[0], start[1] + (pos - offset)):
            return None
        pos = e.end
    return start if pos >= offset + size else None


class _LvReader:
    """A guest LV's bytes: its extent map (in the disk's coordinates) read through the disk reader."""

    def __init__(self, disk: Reader, emap: ExtentMap) -> None:
        self.disk, self.emap, self.size = disk, emap, emap.size

    def pread(self, offset: int, length: int) -> bytes:
        parts = []
        for e in self.emap.extents(offset, min(self.size, offset + length)):
            if e.kind is Kind.DATA:
                parts.append(self.disk.pread(e.offset, e.length))
            elif e.kind is Kind.ZERO:
                parts.append(bytes(e.length))
            else:
                raise IOFailure(f"guest LV bytes {e.start}..{e.end} map to an 'error' segment")
        return b"".join(parts)


def _filesystems(reader: Reader, report: GuestReport) -> list[tuple[str, Reader, int, int, str]]:
    """(where, reader, offset, size, type) of each ext/XFS filesystem, partitions and guest LVs."""
    out: list[tuple[str, Reader, int, int, str]] = []
    for pr in report.partitions:
        c, p = pr.content, pr.partition
        if c is None:
            continue
        if c.type in (*EXT_TYPES, "xfs"):
            out.append((f"partition {p.index}", reader, p.start, p.size, c.type))
        elif c.type == "LVM2_member":
            res = scan([Device(f"guest partition at {p.start}", p.start, p.size, reader=reader.pread)])
            for g in res.vgs:
                for lv in g.visible_lvs():
                    try:
                        lvr = _LvReader(reader, g.lv_map(lv))
                        t = probe(Window(lvr, 0, lvr.size)).type
                    except Euca2kvmError:
                        continue  # guest.py reports why this LV cannot be read
                    if t in (*EXT_TYPES, "xfs"):
                        out.append((f"LV {clean_text(g.name)}/{clean_text(lv.name)}", lvr, 0, lvr.size, t))
    if report.whole_disk is not None and report.whole_disk.type in (*EXT_TYPES, "xfs"):
        out.append(("disk", reader, 0, reader.size, report.whole_disk.type))
    return out


def read_filesystem(reader: Reader, where: str, offset: int, size: int, fstype: str) -> GuestFiles:
    if fstype == "xfs":
        return collect(XfsView(Window(reader, offset, size), where), where, fstype)
    hr = host_range(reader, offset, size)
    if hr is None:
        return GuestFiles(where, fstype, unread="debugfs needs it in one piece of a raw file (not a qcow2 "
                                                "image, not a guest LV in pieces)")
    try:
        fd = os.open(hr[0], os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise IOFailure(f"cannot open {hr[0]} read-only: {e.strerror}") from e
    try:
        return collect(DebugfsView(fd, hr[1], where), where, fstype)
    finally:
        os.close(fd)


@dataclass
class GuestSetup:
    """Files of the guest's root (and /boot) merged, parsed, plus what could not be read."""

    config: guestconfig.GuestConfig
    sources: list[dict[str, str]]  # {"where", "fstype", "mount"} of each filesystem read
    notes: list[str]
    unread: list[str]  # filesystems that could not be read, and why

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "sources": self.sources, "notes": self.notes,
                "unread": self.unread}

    def warnings(self, disk_bus: str, mac: str | None) -> list[guestconfig.GuestWarning]:
        """:func:`guestconfig.check`, plus one ``unchecked`` warning per filesystem not read, so a
        caller never mistakes "not looked at" for "fine"."""
        out = guestconfig.check(self.config, disk_bus, mac)
        return out + [guestconfig.GuestWarning("", 0, "unchecked", u) for u in self.unread]


def guest_setup(reader: Reader, report: GuestReport | None = None) -> GuestSetup:
    """Read and parse the configuration of the guest disk behind ``reader``; never raises for what the
    disk holds (reading problems become notes)."""
    if report is None:
        report = inspect_disk(reader, "disk")
    files: dict[str, bytes] = {}
    present: set[str] = set()
    sources: list[dict[str, str]] = []
    notes: list[str] = []
    unread: list[str] = []
    mounted: set[str] = set()
    try:
        found = _filesystems(reader, report)
    except Euca2kvmError as e:
        found, unread = [], [f"filesystems not found: {clean_text(str(e), 400)}"]
    for where, r, off, size, fstype in found:
        try:
            got = read_filesystem(r, where, off, size, fstype)
        except Euca2kvmError as e:
            got = GuestFiles(where, fstype, unread=clean_text(str(e), 400))
        if got.unread:
            unread.append(f"{where}: {fstype} not read: {got.unread}")
            continue
        notes += got.notes
        sources.append({"where": where, "fstype": fstype, "mount": got.mount})
        if not got.mount:
            continue
        if got.mount in mounted:
            notes.append(f"{where}: another {got.mount} filesystem was read first; this one is ignored")
            continue
        mounted.add(got.mount)
        files.update(got.files)
        present |= got.present
    cfg = guestconfig.parse(files, present)
    if "/" not in mounted:
        notes.append("no Linux root filesystem (ext2/3/4 or XFS with /etc) was read")
    return GuestSetup(cfg, sources, notes, unread)


def guest_warnings(image_or_emap: str | ExtentMap | Reader, disk_bus: str, mac: str | None,
                   fmt: str | None = None) -> list[guestconfig.GuestWarning]:
    """What a domain with ``disk_bus`` and NIC ``mac`` would not give the guest on this disk: an image
    file path, a volume's extent map, or an open reader; see :meth:`GuestSetup.warnings`."""
    opened: Callable[[], None] | None = None
    if isinstance(image_or_emap, str):
        img = open_image(image_or_emap, fmt)
        reader: Reader = img
        opened = img.close
    elif isinstance(image_or_emap, ExtentMap):
        er = ExtentReader(image_or_emap, "volume")
        reader, opened = er, er.close
    else:
        reader = image_or_emap
    try:
        setup = guest_setup(reader)
    finally:
        if opened is not None:
            opened()
    return setup.warnings(disk_bus, mac)


# What ``inspect`` checks against when no domain is given: euca2kvm's own domains use virtio disks.
DEFAULT_DISK_BUS = "virtio"


def attach_config(reader: Reader, report: GuestReport, disk_bus: str = DEFAULT_DISK_BUS,
                  mac: str | None = None) -> GuestSetup:
    """Read the guest configuration of the disk ``report`` describes into ``report.config``, with the
    warnings for a domain with ``disk_bus`` and ``mac``."""
    setup = guest_setup(reader, report)
    d = setup.to_dict()
    d.update(summary=setup.config.summary(), disk_bus=disk_bus, mac=mac,
             warnings=[w.to_dict() for w in setup.warnings(disk_bus, mac)])
    report.config = d
    return setup


def warning_lines(disk: str | ExtentMap | Reader | Callable[[], ExtentMap], disk_bus: str,
                  mac: str | None) -> list[str]:
    """:func:`guest_warnings` as lines for a plan's warnings (``disk`` may also be a function giving
    the extent map, such as a volume's ``extent_map``); a disk that cannot be read at all gives one
    line saying the guest was not checked (plan and export-instance go on: these are warnings)."""
    try:
        source = disk() if callable(disk) else disk
        return [f"guest {w.render()}" if w.file else f"guest not fully checked: {w.message}"
                for w in guest_warnings(source, disk_bus, mac)]
    except Euca2kvmError as e:
        return [f"guest configuration not checked: {clean_text(str(e), 300)}"]
