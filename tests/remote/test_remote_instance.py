# SPDX-License-Identifier: Apache-2.0
"""export-instance from an inventory file with the volumes on a storage controller reached over SSH:
the disk image, its digest and the domain equal those of the same export from the local directory,
and the manifest names the remote container by its ssh:// URL."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import sshd
from sshd import cli

Fixtures = tuple[Path, dict[str, Any]]
INSTANCE, VOLUME = "i-1a2b3c4d", "vol-4708bf47"  # an LVM container of the "euca" scenario


def test_export_instance_over_ssh_equals_local(lvm_fixtures: Fixtures, sshd_server: sshd.Sshd,
                                               tmp_path: Path) -> None:
    root, _ = lvm_fixtures
    voldir = root / "euca"
    inv = tmp_path / "inv.json"
    inv.write_text(json.dumps({
        "format": "euca2kvm-inventory", "version": "1.1", "source": "test", "captured_at": "2026-01-01T00:00:00Z",
        "volumes_dir": str(voldir),
        "instances": [{
            "id": INSTANCE, "state": "stopped", "root_device": "/dev/sda",
            "vm_type": {"name": "m1.small", "cpus": 1, "memory_mib": 256},
            "attachments": [{"volume_id": VOLUME, "device": "/dev/sda", "is_root": True, "kind": "boot"}],
            "mac": "d0:0d:00:00:00:01", "private_ip": "172.16.4.21", "unavailable": [],
        }],
    }))
    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd.img"  # the fixture's disk has no boot loader
    kernel.write_bytes(b"kernel")
    initrd.write_bytes(b"initrd")
    boot = ["--kernel", str(kernel), "--ramdisk", str(initrd)]
    lo, ro = tmp_path / "local", tmp_path / "remote"
    cli(None, "export-instance", INSTANCE, "--inventory", str(inv), "--source", str(voldir), "-o", str(lo), *boot)
    cli(sshd_server, "export-instance", INSTANCE, "--inventory", str(inv), "--source",
        sshd_server.url(str(voldir)), "-o", str(ro), *boot)
    ml = json.loads((lo / "manifest.json").read_text())["volumes"]
    mr = json.loads((ro / "manifest.json").read_text())["volumes"]
    assert len(ml) == len(mr) == 1 and ml[0]["digest"] and mr[0]["digest"] == ml[0]["digest"]
    assert mr[0]["files"] == [sshd_server.url(str(voldir / VOLUME))]
    assert [s["path"] for s in mr[0]["source"]] == mr[0]["files"]
    image = Path(ml[0]["output"]).name
    assert subprocess.run(["cmp", str(lo / image), str(ro / image)], timeout=120).returncode == 0
    xl = (lo / f"{INSTANCE}.xml").read_text().replace(str(lo), "OUT")
    xr = (ro / f"{INSTANCE}.xml").read_text().replace(str(ro), "OUT")
    assert xl == xr
    cli(None, "verify", str(ro / "manifest.json"))
