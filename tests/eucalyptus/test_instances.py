# SPDX-License-Identifier: Apache-2.0
"""Whole-instance export from an inventory captured from the test database and from the test EC2 API.

The volumes are real lvm2-built Eucalyptus overlay containers named by the inventory's volume ids
(sparse ``<id>`` files of size GiB + 4 MiB, VG ``euca-ebs-storage-vg-<id>``, LV ``euca-<id>`` tagged
with the id), each carrying a recognisable marker, so the disk order of the domain is provable.
"""

from __future__ import annotations

import json
import os
import random
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from pg import PgServer

from _env import missing, need_root, need_tools
from clirun import euca2kvm
from euca2kvm.errors import EXIT_FORMAT, EXIT_IN_USE, EXIT_IO
from euca2kvm.eucalyptus.cloudinuse import cloud_processes, parse_tgtadm_targets
from refdigest import file_blkdigest, patched_blkdigest

HERE = Path(__file__).resolve().parent
GiB, MiB = 1 << 30, 1 << 20
HEADER = 4 * MiB  # Eucalyptus's LVM_HEADER_LENGTH: container = size GiB + 4 MiB
PATCH = 64 * 1024


run = euca2kvm


def marker(vid: str) -> bytes:
    return f"EUCA2KVM-TEST-DISK {vid} ".encode().ljust(64, b"#")


def build_container(
    d: Path, vid: str, size_gib: int, vg: str | None = None, lv: str | None = None, head: bool = True
) -> dict[str, Any]:
    """An OverlayManager container made by the real lvm2; returns {"size", "patches", "blkdigest"}."""
    import lvmfix

    vg = vg or f"euca-ebs-storage-vg-{vid}"
    lv = lv or f"euca-{vid}"

    def setup(lvm: Any, devs: list[str]) -> None:
        lvm("pvcreate", devs[0])
        lvm("vgcreate", vg, devs[0])
        lvm("lvcreate", "--addtag", vid, "-n", lv, "-l", "100%FREE", vg)

    rec = lvmfix.with_lvm(d, {vid: size_gib * GiB + HEADER}, setup)[lv]
    rng = random.Random(f"euca2kvm-instances:{vid}")
    size = rec["size"]
    offs = ([0] if head else []) + [size // 2 - 777, size - PATCH]
    patches = [
        (o, (marker(vid) + rng.randbytes(PATCH - 64)) if o == 0 else rng.randbytes(PATCH)) for o in offs
    ]
    for o, data in patches:
        pos = 0
        for name, phys, k in lvmfix.lv_pieces(rec, o, len(data)):
            with open(d / name, "r+b") as f:
                f.seek(phys)
                f.write(data[pos : pos + k])
            pos += k
    return {"size": size, "patches": patches, "blkdigest": patched_blkdigest(size, patches)}


def check_domain(xml: Path, vcpus: int, memory_mib: int, files: list[Path], devs: list[str]) -> ET.Element:
    """vCPUs, memory, disks in order with their target devices (the NC's sd->vd names), the seed cdrom last."""
    root = ET.parse(xml).getroot()
    assert root.findtext("vcpu") == str(vcpus)
    mem = root.find("memory")
    assert mem is not None and mem.text == str(memory_mib) and mem.get("unit") == "MiB"
    disks = root.findall("devices/disk[@device='disk']")
    assert [d.find("source").get("file") for d in disks] == [str(f.resolve()) for f in files]  # type: ignore[union-attr]
    assert [d.find("target").get("dev") for d in disks] == devs  # type: ignore[union-attr]
    seed = root.find("devices/disk[@device='cdrom']")
    assert seed is not None and seed.find("readonly") is not None
    assert seed.find("source").get("file") == str((xml.parent / f"{xml.stem}.seed.iso").resolve())  # type: ignore[union-attr]
    return root


def check_seed(out: Path, inst: str, hostname: str, mac: str | None, key: str | None) -> dict[str, bytes]:
    """The seed next to the domain: recorded in every disk's manifest entry, its digest right, its files."""
    import hashlib

    from euca2kvm.kvm.seed import read_seed

    iso = out / f"{inst}.seed.iso"
    data = iso.read_bytes()
    entries = [e for e in json.loads((out / "manifest.json").read_text())["volumes"] if e.get("instance") == inst]
    assert entries and all(e["seed"] == {"output": str(iso.resolve()), "sha256": hashlib.sha256(data).hexdigest(),
                                         "instance_id": inst} for e in entries)
    files = read_seed(data)
    meta = files["meta-data"].decode()
    assert f'instance-id: "{inst}"' in meta and f'local-hostname: "{hostname}"' in meta
    assert (key is not None) == ("public-keys" in meta) and (key is None or key in meta)
    assert (mac is None) or f'macaddress: "{mac}"' in files["network-config"].decode()
    return files


def check_export(out: Path, inst: str, expect: list[tuple[str, str, dict[str, Any]]]) -> list[Path]:
    """expect = [(device, volume id, container info)] in domain order; checks bytes, manifest and markers."""
    man = {e["volume_id"]: e for e in json.loads((out / "manifest.json").read_text())["volumes"]}
    files = []
    for dev, vid, info in expect:
        f = out / f"{inst}-{dev}.raw"
        files.append(f)
        assert f.stat().st_size == info["size"]
        assert file_blkdigest(f) == info["blkdigest"]
        e = man[vid]
        assert (e["instance"], e["device"].removeprefix("/dev/"), e["digest"], e["verified"]) == (
            inst,
            dev,
            info["blkdigest"],
            True,
        )
        assert e["output"] == str(f.resolve()) and e["domain"] == str((out / f"{inst}.xml").resolve())
        with open(f, "rb") as fh:
            assert fh.read(64) == marker(vid)
    return files


# ------------------------------------------------------------------ database


@pytest.fixture(scope="module")
def db_volumes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, Any]]]:
    need_root()
    need_tools("lvm", "losetup")
    d = tmp_path_factory.mktemp("volumes")
    vols = {
        vid: build_container(d, vid, gib)
        for vid, gib in (("vol-4708bf47", 1), ("vol-0000da7a", 2), ("vol-0000da7b", 3))
    }
    # The EKI-booted instance's legacy (3.2) volume: random VG/LV names, no boot loader (first MiB blank).
    vols["vol-77778888"] = build_container(d, "vol-77778888", 10, "vg-Yw9n", "lv-Q2xp", head=False)
    return d, vols


def _stopped_copy(srv: PgServer, voldir: Path) -> str:
    """A copy of the test cloud after the operator stopped i-1a2b3c4d: exports released, SC dir = voldir."""
    db = "euca_stopped"
    srv.create_db(db)
    srv.run_sql(db, (HERE / "sql" / "cloud.sql").read_text(), schema="eucalyptus_cloud")
    srv.run_sql(db, (HERE / "sql" / "storage.sql").read_text(), schema="eucalyptus_storage")
    srv.run_sql(
        db,
        "UPDATE eucalyptus_cloud.metadata_instances SET metadata_state = 'STOPPED' "
        "WHERE metadata_display_name = 'i-1a2b3c4d';"
        "UPDATE eucalyptus_storage.iscsivolumeinfo SET lodev_name = NULL, tid = NULL, storename = NULL;"
        "UPDATE eucalyptus_storage.volume_exports SET is_active = false;"
        f"UPDATE eucalyptus_storage.direct_storage_info SET system_storage_volumes_dir = '{voldir}';",
    )
    return srv.url(db)


def test_export_instance_from_database(
    pg_shared: PgServer, db_volumes: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    voldir, vols = db_volumes
    inv = tmp_path / "inventory.json"
    p = run("inventory", "--db", _stopped_copy(pg_shared, voldir), "-o", str(inv))
    assert "i-1a2b3c4d" in p.stdout and str(voldir) in p.stdout
    assert json.loads(inv.read_text())["volumes_dir"] == str(voldir)
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim"
    victim.write_bytes(b"not yours")
    os.symlink(victim, out / "i-1a2b3c4d.seed.iso")  # a planted link where the seed goes
    p = run("export-instance", "i-1a2b3c4d", "--inventory", str(inv), "-o", str(out), check=EXIT_IO)
    assert victim.read_bytes() == b"not yours" and "Traceback" not in p.stderr
    assert sorted(os.listdir(out)) == ["i-1a2b3c4d.seed.iso"]  # refused before anything was written
    os.unlink(out / "i-1a2b3c4d.seed.iso")
    p = run(
        "export-instance", "i-1a2b3c4d", "--inventory", str(inv), "-o", str(out)
    )  # volumes dir from inventory
    files = check_export(
        out,
        "i-1a2b3c4d",
        [
            ("sda", "vol-4708bf47", vols["vol-4708bf47"]),
            ("vdf", "vol-0000da7a", vols["vol-0000da7a"]),
            ("vdg", "vol-0000da7b", vols["vol-0000da7b"]),
        ],
    )
    root = check_domain(out / "i-1a2b3c4d.xml", 1, 256, files, ["vda", "vdf", "vdg"])  # m1.small: 1 CPU, 256 MiB
    assert [d.findtext("serial") for d in root.findall("devices/disk[@device='disk']")] == [
        "vol-4708bf47-dev-sda", "vol-0000da7a-dev-vdf", "vol-0000da7b-dev-vdg"]
    nic = root.find("devices/interface")
    assert nic is not None and nic.find("mac").get("address") == "d0:0d:1a:2b:3c:4d"  # type: ignore[union-attr]
    assert nic.find("model").get("type") == "virtio" and root.find("sysinfo") is None  # type: ignore[union-attr]
    assert nic.find("address").get("slot") == "0x02"  # type: ignore[union-attr]  # where libvirt.xsl puts it
    key = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDtestkeymaterialonly 000123456789@eucalyptus.ops-key"
    files_in_seed = check_seed(out, "i-1a2b3c4d", "euca-172-16-4-21", "d0:0d:1a:2b:3c:4d", key)
    assert b"provisioned" not in files_in_seed["user-data"]  # recorded, not replayed
    script = (out / "i-1a2b3c4d.virt-install.sh").read_text()
    assert (
        "--vcpus 1" in script
        and "--memory 256" in script
        and os.access(out / "i-1a2b3c4d.virt-install.sh", os.X_OK)
    )
    run("verify", str(out))
    again = run("export-instance", "i-1a2b3c4d", "--inventory", str(inv), "-o", str(out))
    assert again.stdout.count("already exported and verified") == 3
    # An NC without virtio, the images moved to /srv/kvm, a bridge, the user-data replayed, a static address.
    nc = tmp_path / "eucalyptus.conf"
    nc.write_text('USE_VIRTIO_ROOT="0"\nUSE_VIRTIO_DISK="0"\n# USE_VIRTIO_NET unset\n')
    p = run("export-instance", "i-1a2b3c4d", "--inventory", str(inv), "-o", str(out), "--nc-config", str(nc),
            "--image-dir", "/srv/kvm", "--bridge", "br0", "--replay-user-data", "--static-network",
            "--static-prefix", "20", "--json")
    (event,) = [e for line in p.stdout.splitlines() if (e := json.loads(line)).get("event") == "domain"]
    hw = event["hardware"]
    assert (hw["nic_model"], hw["mac"], [d["bus"] for d in hw["disks"]]) == ("e1000", "d0:0d:1a:2b:3c:4d",
                                                                           ["scsi"] * 3)
    assert event["seed"]["output"] == str((out / "i-1a2b3c4d.seed.iso").resolve())
    root = ET.parse(out / "i-1a2b3c4d.xml").getroot()
    disks = root.findall("devices/disk")
    assert [(d.find("target").get("dev"), d.find("target").get("bus")) for d in disks] == [  # type: ignore[union-attr]
        ("sda", "scsi"), ("sdf", "scsi"), ("sdg", "scsi"), ("hdc", "ide")]
    assert [d.find("source").get("file") for d in disks] == [  # type: ignore[union-attr]
        "/srv/kvm/i-1a2b3c4d-sda.raw", "/srv/kvm/i-1a2b3c4d-vdf.raw", "/srv/kvm/i-1a2b3c4d-vdg.raw",
        "/srv/kvm/i-1a2b3c4d.seed.iso"]
    nic = root.find("devices/interface")
    assert nic is not None and nic.get("type") == "bridge" and nic.find("model").get("type") == "e1000"  # type: ignore[union-attr]
    seed = check_seed(out, "i-1a2b3c4d", "euca-172-16-4-21", "d0:0d:1a:2b:3c:4d", key)
    assert seed["user-data"] == b"#!/bin/sh\necho provisioned > /root/first-boot\n"
    assert b'"172.16.4.21/20"' in seed["network-config"] and b"dhcp4: false" in seed["network-config"]
    run("verify", str(out))
    fresh = tmp_path / "fresh"
    for bad, code in ((["--image-dir", "relative/dir"], 2), (["--nc-config", str(tmp_path / "absent")], 2),
                      (["--bridge", "br0", "--network", "other"], 2), (["--no-seed", "--replay-user-data"], 2)):
        p = run("export-instance", "i-1a2b3c4d", "--inventory", str(inv), "-o", str(fresh), *bad, check=code)
        assert "Traceback" not in p.stderr and not fresh.exists()
    nul = tmp_path / "nul.conf"
    nul.write_bytes(b"USE_VIRTIO_NET=1\n\0")
    p = run("export-instance", "i-1a2b3c4d", "--inventory", str(inv), "-o", str(fresh), "--nc-config", str(nul),
            check=EXIT_FORMAT)
    assert "Traceback" not in p.stderr and not fresh.exists()


def test_running_instance_is_refused_and_planned_with_reasons(
    pg_shared: PgServer, db_volumes: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """The original rows: i-1a2b3c4d running, its volumes on loop devices and exported over iSCSI."""
    voldir, _ = db_volumes
    inv = tmp_path / "inv.json"
    run("inventory", "--db", pg_shared.url("eucalyptus_shared"), "-o", str(inv), "--json")
    out = tmp_path / "never"
    plan = json.loads(
        run(
            "plan",
            "i-1a2b3c4d",
            "--inventory",
            str(inv),
            "--source",
            str(voldir),
            "-o",
            str(out),
            "--json",
            check=EXIT_IN_USE,
        ).stdout
    )
    assert not out.exists()
    (ip,) = plan["instances"]
    assert [d["volume_id"] for d in ip["disks"]] == ["vol-4708bf47", "vol-0000da7a", "vol-0000da7b"]
    hw = ip["hardware"]  # the NC's hardware, and the plan's disk targets agree with it
    assert [(d["bus"], d["target_dev"]) for d in hw["disks"]] == [("virtio", "vda"), ("virtio", "vdf"),
                                                                  ("virtio", "vdg")]
    assert [d["target_dev"] for d in ip["disks"]] == ["vda", "vdf", "vdg"]
    assert (hw["mac"], hw["nic_model"], hw["cdrom"]) == ("d0:0d:1a:2b:3c:4d", "virtio",
                                                         {"bus": "ide", "target_dev": "hdc"})
    assert [d["output"] for d in ip["disks"]] == [
        str(out / f"i-1a2b3c4d-{x}.raw") for x in ("sda", "vdf", "vdg")
    ]
    for d in ip["disks"]:  # sparse: only the three patches are data (rounded out to filesystem blocks)
        assert 3 * PATCH <= d["bytes_to_read"] <= 3 * PATCH + 6 * 4096
    for d in ip["disks"]:
        msgs = " | ".join(b["message"] for b in d["blockers"])
        assert {b["kind"] for b in d["blockers"]} == {"in-use"}
        assert "loop device /dev/loop" in msgs and "active volume_exports" in msgs
    assert any("is running" in b["message"] for b in ip["blockers"])
    p = run(
        "export-instance",
        "i-1a2b3c4d",
        "--inventory",
        str(inv),
        "--source",
        str(voldir),
        "-o",
        str(out),
        check=EXIT_IN_USE,
    )
    assert "lodev_name" in p.stderr and "--force" in p.stderr and not out.exists()


def test_eki_instance_needs_kernel(
    pg_shared: PgServer, db_volumes: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    voldir, vols = db_volumes
    url = pg_shared.url("eucalyptus_shared")
    out = tmp_path / "out"
    p = run(
        "export-instance",
        "i-5e6f7a8b",
        "--db",
        url,
        "--source",
        str(voldir),
        "-o",
        str(out),
        check=EXIT_FORMAT,
    )
    assert "eki-11223344" in p.stderr and "no boot loader" in p.stderr and "--kernel" in p.stderr
    assert not out.exists()
    plan = json.loads(
        run(
            "plan",
            "i-5e6f7a8b",
            "--db",
            url,
            "--source",
            str(voldir),
            "-o",
            str(out),
            "--json",
            check=EXIT_FORMAT,
        ).stdout
    )
    assert [b["kind"] for b in plan["blockers"]] == ["no-boot-loader"] and plan["instances"][0][
        "needs_kernel"
    ]
    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd.img"
    kernel.write_bytes(b"kernel")
    initrd.write_bytes(b"initrd")
    run(
        "export-instance",
        "i-5e6f7a8b",
        "--db",
        url,
        "--source",
        str(voldir),
        "-o",
        str(out),
        "--kernel",
        str(kernel),
        "--ramdisk",
        str(initrd),
    )
    f = out / "i-5e6f7a8b-sda1.raw"
    assert file_blkdigest(f) == vols["vol-77778888"]["blkdigest"]
    root = ET.parse(out / "i-5e6f7a8b.xml").getroot()
    assert (root.findtext("vcpu"), root.findtext("memory")) == ("2", "512")  # c1.medium
    assert root.findtext("os/kernel") == str(kernel) and root.findtext("os/initrd") == str(initrd)
    assert (root.findtext("os/cmdline") or "").startswith("root=/dev/vda ")


# ------------------------------------------------------------------ EC2 API


@pytest.fixture(scope="module")
def moto_url() -> Any:
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        missing("moto[server] not installed")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.stop()


def test_export_instance_from_api(moto_url: str, tmp_path: Path) -> None:
    need_root()
    need_tools("lvm", "losetup")
    import boto3

    keys = ["-I", "AKIDEUCA2KVMTEST", "-S", "not-a-real-secret", "--region", "us-east-1"]
    ec2 = boto3.client(
        "ec2",
        endpoint_url=moto_url,
        region_name="us-east-1",
        aws_access_key_id=keys[1],
        aws_secret_access_key=keys[3],
    )
    inst = ec2.run_instances(
        ImageId="ami-0b1c2d3e",
        MinCount=1,
        MaxCount=1,
        InstanceType="m1.small",
        Placement={"AvailabilityZone": "us-east-1a"},
    )["Instances"][0]
    iid = inst["InstanceId"]
    vg_ = ec2.create_volume(Size=3, AvailabilityZone="us-east-1a")["VolumeId"]
    vf = ec2.create_volume(Size=2, AvailabilityZone="us-east-1a")["VolumeId"]
    ec2.attach_volume(VolumeId=vg_, InstanceId=iid, Device="/dev/sdg")  # attached out of device order
    ec2.attach_volume(VolumeId=vf, InstanceId=iid, Device="/dev/sdf")
    inv = tmp_path / "inv.json"
    run("inventory", "--api", moto_url, *keys, "-o", str(inv))
    doc = json.loads(inv.read_text())
    (rec,) = [i for i in doc["instances"] if i["id"] == iid]
    sizes = {v["id"]: v["size_gib"] for v in doc["volumes"]}
    root = next(a["volume_id"] for a in rec["attachments"] if a["is_root"])
    voldir = tmp_path / "volumes"
    voldir.mkdir()
    vols = {v: build_container(voldir, v, sizes[v]) for v in (root, vf, vg_)}
    out = tmp_path / "out"
    p = run(
        "export-instance",
        iid,
        "--inventory",
        str(inv),
        "--source",
        str(voldir),
        "-o",
        str(out),
        check=EXIT_IN_USE,
    )  # the API says it is running
    assert "is running" in p.stderr and not out.exists()
    ec2.stop_instances(InstanceIds=[iid])
    run("inventory", "--api", moto_url, *keys, "-o", str(inv))
    run("export-instance", iid, "--inventory", str(inv), "--source", str(voldir), "-o", str(out))
    files = check_export(
        out, iid, [("sda1", root, vols[root]), ("sdf", vf, vols[vf]), ("sdg", vg_, vols[vg_])]
    )
    check_domain(out / f"{iid}.xml", 1, 1740, files, ["vda", "vdf", "vdg"])  # moto's m1.small: 1740 MiB
    check_seed(out, iid, rec["private_dns"].split(".")[0], rec["mac"], None)  # the API gives no key material
    run("verify", str(out / "manifest.json"))


# ------------------------------------------------------------------ host evidence


def test_tgtadm_listing_and_processes(tmp_path: Path) -> None:
    text = (
        "Target 1: iqn.2009-06.com.eucalyptus.one:store1\n    System information:\n        Driver: iscsi\n"
        "    LUN information:\n        LUN: 0\n            Backing store path: None\n        LUN: 1\n"
        "            Backing store path: /dev/euca-ebs-storage-vg-vol-4708bf47/euca-vol-4708bf47\n"
        "Target 2: iqn.2009-06.com.eucalyptus.one:store2\n        LUN: 1\n"
        "            Backing store path: /dev/vg-das/euca-vol-0000da7a\n"
    )
    assert parse_tgtadm_targets(text) == [
        (
            1,
            "iqn.2009-06.com.eucalyptus.one:store1",
            "/dev/euca-ebs-storage-vg-vol-4708bf47/euca-vol-4708bf47",
        ),
        (2, "iqn.2009-06.com.eucalyptus.one:store2", "/dev/vg-das/euca-vol-0000da7a"),
    ]
    proc = tmp_path / "proc"
    for pid, comm, argv in (
        (101, "eucalyptus-clou", b"/usr/sbin/eucalyptus-cloud\0--user\0eucalyptus\0"),
        (102, "tgtd", b"/usr/sbin/tgtd\0-f\0"),
        (103, "bash", b"bash\0"),
    ):
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "comm").write_text(comm + "\n")
        (proc / str(pid) / "cmdline").write_bytes(argv)
    assert cloud_processes(str(proc)) == [(101, "eucalyptus-cloud"), (102, "tgtd")]


def test_hostile_identity_in_an_inventory_file(db_volumes: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    """A hand-edited (or forged) inventory: bad MAC, multi-line key, escape codes, bad base64. The export
    goes on with what is valid, the seed and domain carry none of it, and bad user-data stops it early."""
    from euca2kvm.kvm.seed import read_seed

    voldir, vols = db_volumes
    inv = tmp_path / "inv.json"
    inv.write_text(json.dumps({
        "format": "euca2kvm-inventory", "version": "1.1", "source": "forged", "captured_at": "2026-01-01T00:00:00Z",
        "volumes_dir": str(voldir),
        "instances": [{
            "id": "i-1a2b3c4d", "state": "stopped", "root_device": "/dev/sda",
            "vm_type": {"name": "m1.small", "cpus": 1, "memory_mib": 256},
            "attachments": [{"volume_id": "vol-4708bf47", "device": "/dev/sda", "is_root": True, "kind": "boot"}],
            "mac": "d0:0d:00:00:00:01\ninstance-id: x", "private_dns": "h\x1b[31m.example",
            "public_key": "ssh-rsa AAAA a\nssh-rsa BBBB b", "user_data": "not base64!!",
            "private_ip": "172.16.4.21", "unavailable": [],
        }],
    }))
    fresh = tmp_path / "fresh"
    p = run("export-instance", "i-1a2b3c4d", "--inventory", str(inv), "-o", str(fresh), "--replay-user-data",
            check=2)
    assert "Traceback" not in p.stderr and not fresh.exists()
    out = tmp_path / "out"
    p = run("export-instance", "i-1a2b3c4d", "--inventory", str(inv), "-o", str(out))
    assert "Traceback" not in p.stderr and "\x1b[31m" not in p.stdout + p.stderr
    assert file_blkdigest(out / "i-1a2b3c4d-sda.raw") == vols["vol-4708bf47"]["blkdigest"]
    root = ET.parse(out / "i-1a2b3c4d.xml").getroot()
    assert root.find("devices/interface/mac") is None  # not a MAC: libvirt picks one, the guest is told
    files = read_seed((out / "i-1a2b3c4d.seed.iso").read_bytes())
    meta = files["meta-data"].decode()
    assert meta == 'instance-id: "i-1a2b3c4d"\nlocal-hostname: "i-1a2b3c4d"\n'  # no key, no forged hostname
    assert b"macaddress" not in files["network-config"]
