# SPDX-License-Identifier: Apache-2.0
"""Validating decoder of inventory JSON (``euca2kvm-inventory`` files) into the model of
:mod:`euca2kvm.eucalyptus.inventory`: an inventory file is hostile input (another host wrote it), so
every value is type-checked and every error names the file and the JSON path of what was wrong.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from ..errors import FormatError
from .inventory import (
    FORMAT_NAME,
    FORMAT_VERSION,
    IDENTITY_FIELDS,
    Attachment,
    Instance,
    Inventory,
    SanVolume,
    Snapshot,
    StorageVolume,
    VmType,
    Volume,
)

T = TypeVar("T")
_FIELD_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,39}")  # a name in an instance's "unavailable" list


class Decoder:
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
