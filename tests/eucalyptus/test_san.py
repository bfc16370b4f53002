# SPDX-License-Identifier: Apache-2.0
"""SAN LUNs by name: the inventory from the real PostgreSQL fixture lists each LUN and its target IQN (never the
CHAP password); ``--device VOL=DEV`` exports an attached LUN (a read-only loop device standing in for it) under
the volume id, byte for byte; ``export-instance`` builds a domain whose boot disk is that LUN; a device open by
another process or mounted is in use (exit 4); a plan without the device says which target to attach (exit 2);
a regular file or a device of the wrong size is a format error (exit 3), a larger device only with --force."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pg import PgServer

from _env import need_root, need_tools
from clirun import euca2kvm
from euca2kvm.errors import EXIT_FORMAT, EXIT_IN_USE, EXIT_USAGE
from euca2kvm.eucalyptus import san
from euca2kvm.eucalyptus.db import read_inventory_db
from euca2kvm.eucalyptus.inventory import Inventory
from refdigest import file_sha256 as sha
from test_schemas import errors as schema_errors

MiB = 1 << 20
LUN_BYTES = 6 * MiB
# Exports of a few MiB take about a second; minutes mean a hang.
GARBAGE = b"\xa5" * 4096
VID = "vol-5a000001"
IQN = "iqn.1992-08.com.netapp:sn.4082367740:vs.3"


cli = euca2kvm




def outdir(tmp_path: Path) -> Path:
    """An output directory holding a stranger's file, which must survive every run untouched."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "victim.bin").write_bytes(GARBAGE)
    return out


@contextlib.contextmanager
def loop(path: Path) -> Iterator[str]:
    """A read-only loop device on ``path``: the stand-in for an attached LUN; detached by its name."""
    dev = subprocess.run(["losetup", "-r", "--find", "--show", str(path)], capture_output=True, text=True,
                         check=True, timeout=30).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False, timeout=30)


@pytest.fixture
def lun(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A LUN of random bytes with a zero run in the middle, attached read-only."""
    need_root()
    need_tools("losetup")
    f = tmp_path / "lun.img"
    f.write_bytes(os.urandom(2 * MiB) + bytes(2 * MiB) + os.urandom(2 * MiB))
    with loop(f) as dev:
        yield dev, f


def inventory_file(tmp_path: Path, size_gib: int | None, iqn: str | None = IQN) -> Path:
    """An inventory whose instance boots from SAN volume VID (and has no other disk)."""
    inst = {"id": "i-5a000001", "state": "stopped", "root_device": "/dev/sda",
            "vm_type": {"name": "m1.small", "cpus": 1, "memory_mib": 256},
            "attachments": [{"volume_id": VID, "device": "/dev/sda", "is_root": True, "kind": "boot"}]}
    doc: dict[str, Any] = {
        "format": "euca2kvm-inventory", "version": "1.2", "source": "test", "captured_at": "2026-01-01T00:00:00Z",
        "volumes_dir": None, "instances": [inst],
        "volumes": [{"id": VID, "size_gib": size_gib, "status": "in-use"}],
        "san_volumes": [{"volume_id": VID, "lun_name": f"euca-{VID}-lun", "iqn": iqn, "size_gib": size_gib}],
    }
    f = tmp_path / "inventory.json"
    f.write_text(json.dumps(doc))
    return f


def test_inventory_from_postgresql_lists_lun_names_and_iqns(pg_shared: PgServer, tmp_path: Path) -> None:
    inv = read_inventory_db(pg_shared.url("eucalyptus_shared"))
    by_id = {s.volume_id: s for s in inv.san_volumes}
    assert set(by_id) == {"vol-5a000001", "snap-5a000002", "vol-5a000003"}
    assert (by_id[VID].lun_name, by_id[VID].iqn, by_id[VID].size_gib) == (f"euca-{VID}-lun", IQN, 2)
    assert by_id["snap-5a000002"].snapshot_of == VID
    assert by_id["vol-5a000003"].lun_name == "vol-5a000003"  # a row from before 4.0: the LUN is named by the id
    text = inv.to_json()
    assert "SECRET-CHAP" not in text  # the CHAP password is never read
    doc = json.loads(text)
    assert schema_errors("inventory", doc) == []
    assert doc["version"] == "1.2"
    assert Inventory.from_json(text).san_volumes == inv.san_volumes


def test_export_device_under_its_volume_id_equals_the_lun(lun: tuple[str, Path], tmp_path: Path) -> None:
    dev, image = lun
    out = outdir(tmp_path)
    cli("export", VID, "--device", f"{VID}={dev}", "-o", str(out), "--sha256")
    img = out / f"{VID}.raw"
    entry = {e["id"]: e for e in json.loads((out / "manifest.json").read_text())["volumes"]}[VID]
    assert sha(img) == sha(image) == entry["sha256"] and entry["verified"] is True
    assert img.stat().st_blocks * 512 < LUN_BYTES  # the zero run stays a hole
    assert (out / "victim.bin").read_bytes() == GARBAGE
    cli("verify", str(out))
    empty = tmp_path / "empty"
    empty.mkdir()
    doc = json.loads(cli("scan", "-s", str(empty), "--device", f"{VID}={dev}", "--json").stdout)
    assert schema_errors("scan", doc) == []
    assert [(v["id"], v["kind"], v["size"]) for v in doc["volumes"]] == [(VID, "san", LUN_BYTES)]


def test_export_instance_boots_from_the_san_lun(lun: tuple[str, Path], tmp_path: Path) -> None:
    dev, image = lun
    out = outdir(tmp_path)
    inv = inventory_file(tmp_path, None)  # the cloud's size unknown: nothing to compare
    cli("export-instance", "i-5a000001", "--inventory", str(inv), "--device", f"{VID}={dev}", "-o", str(out))
    disk = out / "i-5a000001-sda.raw"
    assert sha(disk) == sha(image)
    xml = (out / "i-5a000001.xml").read_text()
    assert str(disk.resolve()) in xml or disk.name in xml
    assert (out / "victim.bin").read_bytes() == GARBAGE


def test_plan_without_the_device_names_the_target_to_attach(tmp_path: Path) -> None:
    inv = inventory_file(tmp_path, 1)
    out = tmp_path / "out"
    p = cli("plan", "--inventory", str(inv), "-o", str(out), "--json", check=EXIT_USAGE)
    doc = json.loads(p.stdout)
    assert schema_errors("plan", doc) == []
    blockers = [b for b in doc["blockers"] if b["volume_id"] == VID]
    assert blockers and blockers[0]["kind"] == "missing-file" and not blockers[0]["forceable"]
    assert IQN in blockers[0]["message"] and f"euca-{VID}-lun" in blockers[0]["message"]
    assert not out.exists()


def test_device_size_against_the_cloud_record(lun: tuple[str, Path], tmp_path: Path) -> None:
    dev, _ = lun
    out = tmp_path / "out"
    # smaller than the 1 GiB the cloud records: never exported
    p = cli("export-instance", "i-5a000001", "--inventory", str(inventory_file(tmp_path, 1)), "--device",
            f"{VID}={dev}", "-o", str(out), "--force", check=EXIT_FORMAT)
    assert not out.exists(), p.stderr
    # larger than recorded (0 GiB): refused, exported whole with --force
    inv = inventory_file(tmp_path, 0)
    cli("plan", "--inventory", str(inv), "--device", f"{VID}={dev}", "-o", str(out), check=EXIT_FORMAT)
    cli("export-instance", "i-5a000001", "--inventory", str(inv), "--device", f"{VID}={dev}", "-o", str(out),
        check=EXIT_FORMAT)
    assert not out.exists()
    cli("export-instance", "i-5a000001", "--inventory", str(inv), "--device", f"{VID}={dev}", "-o", str(out),
        "--force")
    assert (out / "i-5a000001-sda.raw").stat().st_size == LUN_BYTES


def test_device_open_by_another_process_is_in_use(lun: tuple[str, Path], tmp_path: Path) -> None:
    dev, image = lun
    out = outdir(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", f"import sys, time; f = open({dev!r}, 'rb'); "
                               "print('open', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        cli("export", VID, "--device", f"{VID}={dev}", "-o", str(out), check=EXIT_IN_USE)
        assert not (out / f"{VID}.raw").exists() and not (out / "manifest.json").exists()
        cli("plan", "-o", str(out), "--device", f"{VID}={dev}", check=EXIT_IN_USE)
        cli("export", VID, "--device", f"{VID}={dev}", "-o", str(out), "--force")
        assert sha(out / f"{VID}.raw") == sha(image)
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert (out / "victim.bin").read_bytes() == GARBAGE


def test_mounted_device_is_in_use(tmp_path: Path) -> None:
    need_root()
    need_tools("losetup", "mkfs.ext4", "mount", "umount")
    f = tmp_path / "fs.img"
    f.write_bytes(bytes(8 * MiB))
    subprocess.run(["mkfs.ext4", "-q", "-F", str(f)], check=True, timeout=60, capture_output=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with loop(f) as dev:
        subprocess.run(["mount", "-o", "ro,noload", dev, str(mnt)], check=True, timeout=60)
        try:
            held = san.device_holders(dev)
            assert any(h.path == dev and str(mnt) in h.what for h in held), held
            cli("export", VID, "--device", f"{VID}={dev}", "-o", str(tmp_path / "out"), check=EXIT_IN_USE)
        finally:
            subprocess.run(["umount", str(mnt)], check=False, timeout=60)
        assert not any(str(mnt) in h.what for h in san.device_holders(dev))


def test_not_a_block_device_is_a_format_error(tmp_path: Path) -> None:
    f = tmp_path / "lun.img"
    f.write_bytes(os.urandom(MiB))
    out = tmp_path / "out"
    cli("export", VID, "--device", f"{VID}={f}", "-o", str(out), check=EXIT_FORMAT)
    cli("export", VID, "--device", f"{VID}={tmp_path}", "-o", str(out), check=EXIT_FORMAT)
    cli("export", VID, "--device", "vol-5a000001", "-o", str(out), check=EXIT_USAGE)
    cli("export", VID, "--device", f"not-an-id={f}", "-o", str(out), check=EXIT_USAGE)
    cli("export", VID, "--device", f"{VID}={f}", "--device", f"{VID}={f}", "-o", str(out), check=EXIT_USAGE)
    assert not out.exists()


def test_rerun_after_another_lun_is_attached_at_the_same_node_exports_again(lun: tuple[str, Path],
                                                                             tmp_path: Path) -> None:
    """A node's size and times do not tell LUNs apart: the device number, the LUN's wwid (here: the loop
    device's backing file) are part of the fingerprint, so a different LUN at the same path is exported
    again, never answered with the previous LUN's image."""
    dev, image = lun
    out = outdir(tmp_path)
    cli("export", VID, "--device", f"{VID}={dev}", "-o", str(out))
    img = out / f"{VID}.raw"
    assert sha(img) == sha(image)
    first = json.loads((out / "manifest.json").read_text())["volumes"][0]["source"][0]
    assert first["size"] == LUN_BYTES and first["rdev"] and first["backing_file"] == str(image)
    other = tmp_path / "other.img"
    other.write_bytes(os.urandom(LUN_BYTES))
    subprocess.run(["losetup", "-d", dev], check=True, timeout=30)
    subprocess.run(["losetup", "-r", dev, str(other)], check=True, timeout=30)  # same node, another LUN
    cli("export", VID, "--device", f"{VID}={dev}", "-o", str(out))
    assert sha(img) == sha(other)
    cli("export", VID, "--device", f"{VID}={dev}", "-o", str(out))  # unchanged: reused
    assert sha(img) == sha(other)
