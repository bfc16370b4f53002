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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypeVar

from ..errors import FormatError, UsageError
from ..outdir import write_atomic
from ..safefs import read_prefix

FORMAT_NAME = "euca2kvm-inventory"
FORMAT_VERSION = 1
FORMAT_MINOR = 2  # 1.1: instance identity fields; 1.2: san_volumes (a 1.0 reader ignores them)
# An inventory of a large cloud is a few MiB; anything far beyond is not ours (bounded read).
MAX_INVENTORY_BYTES = 64 << 20

AttachmentKind = Literal["boot", "runtime"]
T = TypeVar("T")


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


_FIELD_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,39}")
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
        return _Decoder(filename).inventory(doc)


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


class _Decoder:
    """Validating JSON -> model decoder; every error names the file and the JSON path."""

    def __init__(self, filename: str) -> None:
        self.filename = filename

    def fail(self, where: str, what: str) -> FormatError:
        return FormatError(f"{where}: {what}", path=self.filename)

    def obj(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, f"expected an object, got {type(value).__name__}")
        return value

    def str_(self, o: dict[str, Any], key: str, where: str, optional: bool = True) -> str | None:
        v = o.get(key)
        if v is None and optional:
            return None
        if not isinstance(v, str):
            raise self.fail(f"{where}.{key}", "expected a string" + ("" if optional else " (required)"))
        return v

    def req_str(self, o: dict[str, Any], key: str, where: str) -> str:
        v = self.str_(o, key, where, optional=False)
        assert v is not None
        return v

    def int_(self, o: dict[str, Any], key: str, where: str) -> int | None:
        v = o.get(key)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.fail(f"{where}.{key}", "expected an integer")
        return v

    def bool_(self, o: dict[str, Any], key: str, where: str, default: bool) -> bool:
        v = o.get(key, default)
        if not isinstance(v, bool):
            raise self.fail(f"{where}.{key}", "expected true or false")
        return v

    def list_(self, o: dict[str, Any], key: str, where: str, item: Callable[[Any, str], T]) -> list[T]:
        v = o.get(key, [])
        if not isinstance(v, list):
            raise self.fail(f"{where}.{key}", "expected an array")
        return [item(x, f"{where}.{key}[{i}]") for i, x in enumerate(v)]

    def version(self, doc: dict[str, Any]) -> int:
        v = doc.get("version")
        major: int | None = None
        if isinstance(v, int) and not isinstance(v, bool):
            major = v
        elif isinstance(v, str) and re.fullmatch(r"[0-9]{1,6}(\.[0-9]{1,6})?", v):
            major = int(v.split(".")[0])
        if major is None:
            raise self.fail("$.version", "missing or malformed format version")
        if major != FORMAT_VERSION:
            raise self.fail("$.version",
                            f"unsupported format version {v!r} (this tool reads {FORMAT_VERSION})")
        return major

    def inventory(self, doc: Any) -> Inventory:
        d = self.obj(doc, "$")
        if d.get("format") != FORMAT_NAME:
            raise self.fail("$.format", f"expected {FORMAT_NAME!r}, got {d.get('format')!r}")
        version = self.version(d)

        def das(x: Any, w: str) -> str:
            if not isinstance(x, str):
                raise self.fail(w, "expected a string")
            return x

        return Inventory(
            version=version,
            source=self.req_str(d, "source", "$"),
            captured_at=self.req_str(d, "captured_at", "$"),
            volumes_dir=self.str_(d, "volumes_dir", "$"),
            instances=self.list_(d, "instances", "$", self.instance),
            volumes=self.list_(d, "volumes", "$", self.volume),
            snapshots=self.list_(d, "snapshots", "$", self.snapshot),
            storage_volumes=self.list_(d, "storage_volumes", "$", self.storage_volume),
            das_devices=self.list_(d, "das_devices", "$", das),
            ceph_pools=self.list_(d, "ceph_pools", "$", das),
            ceph_user=self.str_(d, "ceph_user", "$"),
            ceph_conf=self.str_(d, "ceph_conf", "$"),
            ceph_keyring=self.str_(d, "ceph_keyring", "$"),
            san_volumes=self.list_(d, "san_volumes", "$", self.san_volume),
        )

    def vm_type(self, value: Any, w: str) -> VmType | None:
        if value is None:
            return None
        o = self.obj(value, w)
        return VmType(
            name=self.req_str(o, "name", w),
            cpus=self.int_(o, "cpus", w),
            memory_mib=self.int_(o, "memory_mib", w),
            disk_gib=self.int_(o, "disk_gib", w),
        )

    def attachment(self, value: Any, w: str) -> Attachment:
        o = self.obj(value, w)
        kind = o.get("kind")
        if kind not in ("boot", "runtime"):
            raise self.fail(f"{w}.kind", f"expected 'boot' or 'runtime', got {kind!r}")
        return Attachment(
            volume_id=self.req_str(o, "volume_id", w),
            device=self.str_(o, "device", w),
            is_root=self.bool_(o, "is_root", w, False),
            kind=kind,
            status=self.str_(o, "status", w),
        )

    def instance(self, value: Any, w: str) -> Instance:
        o = self.obj(value, w)
        return Instance(
            id=self.req_str(o, "id", w),
            state=self.str_(o, "state", w),
            vm_type=self.vm_type(o.get("vm_type"), f"{w}.vm_type"),
            root_device=self.str_(o, "root_device", w),
            kernel_id=self.str_(o, "kernel_id", w),
            ramdisk_id=self.str_(o, "ramdisk_id", w),
            image_id=self.str_(o, "image_id", w),
            platform=self.str_(o, "platform", w),
            virtualization_type=self.str_(o, "virtualization_type", w),
            attachments=self.list_(o, "attachments", w, self.attachment),
            **{k: self.str_(o, k, w) for k in IDENTITY_FIELDS},
            unavailable=self.list_(o, "unavailable", w, self.name),
        )

    def name(self, value: Any, w: str) -> str:
        if not isinstance(value, str) or not _FIELD_NAME_RE.fullmatch(value):  # later minors may add names
            raise self.fail(w, f"expected a field name, got {value!r}")
        return value

    def volume(self, value: Any, w: str) -> Volume:
        o = self.obj(value, w)
        return Volume(
            id=self.req_str(o, "id", w),
            size_gib=self.int_(o, "size_gib", w),
            status=self.str_(o, "status", w),
            zone=self.str_(o, "zone", w),
            sc_name=self.str_(o, "sc_name", w),
            snapshot_id=self.str_(o, "snapshot_id", w),
        )

    def snapshot(self, value: Any, w: str) -> Snapshot:
        o = self.obj(value, w)
        return Snapshot(
            id=self.req_str(o, "id", w),
            volume_id=self.str_(o, "volume_id", w),
            status=self.str_(o, "status", w),
            size_gib=self.int_(o, "size_gib", w),
            location=self.str_(o, "location", w),
        )

    def storage_volume(self, value: Any, w: str) -> StorageVolume:
        o = self.obj(value, w)
        return StorageVolume(
            name=self.req_str(o, "name", w),
            lodev_name=self.str_(o, "lodev_name", w),
            lofile_name=self.str_(o, "lofile_name", w),
            vg_name=self.str_(o, "vg_name", w),
            lv_name=self.str_(o, "lv_name", w),
            pv_name=self.str_(o, "pv_name", w),
            size=self.int_(o, "size", w),
            status=self.str_(o, "status", w),
            snapshot_of=self.str_(o, "snapshot_of", w),
            export_active=self.bool_(o, "export_active", w, False),
            sc_name=self.str_(o, "sc_name", w),
            storename=self.str_(o, "storename", w),
            tid=self.int_(o, "tid", w),
        )

    def san_volume(self, value: Any, w: str) -> SanVolume:
        o = self.obj(value, w)
        return SanVolume(
            volume_id=self.req_str(o, "volume_id", w),
            lun_name=self.str_(o, "lun_name", w),
            iqn=self.str_(o, "iqn", w),
            size_gib=self.int_(o, "size_gib", w),
            status=self.str_(o, "status", w),
            snapshot_of=self.str_(o, "snapshot_of", w),
            sc_name=self.str_(o, "sc_name", w),
        )
