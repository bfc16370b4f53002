# SPDX-License-Identifier: Apache-2.0
"""read_inventory_db against a real private PostgreSQL holding both Eucalyptus layouts."""

from __future__ import annotations

import base64
import json
import socket

import pytest
from pg import ROLE_PASSWORD, PgServer

from _env import missing
from euca2kvm.errors import ToolError, UsageError
from euca2kvm.eucalyptus import pgread
from euca2kvm.eucalyptus.db import read_inventory_db
from euca2kvm.eucalyptus.inventory import Inventory, VmType, load_inventory, save_inventory


def _content(inv: Inventory) -> dict[str, object]:
    doc = json.loads(inv.to_json())
    del doc["source"], doc["captured_at"]
    return doc


def _check_cloud(inv: Inventory, virtualization: bool = True) -> None:
    assert [i.id for i in inv.instances] == ["i-0123456789abcdef0", "i-1a2b3c4d", "i-5e6f7a8b"]
    run = inv.instance("i-1a2b3c4d")
    assert run.state == "running"
    assert run.vm_type == VmType("m1.small", cpus=1, memory_mib=256, disk_gib=5)
    assert run.root_device == "/dev/sda"
    assert run.image_id == "emi-0b1c2d3e" and run.platform == "linux"
    assert run.virtualization_type == ("hvm" if virtualization else None)
    boot = inv.boot_volume(run)
    assert boot is not None and (boot.volume_id, boot.kind, boot.is_root) == ("vol-4708bf47", "boot", True)
    ordered = inv.ordered_volumes(run)
    assert [(a.volume_id, a.device, a.kind) for a in ordered] == [
        ("vol-4708bf47", "/dev/sda", "boot"),
        ("vol-0000da7a", "/dev/vdf", "runtime"),
        ("vol-0000da7b", "/dev/vdg", "runtime"),
    ]
    stopped = inv.instance("i-5e6f7a8b")
    assert stopped.state == "stopped"
    assert stopped.vm_type == VmType("c1.medium", cpus=2, memory_mib=512, disk_gib=10)
    assert (stopped.kernel_id, stopped.ramdisk_id, stopped.root_device) == ("eki-11223344", "eri-55667788", "sda1")
    assert [(a.volume_id, a.status) for a in inv.ordered_volumes(stopped)] == [("vol-77778888", "detached")]
    gone = inv.instance("i-0123456789abcdef0")
    assert gone.state == "terminated" and gone.attachments == [] and inv.boot_volume(gone) is None
    with pytest.raises(UsageError):
        inv.instance("i-00000000")


def _check_identity(inv: Inventory, key_column: bool = True) -> None:
    """What metadata_instances records, normalised; hostile values dropped, never passed on."""
    run = inv.instance("i-1a2b3c4d")
    assert (run.mac, run.private_ip, run.public_ip) == ("d0:0d:1a:2b:3c:4d", "172.16.4.21", "10.111.5.77")
    assert (run.private_dns, run.public_dns) == ("euca-172-16-4-21.eucalyptus.internal",
                                                 "euca-10-111-5-77.eucalyptus.example.com")
    assert run.node == "http://10.1.0.21:8775/axis2/services/EucalyptusNC"
    assert run.platform == "linux"
    assert base64.b64decode(run.user_data or "") == b"#!/bin/sh\necho provisioned > /root/first-boot\n"
    if key_column:
        assert run.public_key is not None and run.public_key.startswith("ssh-rsa AAAAB3NzaC1yc2E")
        assert run.key_name == "ops-key" and run.unavailable == []
    else:
        assert (run.public_key, run.key_name) == (None, None)
        assert run.unavailable == ["key_name", "public_key"]
    stopped = inv.instance("i-5e6f7a8b")
    assert (stopped.mac, stopped.private_ip, stopped.public_ip, stopped.public_dns) == (
        "d0:0d:5e:6f:7a:8b", "172.16.4.22", None, None)  # 0.0.0.0 and '' are "none", not values
    assert (stopped.public_key, stopped.key_name, stopped.user_data) == (None, None, None)
    gone = inv.instance("i-0123456789abcdef0")
    assert (gone.mac, gone.private_ip, gone.private_dns, gone.public_key) == (None, None, None, None)


def _check_storage(inv: Inventory) -> None:
    vols = {v.id: v for v in inv.volumes}
    assert sorted(vols) == ["vol-0000da7a", "vol-0000da7b", "vol-0fedcba987654321f", "vol-4708bf47",
                            "vol-5c000001", "vol-77778888", "vol-dead0001"]
    assert (vols["vol-4708bf47"].status, vols["vol-4708bf47"].size_gib) == ("in-use", 1)
    assert vols["vol-0000da7b"].status == "in-use" and vols["vol-0000da7b"].snapshot_id is None  # '' -> None
    assert vols["vol-77778888"].status == "available"  # its instance is stopped, attachment detached
    assert vols["vol-0fedcba987654321f"].snapshot_id == "snap-5e6f7a8b"
    assert vols["vol-dead0001"].status == "deleted"
    assert (vols["vol-5c000001"].status, vols["vol-5c000001"].size_gib) == ("failed", 4)  # SC-only row
    assert (vols["vol-4708bf47"].zone, vols["vol-4708bf47"].sc_name) == ("one", "one")
    snaps = {s.id: s for s in inv.snapshots}
    assert snaps["snap-5e6f7a8b"].status == "completed" and snaps["snap-5e6f7a8b"].volume_id == "vol-4708bf47"
    assert snaps["snap-5e6f7a8b"].location == (
        "snapshots://objectstoragegateway/snapshots-0f1e2d3c4b5a69788796a5b4c3d2e1f0/snap-5e6f7a8b")
    assert (snaps["snap-99990000"].status, snaps["snap-99990000"].size_gib) == ("pending", 2)
    assert inv.volumes_dir == "/srv/euca/volumes"
    assert inv.das_devices == []
    sv = {s.name: s for s in inv.storage_volumes}
    boot = sv["vol-4708bf47"]
    assert (boot.lodev_name, boot.vg_name, boot.lv_name, boot.size) == (
        "/dev/loop3", "euca-ebs-storage-vg-vol-4708bf47", "euca-vol-4708bf47", 1)
    assert boot.export_active and boot.tid == 1 and boot.storename == "iqn.2009-06.com.eucalyptus.one:store1"
    legacy = sv["vol-77778888"]
    assert (legacy.vg_name, legacy.lv_name, legacy.lodev_name, legacy.export_active) == (
        "vg-Yw9n", "lv-Q2xp", None, False)
    snap = sv["snap-5e6f7a8b"]
    assert (snap.snapshot_of, snap.lofile_name) == ("vol-4708bf47", "/srv/euca/volumes/snap-5e6f7a8b")
    assert [n for n, s in sorted(sv.items()) if s.export_active] == ["vol-0000da7a", "vol-0000da7b",
                                                                     "vol-4708bf47"]


def test_shared_layout_explicit_database(pg_shared: PgServer) -> None:
    inv = read_inventory_db(pg_shared.url("eucalyptus_shared"))
    assert "4.1+" in inv.source and "eucalyptus_shared" in inv.source
    assert ROLE_PASSWORD not in inv.source
    _check_cloud(inv)
    _check_identity(inv)
    _check_storage(inv)


def test_shared_layout_probed_and_json_roundtrip(pg_shared: PgServer, tmp_path: object) -> None:
    inv = read_inventory_db(pg_shared.url(None))
    assert "4.1+" in inv.source
    _check_cloud(inv)
    assert Inventory.from_json(inv.to_json()) == inv
    assert json.loads(inv.to_json())["version"] == "1.2"
    path = f"{tmp_path}/inv.json"
    save_inventory(inv, path)
    again = load_inventory(path)
    assert again == inv
    _check_cloud(again)
    _check_identity(again)
    _check_storage(again)


def test_40_layout_explicit_and_probed(pg_40: PgServer, pg_shared: PgServer) -> None:
    for url in (pg_40.url("eucalyptus_cloud"), pg_40.url("eucalyptus_storage"), pg_40.url(None)):
        inv = read_inventory_db(url)
        assert "4.0" in inv.source
        _check_cloud(inv, virtualization=False)  # the column does not exist there: NULL, not a failure
        _check_identity(inv, key_column=False)
        _check_storage(inv)
    shared = _content(read_inventory_db(pg_shared.url("eucalyptus_shared")))
    for inst in shared["instances"]:  # type: ignore[attr-defined]
        inst["virtualization_type"] = None
        inst["public_key"] = inst["key_name"] = None
        inst["unavailable"] = ["key_name", "public_key"]
    assert _content(inv) == shared


def test_unix_socket_url(pg_shared: PgServer) -> None:
    inv = read_inventory_db(f"postgresql://postgres@/eucalyptus_shared?host={pg_shared.sock}&port={pg_shared.port}")
    _check_cloud(inv)


def test_session_is_read_only(pg_shared: PgServer) -> None:
    p = pgread.parse_url(pg_shared.url("eucalyptus_shared"))
    with pytest.raises(ToolError, match="read-only transaction"), pgread.session(p, "eucalyptus_shared") as cur:
        cur.execute("CREATE TABLE eucalyptus_cloud.scratch (i int)")
    with pgread.session(p, "eucalyptus_shared") as cur:
        cur.execute("SHOW transaction_read_only")
        assert cur.fetchone()[0] == "on"
        cur.execute("SHOW transaction_isolation")
        assert cur.fetchone()[0] == "repeatable read"


def test_statement_timeout(pg_shared: PgServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pgread, "STATEMENT_TIMEOUT_MS", 50)
    p = pgread.parse_url(pg_shared.url("eucalyptus_shared"))
    with pytest.raises(ToolError, match="statement timeout"), pgread.session(p, "eucalyptus_shared") as cur:
        cur.execute("SELECT pg_sleep(2)")


def test_wrong_password_names_target_not_secret(pg_shared: PgServer) -> None:
    url = pg_shared.url("eucalyptus_shared").replace(ROLE_PASSWORD, "Wr0ng-Secret-Value")
    with pytest.raises(ToolError) as ei:
        read_inventory_db(url)
    msg = str(ei.value)
    assert f"eucalyptus@127.0.0.1:{pg_shared.port}/eucalyptus_shared" in msg
    assert "password authentication failed" in msg
    assert "Wr0ng-Secret-Value" not in msg and ROLE_PASSWORD not in msg


def test_default_port_is_8777() -> None:
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", 8777)) == 0:
            missing("127.0.0.1:8777 must be free: something (a real Eucalyptus database?) listens there")
    with pytest.raises(ToolError, match=r"eucalyptus@127\.0\.0\.1:8777/eucalyptus_shared") as ei:
        read_inventory_db("postgresql://eucalyptus:Pw-Not-Shown@127.0.0.1/eucalyptus_shared")
    assert "Pw-Not-Shown" not in str(ei.value)


def test_not_a_eucalyptus_database(pg_shared: PgServer) -> None:
    with pytest.raises(UsageError, match="no schema eucalyptus_cloud"):
        read_inventory_db(pg_shared.url("postgres"))
    with pytest.raises(UsageError, match="nonexistent_db do not exist"):
        read_inventory_db(pg_shared.url("nonexistent_db"))


def test_no_eucalyptus_database_when_probing(pg_shared: PgServer) -> None:  # needs a server here
    srv = PgServer()
    try:
        srv.start()
        with pytest.raises(UsageError, match="eucalyptus_shared, eucalyptus_cloud do not exist"):
            read_inventory_db(srv.url(None))
    finally:
        srv.stop()


@pytest.mark.parametrize("url", ["postgresql://u@h:notaport/db", "host=x port=abc", "nonsense = = ="])
def test_malformed_url(url: str) -> None:
    with pytest.raises(UsageError):
        read_inventory_db(url)
