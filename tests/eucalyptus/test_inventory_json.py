# SPDX-License-Identifier: Apache-2.0
"""Inventory model: device order, boot volume choice, versioned JSON load/save and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from euca2kvm.errors import FormatError
from euca2kvm.eucalyptus.inventory import (
    FORMAT_NAME,
    Attachment,
    Instance,
    Inventory,
    Snapshot,
    StorageVolume,
    VmType,
    Volume,
    device_sort_key,
    load_inventory,
    save_inventory,
)


def _inv() -> Inventory:
    inst = Instance(
        id="i-1a2b3c4d", state="running", vm_type=VmType("m1.small", 1, 256, 5), root_device="/dev/sda",
        image_id="emi-0b1c2d3e", virtualization_type="hvm",
        attachments=[
            Attachment("vol-000000aa", "/dev/sdaa", False, "runtime", "attached"),
            Attachment("vol-0000000f", "xvdf", False, "runtime", "attached"),
            Attachment("vol-00000010", "/dev/sdz", False, "runtime", "attached"),
            Attachment("vol-0000000b", "/dev/vdb", False, "runtime", "attached"),
            Attachment("vol-00000001", "/dev/sda", True, "boot", "attached"),
            Attachment("vol-00000002", "/dev/sdb", False, "boot", "attached"),
        ])
    return Inventory(
        version=1, source="test", captured_at="2024-01-02T03:04:05Z", volumes_dir="/var/lib/eucalyptus/volumes",
        instances=[inst], volumes=[Volume("vol-00000001", 10, "in-use", "one", "one", None)],
        snapshots=[Snapshot("snap-00000001", "vol-00000001", "completed", 10, None)],
        storage_volumes=[StorageVolume("vol-00000001", vg_name="euca-ebs-storage-vg-vol-00000001",
                                       lv_name="euca-vol-00000001", size=10, export_active=True)],
        das_devices=["/dev/sdx"])


def test_device_natural_order() -> None:
    devs = ["/dev/sdaa", "sdb", "/dev/vdc", "xvdf", "/dev/sda10", "/dev/sda2", "sdz", "/dev/sda", "weird9",
            "weird10", None]
    assert sorted(devs, key=device_sort_key) == [
        "/dev/sda", "/dev/sda2", "/dev/sda10", "sdb", "/dev/vdc", "xvdf", "sdz", "/dev/sdaa", "weird9",
        "weird10", None]


def test_ordered_volumes_boot_first_then_devices() -> None:
    inv = _inv()
    inst = inv.instance("i-1a2b3c4d")
    assert [a.volume_id for a in inv.ordered_volumes(inst)] == [
        "vol-00000001", "vol-00000002", "vol-0000000b", "vol-0000000f", "vol-00000010", "vol-000000aa"]


def test_boot_volume_without_root_flag() -> None:
    atts = [Attachment("vol-2", "/dev/sdf", False, "runtime"), Attachment("vol-1", "sda1", False, "boot")]
    inst = Instance("i-1", "stopped", None, "/dev/sda1", attachments=atts)
    inv = Inventory(1, "t", "now", None, instances=[inst])
    boot = inv.boot_volume(inst)
    assert boot is not None and boot.volume_id == "vol-1"
    assert inv.boot_volume(Instance("i-2", "running", None, None)) is None
    dup = Instance("i-3", "running", None, "/dev/sda", attachments=[
        Attachment("vol-1", "/dev/sda", True, "boot"), Attachment("vol-1", "/dev/sda", False, "runtime"),
        Attachment("vol-9", None, False, "runtime")])
    assert [a.volume_id for a in inv.ordered_volumes(dup)] == ["vol-1", "vol-9"]


def test_roundtrip_file(tmp_path: Path) -> None:
    inv = _inv()
    path = tmp_path / "inventory.json"
    save_inventory(inv, str(path))
    doc = json.loads(path.read_text())
    assert (doc["format"], doc["version"]) == (FORMAT_NAME, "1.2")
    assert doc["instances"][0]["vm_type"] == {"name": "m1.small", "cpus": 1, "memory_mib": 256, "disk_gib": 5}
    assert doc["instances"][0]["attachments"][4] == {
        "volume_id": "vol-00000001", "device": "/dev/sda", "is_root": True, "kind": "boot", "status": "attached"}
    assert load_inventory(str(path)) == inv
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_minor_version_and_unknown_keys_accepted() -> None:
    doc = json.loads(_inv().to_json())
    doc["version"] = "1.7"
    doc["future_key"] = {"anything": [1, 2]}
    doc["instances"][0]["future"] = True
    assert Inventory.from_json(json.dumps(doc)) == _inv()


def _mutate(path: str, value: object) -> str:
    doc = json.loads(_inv().to_json())
    keys = path.split("/")
    target = doc
    for k in keys[:-1]:
        target = target[int(k)] if isinstance(target, list) else target[k]
    last: int | str = int(keys[-1]) if isinstance(target, list) else keys[-1]
    if value is KeyError:
        del target[last]
    else:
        target[last] = value
    return json.dumps(doc)


@pytest.mark.parametrize(("path", "value", "where"), [
    ("version", 2, r"\$\.version: unsupported format version 2"),
    ("version", "2.0", r"\$\.version: unsupported"),
    ("version", KeyError, r"\$\.version: missing"),
    ("version", True, r"\$\.version: missing"),
    ("format", "something-else", r"\$\.format"),
    ("source", KeyError, r"\$\.source: expected a string \(required\)"),
    ("instances", {}, r"\$\.instances: expected an array"),
    ("instances/0/attachments/4/kind", "hotplug", r"\$\.instances\[0\]\.attachments\[4\]\.kind"),
    ("instances/0/attachments/2/is_root", "yes", r"\$\.instances\[0\]\.attachments\[2\]\.is_root"),
    ("instances/0/attachments/1/volume_id", 7, r"\$\.instances\[0\]\.attachments\[1\]\.volume_id"),
    ("instances/0/vm_type/cpus", "1", r"\$\.instances\[0\]\.vm_type\.cpus: expected an integer"),
    ("instances/0/vm_type", [], r"\$\.instances\[0\]\.vm_type: expected an object"),
    ("volumes/0/size_gib", 1.5, r"\$\.volumes\[0\]\.size_gib"),
    ("storage_volumes/0/export_active", None, r"\$\.storage_volumes\[0\]\.export_active"),
    ("snapshots/0", "snap-1", r"\$\.snapshots\[0\]: expected an object"),
    ("das_devices/0", 3, r"\$\.das_devices\[0\]"),
])
def test_malformed_names_file_and_path(path: str, value: object, where: str) -> None:
    with pytest.raises(FormatError, match=where) as ei:
        Inventory.from_json(_mutate(path, value), filename="/srv/inv.json")
    assert ei.value.path == "/srv/inv.json" and str(ei.value).startswith("/srv/inv.json: ")


@pytest.mark.parametrize("text", ["", "{", "[]", "null", '"x"', "[" * 100000],
                         ids=["empty", "truncated", "array", "null", "string", "deep-nesting"])
def test_not_an_inventory(text: str, tmp_path: Path) -> None:
    p = tmp_path / "x.json"
    p.write_text(text)
    with pytest.raises(FormatError) as ei:
        load_inventory(str(p))
    assert ei.value.path == str(p)


def test_oversized_file_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import euca2kvm.eucalyptus.inventory as invmod

    monkeypatch.setattr(invmod, "MAX_INVENTORY_BYTES", 100)
    p = tmp_path / "big.json"
    p.write_text(_inv().to_json())
    with pytest.raises(FormatError, match="larger than 100 bytes"):
        load_inventory(str(p))


@pytest.mark.parametrize("planted", ["symlink", "fifo"])
def test_inventory_behind_a_symlink_or_fifo_refused(tmp_path: Path, planted: str) -> None:
    """An inventory name is opened without following a symlink, and a FIFO there neither blocks nor is read."""
    import os

    from euca2kvm.errors import IOFailure

    real = tmp_path / "real.json"
    real.write_text(_inv().to_json())
    p = tmp_path / "inv.json"
    if planted == "symlink":
        p.symlink_to(real)
    else:
        os.mkfifo(p)
    with pytest.raises(IOFailure) as ei:
        load_inventory(str(p))
    assert ei.value.exit_code == 5
    assert load_inventory(str(real)).to_json() == _inv().to_json()
