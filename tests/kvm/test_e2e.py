# SPDX-License-Identifier: Apache-2.0
"""The proof: a bootable disk inside a Eucalyptus container made by the real lvm2, exported by euca2kvm
to raw and qcow2, boots in QEMU to its marker; third-party boot images survive the round trip too.

The test disk's initrd checks the sha256 of a payload on its ext4 partition before printing the
marker, so reaching it proves the boot loader, kernel, initrd and filesystem bytes are intact.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.kvm.testdisk import TestDisk

import lvmfix
from _env import need_root, need_tools
from refdigest import file_sha256 as sha256

MiB = 1 << 20


def euca_container(d: Path, vol: str, payload: Path) -> Path:
    need_root()
    need_tools("lvm", "losetup")
    return lvmfix.euca_container(d, vol, payload)


def euca2kvm(*args: str, check: int = 0) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([sys.executable, "-m", "euca2kvm", *args], capture_output=True, text=True, timeout=600)
    assert p.returncode == check, (p.returncode, p.stdout[-3000:], p.stderr[-3000:])
    return p


@pytest.mark.slow
def test_exported_volume_boots_to_marker(tmp_path: Path, test_disk: TestDisk) -> None:
    vols = tmp_path / "volumes"
    vols.mkdir()
    container = euca_container(vols, "vol-e2e0b001", test_disk.path)
    before = sha256(container)
    out = tmp_path / "out"
    timings: dict[str, Any] = {}
    for fmt in ("raw", "qcow2"):
        euca2kvm("export", "vol-e2e0b001", "--source", str(vols), "-o", str(out), "--format", fmt,
                 "--libvirt", "--boot-test", "--boot-expect", test_disk.marker, "--boot-timeout", "90")
        man = json.loads((out / "manifest.json").read_text())
        entry = next(e for e in man["volumes"] if e["format"] == fmt)
        assert entry["boot_test"]["ok"] and entry["boot_test"]["stage"] == "expected", entry["boot_test"]
        assert test_disk.marker in (out / f"vol-e2e0b001.{fmt}.boot.log").read_text()
        assert Path(entry["libvirt"]["domain"]).exists()
        timings[fmt] = entry["boot_test"]["milestones"]
        print(f"\n{fmt}: boot test {entry['boot_test']['elapsed']} s, milestones {timings[fmt]}")
    # the standalone command on the exported image: transcript on stdout, screenshot kept beside it
    p = euca2kvm("boot-test", str(out / "vol-e2e0b001.qcow2"), "--expect", test_disk.marker, "--timeout", "90")
    assert p.stdout.startswith("BOOTED") and "expected" in p.stdout
    assert (out / "vol-e2e0b001.qcow2.boot.png").stat().st_size > 0
    # the raw export holds exactly the test disk followed by the zeros of the rest of the 1 GiB LV
    raw = out / "vol-e2e0b001.raw"
    with open(raw, "rb") as f:
        assert hashlib.sha256(f.read(test_disk.size)).hexdigest() == sha256(test_disk.path)
    assert sha256(container) == before, "the source container changed"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["grub", "ipxe", "memtest"])
def test_third_party_boot_images_round_trip(tmp_path: Path, boot_iso: Callable[[str], tuple[Path, str]],
                                            name: str) -> None:
    iso, screen = boot_iso(name)
    vols = tmp_path / "volumes"
    vols.mkdir()
    vol = f"vol-e2e0c00{['grub', 'ipxe', 'memtest'].index(name)}"
    container = euca_container(vols, vol, iso)
    before = sha256(container)
    out = tmp_path / "out"
    euca2kvm("export", vol, "--source", str(vols), "-o", str(out), "--boot-test", "--boot-expect", screen,
             "--boot-timeout", "60")
    entry = json.loads((out / "manifest.json").read_text())["volumes"][0]
    assert entry["boot_test"]["ok"], entry["boot_test"]
    assert screen in entry["boot_test"]["vga_text"]
    assert Path(entry["boot_test"]["screenshot"]).exists()
    assert sha256(container) == before


def test_failed_boot_is_an_error(tmp_path: Path) -> None:
    """A volume without a boot loader: the export succeeds, the boot test fails with exit 6."""
    need_tools("qemu-system-x86_64")
    blank = tmp_path / "blank.img"
    blank.write_bytes(b"\0" * MiB)
    vols = tmp_path / "volumes"
    vols.mkdir()
    euca_container(vols, "vol-e2e0d001", blank)
    p = euca2kvm("export", "vol-e2e0d001", "--source", str(vols), "-o", str(tmp_path / "out"), "--boot-test",
                 "--boot-timeout", "20", check=6)
    assert "did not boot" in p.stderr
