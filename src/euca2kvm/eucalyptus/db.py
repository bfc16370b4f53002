# SPDX-License-Identifier: Apache-2.0
"""Read the cloud inventory straight from the CLC's PostgreSQL (read-only).

Two layouts exist:

* Eucalyptus 4.1 and later: one database ``eucalyptus_shared`` with the schemas
  ``eucalyptus_cloud`` and ``eucalyptus_storage``;
* Eucalyptus 4.0: separate databases ``eucalyptus_cloud`` and ``eucalyptus_storage`` (tables
  in ``public``).

The URL's database chooses the layout; without one, ``eucalyptus_shared`` is probed first and
the 4.0 databases second. Every read runs in one ``REPEATABLE READ, READ ONLY`` transaction per
database, under a statement timeout. Columns are looked up in ``information_schema`` first, so
a column a given release lacks reads as NULL instead of failing the whole inventory.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import UsageError
from . import identity
from .inventory import (
    FORMAT_VERSION,
    Attachment,
    AttachmentKind,
    Instance,
    Inventory,
    SanVolume,
    Snapshot,
    StorageVolume,
    VmType,
    Volume,
)
from .pgread import MissingDatabase, Params, Tables, parse_url, session

SHARED_DB = "eucalyptus_shared"
CLOUD = "eucalyptus_cloud"
STORAGE = "eucalyptus_storage"

_VOLUME_STATES = {
    "GENERATING": "creating", "EXTANT": "available", "BUSY": "in-use", "ANNIHILATING": "deleting",
    "ANNIHILATED": "deleted", "FAIL": "failed", "ERROR": "error", "NIHIL": "unknown",
}
_SNAPSHOT_STATES = {
    "GENERATING": "pending", "EXTANT": "completed", "ANNIHILATING": "deleting", "ANNIHILATED": "deleted",
    "FAIL": "failed", "ERROR": "error", "NIHIL": "unknown",
}


def _s(v: Any) -> str | None:
    if v is None:
        return None
    s = v if isinstance(v, str) else str(v)
    return s if s.strip() else None


def _i(v: Any) -> int | None:
    if v is None or isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    try:
        return int(str(v).strip())
    except ValueError:
        return None


def _state(v: Any, table: dict[str, str]) -> str | None:
    s = _s(v)
    if s is None:
        return None
    return table.get(s.upper(), s.lower())


def _vm_state(v: Any) -> str | None:
    s = _s(v)
    return None if s is None else s.lower().replace("_", "-")  # SHUTTING_DOWN -> shutting-down


def _read_cloud(t: Tables) -> tuple[list[Instance], list[Volume], list[Snapshot]]:
    vm_types = {
        _s(r["id"]): VmType(name=_s(r["config_vm_type_name"]) or "?", cpus=_i(r["config_vm_type_cpu"]),
                            memory_mib=_i(r["config_vm_type_memory"]), disk_gib=_i(r["config_vm_type_disk"]))
        for r in t.rows("cloud_vm_type", ["id", "config_vm_type_name", "config_vm_type_cpu",
                                          "config_vm_type_memory", "config_vm_type_disk"])
    }
    att_cols = ["vminstance_id", "metadata_vm_volume_id", "metadata_vm_volume_device",
                "metadata_vm_volume_is_root_device", "metadata_vm_volume_status"]
    attachments: dict[str, list[Attachment]] = {}
    sources: list[tuple[str, AttachmentKind]] = [
        ("metadata_instances_persistent_volumes", "boot"),
        ("metadata_instances_volume_attachments", "runtime"),
    ]
    for table, kind in sources:
        for r in t.rows(table, att_cols):
            vol, owner = _s(r["metadata_vm_volume_id"]), _s(r["vminstance_id"])
            if vol is None or owner is None:
                continue
            attachments.setdefault(owner, []).append(Attachment(
                volume_id=vol, device=_s(r["metadata_vm_volume_device"]),
                is_root=r["metadata_vm_volume_is_root_device"] is True, kind=kind,
                status=_s(r["metadata_vm_volume_status"])))
    instances: list[Instance] = []
    for r in t.rows("metadata_instances", [
            "id", "metadata_display_name", "metadata_state", "metadata_vm_type_id",
            "metadata_vm_machine_image_id", "metadata_vm_kernel_image_id", "metadata_vm_ramdisk_image_id",
            "metadata_vm_platform", "metadata_vm_virtualization_type", *identity.DB_COLUMNS], required=True):
        iid = _s(r["metadata_display_name"])
        if iid is None:
            continue
        atts = sorted(attachments.get(_s(r["id"]) or "", []),
                      key=lambda a: (a.kind, a.device or "", a.volume_id))
        root = next((a.device for a in atts if a.is_root), None)
        instances.append(Instance(
            id=iid, state=_vm_state(r["metadata_state"]), vm_type=vm_types.get(_s(r["metadata_vm_type_id"])),
            root_device=root, kernel_id=_s(r["metadata_vm_kernel_image_id"]),
            ramdisk_id=_s(r["metadata_vm_ramdisk_image_id"]), image_id=_s(r["metadata_vm_machine_image_id"]),
            platform=_s(r["metadata_vm_platform"]),
            virtualization_type=_s(r["metadata_vm_virtualization_type"]), attachments=atts,
            **identity.from_db_row(r, t.absent.get("metadata_instances", set()))))
    attached = {a.volume_id for i in instances if i.state not in ("terminated", "buried")
                for a in i.attachments if a.status not in ("detached", "failed")}
    volumes: list[Volume] = []
    for r in t.rows("metadata_volumes", [
            "metadata_display_name", "metadata_state", "metadata_volume_size", "metadata_volume_partition",
            "metadata_volume_sc_name", "metadata_volume_parentsnapshot"], required=True):
        vid = _s(r["metadata_display_name"])
        if vid is None:
            continue
        status = _state(r["metadata_state"], _VOLUME_STATES)
        if status == "available" and vid in attached:
            status = "in-use"
        volumes.append(Volume(id=vid, size_gib=_i(r["metadata_volume_size"]), status=status,
                              zone=_s(r["metadata_volume_partition"]),
                              sc_name=_s(r["metadata_volume_sc_name"]),
                              snapshot_id=_s(r["metadata_volume_parentsnapshot"])))
    snapshots = [
        Snapshot(id=sid, volume_id=_s(r["metadata_snapshot_parentvolume"]),
                 status=_state(r["metadata_state"], _SNAPSHOT_STATES),
                 size_gib=_i(r["metadata_snapshot_vol_size"]))
        for r in t.rows("metadata_snapshots", ["metadata_display_name", "metadata_snapshot_parentvolume",
                                               "metadata_state", "metadata_snapshot_vol_size"])
        if (sid := _s(r["metadata_display_name"])) is not None
    ]
    return instances, volumes, snapshots


@dataclass
class _StorageData:
    volumes: list[dict[str, Any]]
    snapshots: list[dict[str, Any]]
    storage_volumes: list[StorageVolume]
    volumes_dir: str | None
    das_devices: list[str]
    backend: dict[str, Any]  # Inventory's ceph_* and san_volumes fields


def _read_storage(t: Tables) -> _StorageData:
    sc_volumes = t.rows("volumes", ["id", "volume_name", "size", "status", "zone", "snapshot_id", "sc_name"],
                        required=True)
    sc_snapshots = t.rows("snapshots", ["snapshot_name", "volume_name", "status", "snapshot_size_gb",
                                        "snapshot_location", "sc_name"])
    row_names = {_s(r["id"]): _s(r["volume_name"]) for r in sc_volumes}
    exported = {row_names.get(_s(r["volume"])) for r in t.rows("volume_exports", ["volume", "is_active"])
                if r["is_active"] is True}
    storage_volumes = []
    iscsi_cols = ["volume_name", "lodev_name", "lofile_name", "pv_name", "vg_name", "lv_name", "size",
                  "status", "snapshot_of", "sc_name", "storename", "tid"]
    for r in t.rows("iscsivolumeinfo", iscsi_cols):
        name = _s(r["volume_name"])
        if name is None:
            continue
        storage_volumes.append(StorageVolume(
            name=name, lodev_name=_s(r["lodev_name"]), lofile_name=_s(r["lofile_name"]),
            vg_name=_s(r["vg_name"]), lv_name=_s(r["lv_name"]), pv_name=_s(r["pv_name"]), size=_i(r["size"]),
            status=_s(r["status"]), snapshot_of=_s(r["snapshot_of"]), export_active=name in exported,
            sc_name=_s(r["sc_name"]), storename=_s(r["storename"]), tid=_i(r["tid"])))
    dirs = sorted({d for r in t.rows("direct_storage_info", ["system_storage_volumes_dir"])
                   if (d := _s(r["system_storage_volumes_dir"])) is not None})
    das = sorted({d for r in t.rows("das_info", ["das_device"]) if (d := _s(r["das_device"])) is not None})
    return _StorageData(sc_volumes, sc_snapshots, sorted(storage_volumes, key=lambda s: s.name),
                        dirs[0] if dirs else None, das, {**_ceph(t), **_san(t)})


def _ceph(t: Tables) -> dict[str, Any]:
    """The ceph-rbd backend's settings (CephRbdInfo: storage.cephvolumepools/cephsnapshotpools are
    comma-separated pool lists, storage.cephuser the cephx user); empty when the table is absent."""
    rows = t.rows("ceph_rbd_info", ["ceph_volume_pools", "ceph_snapshot_pools", "ceph_user", "ceph_config_file",
                                    "ceph_keyring_file"])
    if not rows:
        return {}
    r = rows[0]
    pools = [p.strip() for k in ("ceph_volume_pools", "ceph_snapshot_pools") for p in (_s(r[k]) or "").split(",")]
    return {"ceph_pools": list(dict.fromkeys(p for p in pools if p)), "ceph_user": _s(r["ceph_user"]),
            "ceph_conf": _s(r["ceph_config_file"]), "ceph_keyring": _s(r["ceph_keyring_file"])}


def _san(t: Tables) -> dict[str, Any]:
    """SAN backends' LUNs (SANVolumeInfo, table san_volume_info): the LUN name is ``san_volume_id`` (the
    array's resourceprefix + volume id + resourcesuffix; rows from before 4.0 lack it: the volume id). The
    CHAP user and password (storeuser, encryptedpassword) are not read."""
    out = []
    for r in t.rows("san_volume_info", ["volumeid", "iqn", "san_volume_id", "size", "status", "snapshot_of",
                                        "scname"]):
        vid = _s(r["volumeid"])
        if vid is not None:
            out.append(SanVolume(volume_id=vid, lun_name=_s(r["san_volume_id"]) or vid, iqn=_s(r["iqn"]),
                                 size_gib=_i(r["size"]), status=_s(r["status"]), snapshot_of=_s(r["snapshot_of"]),
                                 sc_name=_s(r["scname"])))
    return {"san_volumes": sorted(out, key=lambda s: s.volume_id)} if out else {}


V = TypeVar("V", int, str)


def _prefer(clc: V | None, sc: V | None) -> V | None:
    """The CLC's value when it has one (0 is a value, an empty string is not), else the SC's."""
    return clc if clc is not None and clc != "" else sc


def _merge(
    volumes: list[Volume], snapshots: list[Snapshot], st: _StorageData
) -> tuple[list[Volume], list[Snapshot]]:
    """CLC rows win; the SC fills gaps and contributes volumes/snapshots the CLC no longer lists."""
    by_id = {v.id: v for v in volumes}
    for r in st.volumes:
        vid = _s(r["volume_name"])
        if vid is None:
            continue
        clc = by_id.get(vid) or Volume(vid, None, None)
        by_id[vid] = Volume(
            id=vid,
            size_gib=_prefer(clc.size_gib, _i(r["size"])),
            status=_prefer(clc.status, _s(r["status"])),
            zone=_prefer(clc.zone, _s(r["zone"])),
            sc_name=_prefer(clc.sc_name, _s(r["sc_name"])),
            snapshot_id=_prefer(clc.snapshot_id, _s(r["snapshot_id"])),
        )
    snaps = {s.id: s for s in snapshots}
    for r in st.snapshots:
        sid = _s(r["snapshot_name"])
        if sid is None:
            continue
        clc_s = snaps.get(sid) or Snapshot(sid, None, None)
        snaps[sid] = Snapshot(
            id=sid,
            volume_id=_prefer(clc_s.volume_id, _s(r["volume_name"])),
            status=_prefer(clc_s.status, _s(r["status"])),
            size_gib=_prefer(clc_s.size_gib, _i(r["snapshot_size_gb"])),
            location=_s(r["snapshot_location"]),
        )
    return sorted(by_id.values(), key=lambda v: v.id), sorted(snaps.values(), key=lambda s: s.id)


def _read_pair(p: Params, cloud: tuple[str, str], storage: tuple[str, str]) -> tuple[Any, _StorageData]:
    (cloud_db, cloud_schema), (storage_db, storage_schema) = cloud, storage
    if cloud_db == storage_db:
        with session(p, cloud_db) as cur:
            for schema in (cloud_schema, storage_schema):
                if not Tables(cur, schema, p.where(cloud_db)).schema_exists():
                    raise UsageError(f"database {p.where(cloud_db)} has no schema {schema}: "
                                     "not a Eucalyptus 4.1+ database")
            return (_read_cloud(Tables(cur, cloud_schema, p.where(cloud_db))),
                    _read_storage(Tables(cur, storage_schema, p.where(cloud_db))))
    with session(p, cloud_db) as cur:
        c = _read_cloud(Tables(cur, cloud_schema, p.where(cloud_db)))
    with session(p, storage_db) as cur:
        s = _read_storage(Tables(cur, storage_schema, p.where(storage_db)))
    return c, s


def _read_layout(p: Params) -> tuple[Any, _StorageData, str, str]:
    shared = ((SHARED_DB, CLOUD), (SHARED_DB, STORAGE))
    separate = ((CLOUD, "public"), (STORAGE, "public"))
    if p.dbname in (CLOUD, STORAGE):
        layouts = [("4.0", separate)]
    elif p.dbname is not None:
        layouts = [("4.1+", ((p.dbname, CLOUD), (p.dbname, STORAGE)))]
    else:
        layouts = [("4.1+", shared), ("4.0", separate)]
    missing: list[str] = []
    for name, (cloud, storage) in layouts:
        try:
            c, s = _read_pair(p, cloud, storage)
        except MissingDatabase as e:
            missing.append(e.dbname)
            continue
        db = cloud[0] if cloud[0] == storage[0] else f"{{{cloud[0]},{storage[0]}}}"
        return c, s, name, db
    raise UsageError(f"no Eucalyptus database on {p.user}@{p.host}:{p.port}: "
                     f"database(s) {', '.join(missing)} do not exist")


def read_inventory_db(url: str) -> Inventory:
    """Inventory from a CLC database URL, e.g. ``postgresql://eucalyptus:PW@clc:8777/eucalyptus_shared``.

    The port defaults to 8777; a password may also come from ``PGPASSWORD``/``~/.pgpass``.
    Raises UsageError (bad URL, not a Eucalyptus database), ToolError (connection or query
    failure; the message names user, host, port and database, never the password).
    """
    p = parse_url(url)
    (instances, volumes, snapshots), storage, layout, db = _read_layout(p)
    volumes, snapshots = _merge(volumes, snapshots, storage)
    return Inventory(
        version=FORMAT_VERSION,
        source=f"postgresql://{p.user}@{p.host}:{p.port}/{db} (Eucalyptus {layout} layout)",
        captured_at=_dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        volumes_dir=storage.volumes_dir,
        instances=sorted(instances, key=lambda i: i.id),
        volumes=volumes,
        snapshots=snapshots,
        storage_volumes=storage.storage_volumes,
        das_devices=storage.das_devices,
        **storage.backend,
    )
