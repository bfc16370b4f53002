# SPDX-License-Identifier: Apache-2.0
"""SAN backends (HP 3PAR, NetApp, Dell EqualLogic): LUNs by name, and an attached LUN as a volume.

On a SAN backend each volume and snapshot is a LUN on the array, named ``resourceprefix + volume id +
resourcesuffix`` and exported by the storage controller as an iSCSI target; both are recorded in the
storage schema's ``san_volume_info`` (SANVolumeInfo: ``volumeid``, ``iqn``, ``san_volume_id`` = the LUN
name, ``size`` in GiB, ``status``, ``snapshot_of``; see :func:`.db._san`). euca2kvm never logs in to the
array itself: the operator attaches the LUN read-only on this host (what :func:`attach_hint` prints) and
names the block device with ``--device vol-XXXX=/dev/sdX``. The device is then a volume like a snapshot
file: the raw disk, read from offset 0, in use when mounted, held (dm, md) or open by another process.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
import stat
import struct
from dataclasses import dataclass

from ..errors import FormatError, UsageError
from ..ids import ID_RE
from ..lvm.device import file_size
from ..units import GiB
from .discovery import Volume
from .inuse import SYS_BLOCK, Holder, holders
from .inventory import Inventory, SanVolume

KIND = "san"
MOUNTINFO = "/proc/self/mountinfo"
# mountinfo of a busy host is a few hundred KiB; anything far beyond is not read (bounded).
MAX_MOUNTINFO_BYTES = 8 << 20
# A disk has at most a few hundred partitions (GPT: 128 by default); more entries are not looked at.
MAX_PARTITIONS = 1024
BLKROGET = 0x125E  # <linux/fs.h> _IO(0x12, 94): is the block device read-only?


@dataclass(frozen=True)
class DeviceSpec:
    volume_id: str
    path: str


def parse_device(spec: str) -> DeviceSpec:
    """``vol-XXXX=/dev/sdX`` (``--device``): the id checked, the path absolute; UsageError otherwise."""
    vid, sep, path = spec.partition("=")
    if not sep or not vid or not path:
        raise UsageError(f"--device {spec!r}: expected VOLUME_ID=DEVICE, e.g. vol-0a1b2c3d=/dev/sdc")
    if not ID_RE.match(vid):
        raise UsageError(f"--device {spec!r}: {vid!r} is not a volume or snapshot id (vol-XXXXXXXX, snap-XXXXXXXX)")
    return DeviceSpec(vid, os.path.abspath(path))


def _mounted_devices() -> dict[int, str]:
    """st_rdev -> mount point for every mounted block device (mountinfo field 3 is MAJOR:MINOR)."""
    out: dict[int, str] = {}
    try:
        with open(MOUNTINFO, "rb") as f:
            data = f.read(MAX_MOUNTINFO_BYTES)
    except OSError:
        return out
    for line in data.decode("utf-8", "replace").splitlines():
        parts = line.split(" ")
        if len(parts) > 4 and ":" in parts[2]:
            major, _, minor = parts[2].partition(":")
            if major.isdigit() and minor.isdigit():
                out.setdefault(os.makedev(int(major), int(minor)), parts[4])
    return out


def _partitions(name: str) -> list[str]:
    """/dev paths of the partitions of block device ``name`` (``sdb1``..., ``loop0p1``...)."""
    base = os.path.join(SYS_BLOCK, name)
    try:
        entries = sorted(os.listdir(base))[:MAX_PARTITIONS]
    except OSError:
        return []
    return [f"/dev/{e}" for e in entries if e.startswith(name) and os.path.isfile(os.path.join(base, e, "partition"))]


def device_holders(path: str) -> list[Holder]:
    """Whatever uses the device or one of its partitions: mounted, held by dm/md, open by another process."""
    name = os.path.basename(path)
    parts = [path, *(p for p in _partitions(name) if os.path.exists(p))]
    found = holders(parts)
    mounts = _mounted_devices()
    for p in parts:
        with contextlib.suppress(OSError):
            where = mounts.get(os.stat(p).st_rdev)
            if where is not None:
                found.append(Holder(p, f"mounted on {where}"))
    return found


def is_read_only(path: str) -> bool | None:
    """The kernel's read-only flag of a block device (``blockdev --getro``), None when it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return struct.unpack("i", fcntl.ioctl(fd, BLKROGET, b"\0" * 4))[0] != 0
    except OSError:
        return None
    finally:
        os.close(fd)


def device_volume(spec: DeviceSpec) -> Volume:
    """The attached LUN of ``--device`` as a volume under its id: the raw disk, with its holders.

    Only a block device is accepted (a regular file is a container or snapshot file: name it as a source);
    anything else is a format error (exit 3) naming the path.
    """
    try:
        st = os.stat(spec.path)
    except OSError as e:
        raise UsageError(f"--device {spec.volume_id}={spec.path}: {e.strerror}") from e
    if not stat.S_ISBLK(st.st_mode):
        what = "a regular file (name container and snapshot files as sources)" if stat.S_ISREG(st.st_mode) \
            else "not a block device"
        raise FormatError(f"--device {spec.volume_id}: {what}; expected the attached LUN's block device", spec.path)
    real = os.path.realpath(spec.path)
    return Volume(id=spec.volume_id, kind=KIND, size=file_size(real), files=[real], segment_types=["raw"],
                  in_use=device_holders(real))


def size_problem(vol: Volume, inv: Inventory) -> tuple[str, bool] | None:
    """A device whose size disagrees with the cloud's record: (message, forceable). A smaller device is
    never exported (the disk would be cut); a larger one (an array rounding LUNs up) only with ``--force``,
    which exports the whole device."""
    meta = inv.volume(vol.id)
    sv = inv.san_volume(vol.id)
    gib = meta.size_gib if meta is not None and meta.size_gib is not None else sv.size_gib if sv else None
    if gib is None or vol.size == gib * GiB:
        return None
    dev = vol.files[0] if vol.files else vol.id
    msg = f"{vol.id}: {dev} holds {vol.size} bytes, the cloud records {gib} GiB ({gib * GiB} bytes)"
    if vol.size < gib * GiB:
        return msg + ": not this volume's LUN, or a truncated copy", False
    return msg + "; --force exports the whole device", True


def attach_hint(vid: str, sv: SanVolume | None) -> str:
    """What to attach on this host, read-only, before the export: portal, target IQN, the LUN by name."""
    if sv is None or sv.iqn is None:
        lun = sv.lun_name if sv is not None and sv.lun_name else vid
        return (f"{vid} is a SAN volume (LUN {lun}) without a recorded target IQN: attach its LUN read-only on "
                f"this host and pass --device {vid}=/dev/sdX")
    lun = sv.lun_name or vid
    iqn = shlex.quote(sv.iqn)  # a value from the database, shown inside a command to copy
    return (f"{vid} is LUN {lun} on the SAN, target {sv.iqn}: attach it read-only on this host "
            f"(iscsiadm -m discovery -t sendtargets -p PORTAL; iscsiadm -m node -T {iqn} -p PORTAL --login; "
            f"blockdev --setro /dev/sdX, the disk whose /dev/disk/by-path name ends in -iscsi-{sv.iqn}-lun-N; "
            f"PORTAL is the array's iSCSI address) and pass --device {vid}=/dev/sdX")
