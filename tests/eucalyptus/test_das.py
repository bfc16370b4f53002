# SPDX-License-Identifier: Apache-2.0
"""DAS backend: one shared VG ``euca-ebs-storage-vg-<random10>`` on a device, one tagged LV per volume.

Built by the real lvm2 on a loop device exactly as DASManager does (``vgcreate`` on the device,
``lvcreate --addtag <volId> -n euca-<volId> -L <size>M``), then scanned and exported by volume id.
"""

from __future__ import annotations

import hashlib
import json
import random
import string
import subprocess
from pathlib import Path
from typing import Any

import pytest

from _env import need_root, need_tools
from clirun import euca2kvm

MiB = 1 << 20
VOLUMES = {
    "vol-da500001": 12,
    "vol-da500002": 8,
    "vol-da50000000000003a": 4,
}  # id -> MiB (short and long ids)
PATCH = 96 * 1024


run = euca2kvm


@pytest.fixture(scope="module")
def das(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    need_root()
    need_tools("lvm", "losetup")
    import lvmfix

    d = tmp_path_factory.mktemp("das")
    rng = random.Random("euca2kvm-das")
    vg = "euca-ebs-storage-vg-" + "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(10))

    def setup(lvm: Any, devs: list[str]) -> None:
        lvm("pvcreate", devs[0])
        lvm("vgcreate", "-s", "1M", vg, devs[0])
        for vid, mb in VOLUMES.items():
            lvm(
                "lvcreate",
                "--addtag",
                vid,
                "-n",
                f"euca-{vid}",
                "-L",
                f"{mb}M",
                "--wipesignatures",
                "y",
                "--yes",
                vg,
            )
        lvm("lvremove", "-y", f"{vg}/euca-vol-da500002")  # a deleted volume leaves a gap ...
        lvm(
            "lvcreate", "--addtag", "vol-da500002", "-n", "euca-vol-da500002", "-L", "8M", vg
        )  # ... reused later

    lvs = lvmfix.with_lvm(d, {"das.img": 64 * MiB}, setup)
    truth: dict[str, Any] = {"vg": vg, "img": d / "das.img", "lvs": {}}
    for vid in VOLUMES:
        lv = lvs[f"euca-{vid}"]
        size = lv["size"]
        patches = [(o, rng.randbytes(PATCH)) for o in (0, size // 2 - 333, size - PATCH)]
        for o, data in patches:
            pos = 0
            for name, phys, k in lvmfix.lv_pieces(lv, o, len(data)):
                with open(d / name, "r+b") as f:
                    f.seek(phys)
                    f.write(data[pos : pos + k])
                pos += k
        truth["lvs"][vid] = {
            "size": size,
            "sha256": lvmfix.expected_sha256(size, patches),
            "tags": lv["tags"],
        }
    return truth


def test_scan_lists_das_volumes_by_id(das: dict[str, Any]) -> None:
    vols = {v["id"]: v for v in json.loads(run("scan", str(das["img"]), "--json").stdout)["volumes"]}
    assert sorted(vols) == sorted(VOLUMES)
    for vid, mb in VOLUMES.items():
        v = vols[vid]
        assert (v["kind"], v["vg"], v["lv"], v["size"], v["tags"]) == (
            "das",
            das["vg"],
            f"euca-{vid}",
            mb * MiB,
            [vid],
        )
        assert v["files"] == [str(das["img"])] and v["problem"] is None


def test_export_das_volume_by_id(das: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "out"
    run("export", *VOLUMES, "--source", str(das["img"]), "-o", str(out), "--sha256")
    man = {e["id"]: e for e in json.loads((out / "manifest.json").read_text())["volumes"]}
    for vid, t in das["lvs"].items():
        data = (out / f"{vid}.raw").read_bytes()
        assert len(data) == t["size"] and hashlib.sha256(data).hexdigest() == t["sha256"]
        assert man[vid]["kind"] == "das" and man[vid]["sha256"] == t["sha256"]


def test_export_instance_from_das_device_in_inventory(das: dict[str, Any], tmp_path: Path) -> None:
    """No --source: the inventory's das_info.das_device is the source (here the image file)."""
    inv = {
        "format": "euca2kvm-inventory",
        "version": 1,
        "source": "test",
        "captured_at": "2024-01-01T00:00:00Z",
        "volumes_dir": None,
        "das_devices": [str(das["img"])],
        "instances": [
            {
                "id": "i-da5da5da",
                "state": "stopped",
                "root_device": "/dev/sda",
                "vm_type": {"name": "m1.large", "cpus": 2, "memory_mib": 512, "disk_gib": 10},
                "attachments": [
                    {"volume_id": "vol-da500002", "device": "/dev/sdh", "is_root": False, "kind": "runtime"},
                    {"volume_id": "vol-da500001", "device": "/dev/sda", "is_root": True, "kind": "boot"},
                ],
            }
        ],
    }
    f = tmp_path / "inv.json"
    f.write_text(json.dumps(inv))
    out = tmp_path / "out"
    run("export-instance", "i-da5da5da", "--inventory", str(f), "-o", str(out), "--format", "qcow2")
    for dev, vid in (("sda", "vol-da500001"), ("sdh", "vol-da500002")):
        raw = tmp_path / f"{dev}.raw"
        subprocess.run(
            ["qemu-img", "convert", "-O", "raw", str(out / f"i-da5da5da-{dev}.qcow2"), str(raw)],
            check=True,
            timeout=60,
        )
        assert hashlib.sha256(raw.read_bytes()).hexdigest() == das["lvs"][vid]["sha256"]
    xml = (out / "i-da5da5da.xml").read_text()
    assert xml.index("i-da5da5da-sda.qcow2") < xml.index("i-da5da5da-sdh.qcow2") and "<vcpu>2</vcpu>" in xml
