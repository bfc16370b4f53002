# SPDX-License-Identifier: Apache-2.0
"""Cloud inventory: instances, volumes, snapshots and SC storage rows, with a versioned JSON form.

An :class:`Inventory` is produced by :mod:`euca2kvm.eucalyptus.db` (PostgreSQL) or
:mod:`euca2kvm.eucalyptus.api` (EC2 Query API) and can be saved so that an export can be
planned on one host and run on another. The JSON envelope is::

    {"format": "euca2kvm-inventory", "version": 1, "source": ..., "captured_at": ..., ...}

``version`` is the format's major version; readers refuse majors they do not know. A string
``"1.N"`` is accepted as major 1 (a later minor version only adds keys, which are ignored).
Version 1.1 adds each instance's identity: MAC, addresses, DNS names, key, user-data, the NC, and
``unavailable`` (the fields its source could not give, e.g. key material through the API).
Version 1.2 adds ``san_volumes``: each SAN volume's LUN name and target IQN (``san_volume_info``).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ..errors import FormatError, UsageError
from ..outdir import write_atomic
from ..safefs import read_prefix

FORMAT_NAME = "euca2kvm-inventory"
FORMAT_VERSION = 1
FORMAT_MINOR = 2  # 1.1: instance identity fields; 1.2: san_volumes (a 1.0 reader ignores them)
# An inventory of a large cloud is a few MiB; anything far beyond is not ours (bounded read).
MAX_INVENTORY_BYTES = 64 << 20

AttachmentKind = Literal["boot", "runtime"]


@dataclass(frozen=True)
class VmType:
    name: str
    cpus: int | None = None
    memory_mib: int | None = None
    disk_gib: int | None = None


@dataclass(frozen=True)
class Attachment:
    volume_id: str
    device: str | None
    is_root: bool
    kind: AttachmentKind
    status: str | None = None


@dataclass(frozen=True)
class Instance:
    id: str
    state: str | None
    vm_type: VmType | None
    root_device: str | None
    kernel_id: str | None = None
    ramdisk_id: str | None = None
    image_id: str | None = None
    platform: str | None = None
    virtualization_type: str | None = None
    attachments: list[Attachment] = field(default_factory=list)
    # Identity (format 1.1): what the cloud recorded, never derived.
    mac: str | None = None
    private_ip: str | None = None
    public_ip: str | None = None
    private_dns: str | None = None
    public_dns: str | None = None
    key_name: str | None = None
    public_key: str | None = None  # one OpenSSH public key line
    user_data: str | None = None  # base64 of the bytes the cloud stored
    node: str | None = None  # the NC that ran it (service tag)
    unavailable: list[str] = field(default_factory=list)  # fields the source cannot give


@dataclass(frozen=True)
class Volume:
    id: str
    size_gib: int | None
    status: str | None
    zone: str | None = None
    sc_name: str | None = None
    snapshot_id: str | None = None


@dataclass(frozen=True)
class Snapshot:
    id: str
    volume_id: str | None
    status: str | None
    size_gib: int | None = None
    location: str | None = None


@dataclass(frozen=True)
class StorageVolume:
    """One ``iscsivolumeinfo`` row (a volume or a snapshot on the SC), plus export evidence."""

    name: str
    lodev_name: str | None = None
    lofile_name: str | None = None
    vg_name: str | None = None
    lv_name: str | None = None
    pv_name: str | None = None
    size: int | None = None  # GiB, as the SC records it
    status: str | None = None
    snapshot_of: str | None = None
    export_active: bool = False  # an active ``volume_exports`` row exists for this volume
    sc_name: str | None = None
    storename: str | None = None
    tid: int | None = None


@dataclass(frozen=True)
class SanVolume:
    """One ``san_volume_info`` row (SAN backends: a volume or snapshot as a LUN on the array)."""

    volume_id: str
    lun_name: str | None = None  # the LUN's name on the array: resourceprefix + volume id + resourcesuffix
    iqn: str | None = None  # the iSCSI target the SC exports it as
    size_gib: int | None = None
    status: str | None = None
    snapshot_of: str | None = None
    sc_name: str | None = None


IDENTITY_FIELDS = ("mac", "private_ip", "public_ip", "private_dns", "public_dns", "key_name", "public_key",
                   "user_data", "node")


_DEV_RE = re.compile(r"^(?P<prefix>xvd|vd|sd|hd)(?P<letters>[a-z]+)(?P<part>[0-9]*)$")
_CHUNK_RE = re.compile(r"([0-9]+)")


def _short_device(device: str) -> str:
    return device[5:] if device.startswith("/dev/") else device


def device_sort_key(device: str | None) -> tuple[Any, ...]:
    """Natural device order: sda < sdb < ... < sdz < sdaa; xvdf/vdb/sdf ordered by their letter.

    Disk letters are compared as bijective base-26 numbers, so the prefix (sd, vd, xvd, hd) does
    not matter and ``/dev/sdb`` precedes ``vdc``. Names of any other shape sort after, naturally.
    """
    if device is None:
        return (2,)
    short = _short_device(device)
    m = _DEV_RE.match(short)
    if m:
        index = 0
        for ch in m.group("letters"):
            index = index * 26 + (ord(ch) - ord("a") + 1)
        part = int(m.group("part")) if m.group("part") else 0
        return (0, index, part, m.group("prefix"))
    chunks = tuple((0, int(c), "") if c.isdigit() else (1, 0, c) for c in _CHUNK_RE.split(short) if c)
    return (1, chunks)


def _same_device(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and _short_device(a) == _short_device(b)


@dataclass
class Inventory:
    version: int
    source: str
    captured_at: str
    volumes_dir: str | None
    instances: list[Instance] = field(default_factory=list)
    volumes: list[Volume] = field(default_factory=list)
    snapshots: list[Snapshot] = field(default_factory=list)
    storage_volumes: list[StorageVolume] = field(default_factory=list)
    das_devices: list[str] = field(default_factory=list)
    # ceph-rbd backend (eucalyptus_storage.ceph_rbd_info): volume then snapshot pools, user, files
    ceph_pools: list[str] = field(default_factory=list)
    ceph_user: str | None = None
    ceph_conf: str | None = None
    ceph_keyring: str | None = None
    # SAN backends (eucalyptus_storage.san_volume_info, format 1.2)
    san_volumes: list[SanVolume] = field(default_factory=list)

    # -- queries ---------------------------------------------------------------------------

    def instance(self, instance_id: str) -> Instance:
        for inst in self.instances:
            if inst.id == instance_id:
                return inst
        raise UsageError(f"unknown instance id {instance_id!r} (not in the inventory from {self.source})")

    def volume(self, volume_id: str) -> Volume | None:
        return next((v for v in self.volumes if v.id == volume_id), None)

    def snapshot(self, snapshot_id: str) -> Snapshot | None:
        return next((s for s in self.snapshots if s.id == snapshot_id), None)

    def storage_volume(self, name: str) -> StorageVolume | None:
        return next((s for s in self.storage_volumes if s.name == name), None)

    def san_volume(self, volume_id: str) -> SanVolume | None:
        return next((s for s in self.san_volumes if s.volume_id == volume_id), None)

    def boot_volume(self, instance: Instance) -> Attachment | None:
        """The root EBS attachment: flagged root, else the one at the root device, else None."""
        for att in instance.attachments:
            if att.is_root:
                return att
        for kind in ("boot", "runtime"):
            for att in instance.attachments:
                if att.kind == kind and _same_device(att.device, instance.root_device):
                    return att
        return None

    def ordered_volumes(self, instance: Instance) -> list[Attachment]:
        """Boot volume first, then the other attachments in natural device order (one per volume)."""
        boot = self.boot_volume(instance)
        rest = sorted(
            (a for a in instance.attachments if boot is None or a.volume_id != boot.volume_id),
            key=lambda a: (device_sort_key(a.device), a.volume_id),
        )
        out: list[Attachment] = [] if boot is None else [boot]
        seen = {a.volume_id for a in out}
        for att in rest:
            if att.volume_id not in seen:
                seen.add(att.volume_id)
                out.append(att)
        return out

    # -- JSON ------------------------------------------------------------------------------

    def to_json(self) -> str:
        body = asdict(self)
        del body["version"]
        envelope = {"format": FORMAT_NAME, "version": f"{FORMAT_VERSION}.{FORMAT_MINOR}", **body}
        return json.dumps(envelope, indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, filename: str = "<inventory>") -> Inventory:
        try:
            doc = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise FormatError(f"not valid JSON: {e}", path=filename) from e
        from .inventory_decode import Decoder  # only a reader of inventory files needs the validator

        return Decoder(filename).inventory(doc)


def load_inventory(path: str) -> Inventory:
    """Read and validate an inventory file (bounded read)."""
    data = read_prefix(path, MAX_INVENTORY_BYTES)
    if len(data) > MAX_INVENTORY_BYTES:
        raise FormatError(f"larger than {MAX_INVENTORY_BYTES} bytes; not an inventory", path=path)
    return Inventory.from_json(data, filename=path)


def save_inventory(inventory: Inventory, path: str) -> None:
    """Write atomically (O_EXCL temporary in the same directory, fsync, rename; never through a
    symlink at ``path``), readable by the owner only: user-data and key names are in it."""
    write_atomic(path, inventory.to_json(), mode=0o600)
