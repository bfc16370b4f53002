# SPDX-License-Identifier: Apache-2.0
"""``--source rbd:POOL`` through the CLI, against the session's Ceph cluster, with the read-only key:
scan lists the volumes and snapshots (not the ``del…`` parent), raw exports hash like ``rbd export``
and stay sparse, qcow2 exports compare equal to ``rbd export``, a watched image is in use (exit 4,
naming the watcher) unless ``--force``, bad Ceph options are usage errors. The ``ceph`` fixture
checks that every RADOS object of the pool is unchanged after each test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from tests.rbd import cluster as cc

from _env import need_tools
from euca2kvm.errors import EXIT_IN_USE, EXIT_USAGE
from refdigest import file_sha256 as sha

MiB = 1 << 20
# Exports of these few-MiB images take a second or two; minutes mean a hang.
CLI_TIMEOUT_S = 300
GARBAGE = b"\xa5" * 4096
SCAN_SCHEMA = Path(__file__).resolve().parents[2] / "src" / "euca2kvm" / "schemas" / "scan.schema.json"


def cli(*args: str, check: int | None = 0) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([sys.executable, "-m", "euca2kvm", *args], capture_output=True, text=True,
                       env={**os.environ, "PYTHONFAULTHANDLER": "1"},  # a crash in librbd shows its stack
                       timeout=CLI_TIMEOUT_S)
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    if check is not None:
        assert p.returncode == check, (p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    return p




def outdir(tmp_path: Path) -> Path:
    """An output directory holding a stranger's file, which must survive every export untouched."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "victim.bin").write_bytes(GARBAGE)
    return out


def test_scan_lists_volumes_and_snapshots_by_id(ceph: cc.Cluster) -> None:
    p = cli("scan", "-s", "rbd:rbd", *ceph.cli_args(ro=True), "--json")
    doc = json.loads(p.stdout)
    jsonschema.validate(doc, json.loads(SCAN_SCHEMA.read_text()))
    vols = {v["id"]: v for v in doc["volumes"]}
    expected = {n for n in ceph.images if not n.startswith("del")}
    assert set(vols) == expected
    for name, v in vols.items():
        assert v["size"] == ceph.sizes[name]
        assert v["kind"] == ("rbd-snapshot" if name.startswith("snap-") else "rbd")
        assert bool(v["in_use"]) == (name == cc.WATCHED)
    assert any(n["path"].endswith(cc.DEL_PARENT) and n["what"] == "ignored" for n in doc["notes"])


def test_raw_export_of_every_volume_matches_rbd_export(ceph: cc.Cluster, tmp_path: Path) -> None:
    out = outdir(tmp_path)
    ids = sorted(n for n in ceph.images if not n.startswith("del") and n != cc.WATCHED)
    cli("export", *ids, "-s", "rbd:rbd", *ceph.cli_args(ro=True), "-o", str(out), "--sha256")
    entries = {e["id"]: e for e in json.loads((out / "manifest.json").read_text())["volumes"]}
    for name in ids:
        img = out / f"{name}.raw"
        assert sha(img) == ceph.images[name] == entries[name]["sha256"], name
        assert entries[name]["verified"] is True
    assert os.stat(out / f"{cc.SPARSE}.raw").st_blocks * 512 < 64 * MiB
    assert (out / "victim.bin").read_bytes() == GARBAGE
    # a second run finds the small ones done and changes nothing (the 2 GiB one is left out for time)
    again = [n for n in ids if n != cc.SPARSE]
    before = {n: (out / f"{n}.raw").stat().st_mtime_ns for n in again}
    cli("export", *again, "-s", "rbd:rbd", *ceph.cli_args(ro=True), "-o", str(out), "--sha256")
    assert before == {n: (out / f"{n}.raw").stat().st_mtime_ns for n in again}


# Never loaded by an RBD export into a fresh OUTDIR: start-up is part of every export's time.
RBD_EXPORT_NEVER = ("euca2kvm.lvm", "importlib.resources", "jsonschema")


def test_export_of_one_volume_loads_no_lvm_reader_nor_schema(ceph: cc.Cluster, tmp_path: Path) -> None:
    out = outdir(tmp_path)
    code = ("import json, sys\nfrom euca2kvm.cli import main\n"
            f"rc = main({['export', cc.DENSE, '-s', 'rbd:rbd', *ceph.cli_args(ro=True), '-o', str(out)]!r})\n"
            f"print(json.dumps([rc, sorted(m for m in sys.modules if m.startswith({RBD_EXPORT_NEVER!r}))]))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr[-3000:]
    rc, loaded = json.loads(p.stdout.splitlines()[-1])
    assert rc == 0 and loaded == []
    assert sha(out / f"{cc.DENSE}.raw") == ceph.images[cc.DENSE]
    assert (out / "victim.bin").read_bytes() == GARBAGE


@pytest.mark.parametrize("name", [cc.FROM_SNAP, cc.SPARSE])
def test_qcow2_export_compares_equal_to_rbd_export(ceph: cc.Cluster, tmp_path: Path, name: str) -> None:
    need_tools("qemu-img")
    out = outdir(tmp_path)
    cli("export", name, "-s", "rbd:rbd", *ceph.cli_args(ro=True), "-o", str(out), "-f", "qcow2")
    truth = tmp_path / "truth.raw"
    ceph.rbd("export", f"{cc.POOL}/{name}", str(truth))
    p = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(truth), str(out / f"{name}.qcow2")],
                       capture_output=True, timeout=CLI_TIMEOUT_S)
    assert p.returncode == 0, p.stdout + p.stderr
    assert (out / "victim.bin").read_bytes() == GARBAGE


def test_watched_image_is_in_use_unless_forced(ceph: cc.Cluster, tmp_path: Path) -> None:
    out = outdir(tmp_path)
    watchers = json.loads(ceph.rbd("status", "--format", "json", f"{cc.POOL}/{cc.WATCHED}"))["watchers"]
    p = cli("export", cc.WATCHED, "-s", "rbd:rbd", *ceph.cli_args(), "-o", str(out), check=EXIT_IN_USE)
    assert any(f"client.{w['client']}" in p.stderr for w in watchers)
    assert not (out / f"{cc.WATCHED}.raw").exists()
    cli("export", cc.WATCHED, "-s", "rbd:rbd", *ceph.cli_args(), "-o", str(out), "--force")
    assert sha(out / f"{cc.WATCHED}.raw") == ceph.images[cc.WATCHED]


def test_bad_ceph_options_are_usage_errors(ceph: cc.Cluster, tmp_path: Path) -> None:
    base = ["scan", "--json"]
    cli(*base, "-s", "rbd:rbd", "--ceph-conf", str(ceph.conf), "--ceph-keyring", str(tmp_path / "none"),
        check=EXIT_USAGE)
    cli(*base, "-s", "rbd:no-such-pool", *ceph.cli_args(), check=EXIT_USAGE)
    cli(*base, "-s", "rbd:", *ceph.cli_args(), check=EXIT_USAGE)
    cli("export", "vol-00000000", "-s", "rbd:rbd", *ceph.cli_args(), "-o", str(tmp_path / "o"), check=EXIT_USAGE)
    assert not (tmp_path / "o").exists()


def test_export_instance_finds_rbd_volumes_through_the_inventory(ceph: cc.Cluster, tmp_path: Path) -> None:
    """An inventory naming the ceph-rbd backend (pools, user, files): no --source, no --ceph-* options."""
    iid = "i-0000c001"
    inv = {"format": "euca2kvm-inventory", "version": "1.1", "source": "test", "captured_at": "2026-01-01T00:00:00Z",
           "volumes_dir": None, "snapshots": [], "storage_volumes": [], "das_devices": [],
           "instances": [{"id": iid, "state": "stopped", "root_device": "/dev/sda", "virtualization_type": "hvm",
                          "vm_type": {"name": "m1.small", "cpus": 1, "memory_mib": 256, "disk_gib": 1},
                          "attachments": [{"volume_id": cc.FROM_SNAP, "device": "/dev/sda", "is_root": True,
                                           "kind": "boot", "status": "attached"}], "unavailable": []}],
           "volumes": [{"id": cc.FROM_SNAP, "size_gib": 1, "status": "in-use"}],
           "ceph_pools": ["rbd"], "ceph_user": "ro", "ceph_conf": str(ceph.conf), "ceph_keyring": str(ceph.ro_keyring)}
    f = tmp_path / "inventory.json"
    f.write_text(json.dumps(inv))
    out = outdir(tmp_path)
    plan = json.loads(cli("plan", iid, "--inventory", str(f), "-o", str(out), "--json").stdout)
    # only the host's own state may block (another run's loop device or PostgreSQL on this shared machine)
    assert not [b for b in plan["blockers"] if not b["forceable"] or b.get("volume_id")], plan["blockers"]
    assert [d["volume_id"] for i in plan["instances"] for d in i["disks"]] == [cc.FROM_SNAP]
    # the RBD boot disk is read through its block source: inspected, and its guest configuration checked
    (inst,) = plan["instances"]
    assert inst["boot_verdict"] and not inst["boot_verdict"].startswith("unknown"), inst["boot_verdict"]
    assert not [w for w in inst["warnings"] if "configuration not checked" in w], inst["warnings"]
    cli("export-instance", iid, "--inventory", str(f), "-o", str(out), *(["--force"] if plan["blockers"] else []))
    (disk,) = [d for i in plan["instances"] for d in i["disks"]]
    assert sha(Path(disk["output"])) == ceph.images[cc.FROM_SNAP]
    assert (out / "victim.bin").read_bytes() == GARBAGE


def test_inspect_shows_the_parent_chain(ceph: cc.Cluster) -> None:
    info = json.loads(cli("inspect", cc.DEL_CHILD, "-s", "rbd:rbd", *ceph.cli_args(ro=True), "--json",
                          "--extents", "1000").stdout)
    assert [(p["image"], p["snapshot"]) for p in info["rbd"]["parents"]] == [
        (cc.DEL_SNAP, f"sp-on-{cc.DEL_SNAP}"), (cc.DEL_PARENT, f"sp-for-{cc.DEL_SNAP}")]
    assert not info["extents_truncated"]
    assert sum(e["length"] for e in info["extents"]) == ceph.sizes[cc.DEL_CHILD]
    assert {e["kind"] for e in info["extents"]} == {"data", "hole"}
    assert "guest" in info
    human = cli("inspect", cc.FROM_SNAP, "-s", "rbd:rbd", *ceph.cli_args(ro=True), "--no-guest").stdout
    assert cc.SNAP in human and cc.VOL in human
