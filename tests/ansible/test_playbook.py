# SPDX-License-Identifier: Apache-2.0
"""The whole-cloud playbook with real ansible-core: two target hosts (local connection, each its own
state directory) export four instances from one storage controller (a real sshd on 127.0.0.1, read
through ssh:// sources); the merged manifest verifies,
every instance is exported exactly once, the storage controller's throttle held, and a re-run
copies nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import sshd
from _env import missing, need_root, need_tools

MiB = 1 << 20
GiB = 1 << 30
REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "ansible"
INSTANCES = [f"i-a5b1e00{n}" for n in range(1, 5)]
SC = "sc-zone1"
# The play runs 4 small exports, 2 verifies and 3 merges, each a Python start-up on a loaded machine.
PLAYBOOK_TIMEOUT_S = 240


def container(d: Path, vid: str, seed: int) -> None:
    """An overlay container made by the real lvm2 with 1 MiB of seeded random data in its LV."""
    import lvmfix

    lvmfix.seeded_overlay(d, vid, seed)


def instance(iid: str, vid: str) -> dict[str, Any]:
    return {"id": iid, "state": "stopped", "root_device": "/dev/sda", "kernel_id": None, "ramdisk_id": None,
            "image_id": None, "platform": None, "virtualization_type": "hvm",
            "vm_type": {"name": "m1.small", "cpus": 1, "memory_mib": 512, "disk_gib": 1},
            "attachments": [{"volume_id": vid, "device": "/dev/sda", "is_root": True, "kind": "boot",
                             "status": "attached"}],
            "mac": None, "private_ip": None, "public_ip": None, "private_dns": None, "public_dns": None,
            "key_name": None, "public_key": None, "user_data": None, "node": None, "unavailable": []}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    need_root()
    need_tools("lvm", "losetup")
    if not (Path(sys.executable).parent / "ansible-playbook").exists():
        missing("ansible-core not installed in the test environment")
    root = tmp_path_factory.mktemp("cloud")
    server = sshd.start(root / "sshd")
    try:
        yield make_site(root, server)
    finally:
        server.stop()


def make_site(root: Path, server: sshd.Sshd) -> dict[str, Path]:
    """One storage controller's volumes (served by ``server``), the cloud's inventory, and the targets'
    Ansible inventory in ``root``. The targets reach the controller with the server's test key and
    known_hosts, put in a home directory of their own (the playbook's euca2kvm_environment)."""
    home = root / "target-home"
    (home / ".ssh").mkdir(parents=True)
    shutil.copy(server.known_hosts, home / ".ssh" / "known_hosts")
    shutil.copy(server.identity, home / ".ssh" / "id_ed25519")
    os.chmod(home / ".ssh" / "id_ed25519", 0o600)
    vols = root / "sc1" / "volumes"  # the storage controller's volumes directory
    vols.mkdir(parents=True)
    vids = [i.replace("i-", "vol-") for i in INSTANCES]
    for n, vid in enumerate(vids):
        container(vols, vid, n)
    inv = {"format": "euca2kvm-inventory", "version": "1.0", "source": "test", "captured_at": "2026-01-01T00:00:00Z",
           "volumes_dir": None, "instances": [instance(i, v) for i, v in zip(INSTANCES, vids, strict=True)],
           "volumes": [{"id": v, "size_gib": 1, "status": "in-use", "zone": "zone1", "sc_name": SC,
                        "snapshot_id": None} for v in vids],
           "snapshots": [], "storage_volumes": [], "das_devices": []}
    (root / "inventory.json").write_text(json.dumps(inv))
    (root / "placement.yml").write_text(f"{INSTANCES[0]}: tgt1\n")  # the mapping file's override
    cmd = [sys.executable, "-m", "euca2kvm"]
    common = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
              "euca2kvm_cmd": cmd, "euca2kvm_control_cmd": cmd,
              "euca2kvm_inventory_file": str(root / "inventory.json"),
              "euca2kvm_placement_file": str(root / "placement.yml"),
              "euca2kvm_sources": {SC: server.url(str(vols))}, "euca2kvm_environment": {"HOME": str(home)},
              "euca2kvm_collect_dir": str(root / "collected"),
              "euca2kvm_sc_throttle": 1, "euca2kvm_poll_seconds": 1}
    # Capacity given as host vars (both targets share this machine's disk): room for two guests each.
    hosts = {h: {"euca2kvm_state_dir": str(root / h), "euca2kvm_free_disk_bytes": 10 * GiB,
                 "euca2kvm_free_memory_mib": 1024} for h in ("tgt1", "tgt2")}
    hosts["tgt2"]["euca2kvm_pinned"] = [INSTANCES[3]]  # the host var's override
    (root / "targets.json").write_text(json.dumps(
        {"all": {"children": {"euca2kvm_targets": {"hosts": hosts, "vars": common}}}}))
    return {"root": root, "vols": vols}


def play(root: Path) -> subprocess.CompletedProcess[str]:
    home = root / "ansible-home"
    env = {**os.environ, "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"), "ANSIBLE_HOME": str(home),
           "ANSIBLE_LOCAL_TEMP": str(home / "tmp"), "ANSIBLE_REMOTE_TEMP": str(home / "remote"),
           "ANSIBLE_ASYNC_DIR": str(home / "async"), "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"}
    p = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(root / "targets.json"),
                        str(ANSIBLE_DIR / "migrate.yml")], capture_output=True, text=True, env=env,
                       timeout=PLAYBOOK_TIMEOUT_S, cwd=root)
    if p.returncode != 0:  # the failed tasks themselves, whole: pytest would cut a long tail to a line
        failed = [ln for ln in p.stdout.splitlines() if ln.startswith(("fatal:", "failed:", "FAILED", "TASK ["))]
        pytest.fail(f"ansible-playbook exited {p.returncode}:\n" + "\n".join(failed[-40:])
                    + f"\nstderr: {p.stderr[-2000:]}", pytrace=False)
    return p


def images(root: Path) -> dict[str, tuple[int, int]]:
    """Every exported image on both targets: path -> (inode, mtime_ns)."""
    return {str(f): (f.stat().st_ino, f.stat().st_mtime_ns) for h in ("tgt1", "tgt2")
            for f in sorted((root / h / "export").glob("*.raw"))}


def test_playbook_places_exports_merges_and_resumes(site: dict[str, Path]) -> None:
    root = site["root"]
    play(root)
    collected = root / "collected"
    assert "Accepted publickey" in (root / "sshd" / "sshd.log").read_text()  # the volumes came over SSH
    plan = json.loads((collected / "placement.json").read_text())
    where = {i: plan["instances"][i]["host"] for i in INSTANCES}
    assert where[INSTANCES[0]] == "tgt1" and where[INSTANCES[3]] == "tgt2"  # both overrides held
    assert sorted(where.values()) == ["tgt1", "tgt1", "tgt2", "tgt2"]  # 1024 MiB each: two 512 MiB guests
    merged = json.loads((collected / "merged.json").read_text())
    exported = sorted((e["instance"], e["host"]) for e in merged["volumes"])
    assert exported == sorted(where.items())  # each instance once, on the host it was placed on
    for e in merged["volumes"]:
        assert e["export_dir"] == str(root / e["host"] / "export")
    v = subprocess.run([sys.executable, "-m", "euca2kvm", "verify", str(collected / "merged.json"), "--json"],
                       capture_output=True, text=True, timeout=120)
    assert v.returncode == 0 and "Traceback" not in v.stderr, v.stderr
    assert [r["status"] for r in json.loads(v.stdout)] == ["ok"] * len(INSTANCES)
    runs = json.loads((collected / "runs.json").read_text())
    assert sorted(r["host"] for r in runs) == ["tgt1", "tgt2"] and all(r["storage_controller"] == SC for r in runs)
    assert sum(r["done"] for r in runs) == len(INSTANCES) and all(r["rc"] == 0 for r in runs)
    first, second = sorted(runs, key=lambda r: r["start"])
    assert first["end"] <= second["start"], runs  # throttle 1: one target at a time on the controller
    r = subprocess.run([sys.executable, "-m", "euca2kvm", "report", str(collected / "merged.json"), "-o",
                        str(collected / "report.html")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and (collected / "report.html").stat().st_size > 0, r.stderr

    before, stamps = images(root), {(e["host"], e["output"]): e["exported_at"] for e in merged["volumes"]}
    play(root)  # a re-run resumes: same placement, every image skipped as still verified
    replan = json.loads((collected / "placement.json").read_text())["instances"]
    assert {i: replan[i]["host"] for i in INSTANCES} == where
    assert {replan[i]["why"] for i in INSTANCES} <= {"already exported there", "placed by the operator"}
    runs = json.loads((collected / "runs.json").read_text())
    assert sum(r["done"] for r in runs) == 0 and sum(r["skipped"] for r in runs) == len(INSTANCES)
    assert images(root) == before
    again = json.loads((collected / "merged.json").read_text())
    assert {(e["host"], e["output"]): e["exported_at"] for e in again["volumes"]} == stamps
