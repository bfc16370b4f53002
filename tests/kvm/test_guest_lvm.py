# SPDX-License-Identifier: Apache-2.0
"""A CentOS-style guest disk (an LVM PV partition holding the root LV) inside a Eucalyptus volume:
inspect reports the guest's own VG and LVs, read through the project's LVM reader on that byte range."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lvmfix
from _env import need_root, need_tools

MiB = 1 << 20


def guest_disk(path: Path) -> None:
    """64 MiB: p1 ext4 /boot (8 MiB), p2 type 8e holding VG 'centos' with LVs root and swap (real lvm2)."""
    with open(path, "wb") as f:
        f.truncate(64 * MiB)
    subprocess.run(["sfdisk", "-q", str(path)], input="label: dos\nstart=2048, size=16384, type=83, bootable\n"
                   "start=18432, type=8e\n", text=True, check=True, timeout=60)
    lvmfix.sh("mkfs.ext4", "-q", "-F", "-L", "boot", "-E", f"offset={2048 * 512}", str(path), "8M")
    dev = lvmfix.sh("losetup", "-f", "--show", "-o", str(18432 * 512), str(path)).stdout.strip()
    try:
        lvm = lvmfix.Lvm([dev])
        lvm("pvcreate", dev)
        lvm("vgcreate", "-s", "1M", "centos", dev)
        lvm("lvcreate", "-n", "root", "-L", "24M", "centos")
        lvm("lvcreate", "-n", "swap", "-L", "8M", "centos")
    finally:
        lvmfix.sh("losetup", "-d", dev, check=False)


def test_guest_vg_reported_through_the_volume(tmp_path: Path) -> None:
    need_root()
    need_tools("lvm", "losetup", "sfdisk", "mkfs.ext4")
    disk = tmp_path / "centos.img"
    guest_disk(disk)
    vols = tmp_path / "volumes"
    vols.mkdir()
    lvmfix.euca_container(vols, "vol-6e500001", disk)
    p = subprocess.run([sys.executable, "-m", "euca2kvm", "inspect", "vol-6e500001", "-s", str(vols), "--json"],
                       capture_output=True, text=True, timeout=120, check=True)
    guest = json.loads(p.stdout)["guest"]
    parts = guest["partitions"]
    assert parts[0]["content"]["type"] == "ext4" and parts[0]["content"]["label"] == "boot"
    lvm = parts[1]["content"]["lvm"]
    (vg,) = lvm["vgs"]
    assert vg["name"] == "centos" and vg["pvs_missing"] == []
    assert {(lv["name"], lv["size"]) for lv in vg["lvs"]} == {("root", 24 * MiB), ("swap", 8 * MiB)}
    assert all(lv["problem"] is None for lv in vg["lvs"])
    text = subprocess.run([sys.executable, "-m", "euca2kvm", "inspect", str(disk)], capture_output=True,
                          text=True, timeout=120, check=True).stdout
    assert "guest VG centos" in text and "LV root 24.0 MiB linear" in text
