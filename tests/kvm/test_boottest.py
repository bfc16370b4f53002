# SPDX-License-Identifier: Apache-2.0
"""Boot tests under QEMU: the Debian-built test disk (raw and qcow2), corrupted copies, Debian boot ISOs,
timeout enforcement, and the accelerator probe."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.kvm.testdisk import (
    P2_START,
    PAYLOAD_SIZE,
    SECTOR,
    TestDisk,
    build_initrd,
    expected_marker,
    kernel_files,
    payload_bytes,
)

from _env import need_tools
from euca2kvm.errors import UsageError
from euca2kvm.kvm import qemu
from euca2kvm.kvm.boottest import Stage, boot_test, decode_vga_text
from refdigest import file_sha256 as sha256_file

MiB = 1 << 20
# The test disk reaches its marker in 3-10 s under TCG on a loaded 2-core host; 90 s only catches a hang.
BOOT_TIMEOUT = 90.0
# Third-party ISOs show their screen in about 2 s.
ISO_TIMEOUT = 30.0
# Clean-up after a timeout: final screendump, monitor quit, SIGTERM grace.
TIMEOUT_SLACK = 6.0
QEMU_IMG_TIMEOUT = 60

pytestmark = pytest.mark.slow


def convert(src: Path, dst: Path, fmt: str) -> Path:
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", fmt, str(src), str(dst)],
                   check=True, capture_output=True, timeout=QEMU_IMG_TIMEOUT)
    return dst


def report(result_summary: str) -> None:
    print(f"\nBOOT {result_summary}")


# --- the test disk ------------------------------------------------------------------------------------

def test_disk_layout(test_disk: TestDisk) -> None:
    """Partition table, payload placement and marker are what the builder promises."""
    out = subprocess.run(["sfdisk", "--json", str(test_disk.path)], capture_output=True, check=True,
                         timeout=30, text=True).stdout
    assert '"type": "6"' in out and '"type": "83"' in out and '"bootable": true' in out
    assert test_disk.path.stat().st_size == test_disk.size == 25 * MiB
    payload = payload_bytes()
    assert len(payload) == PAYLOAD_SIZE
    assert hashlib.sha256(payload).hexdigest() == test_disk.payload_sha256
    assert test_disk.marker == expected_marker() == f"BOOT-OK payload-{test_disk.payload_sha256[:16]}"
    data = test_disk.path.read_bytes()
    assert data[510:512] == b"\x55\xaa"
    at = data.find(payload[:4096], P2_START * SECTOR)
    assert at > 0 and data[at : at + PAYLOAD_SIZE] == payload  # stored contiguously in the ext4 partition


def test_initrd_reproducible(deb_cache: Path) -> None:
    kernel = kernel_files(deb_cache)
    a, b = build_initrd(kernel), build_initrd(kernel)
    assert a == b and a[:2] == b"\x1f\x8b"


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_boot_to_marker(test_disk: TestDisk, tmp_path: Path, fmt: str) -> None:
    image = test_disk.path if fmt == "raw" else convert(test_disk.path, tmp_path / "disk.qcow2", "qcow2")
    before = sha256_file(image)
    res = boot_test(image, fmt, timeout=BOOT_TIMEOUT, expect=test_disk.marker, workdir=tmp_path / "run")
    report(res.summary())
    assert res.ok, res.serial[-2000:]
    assert res.stage is Stage.EXPECTED and res.failure is None
    assert test_disk.marker in res.serial.splitlines()
    assert res.milestones[Stage.FIRMWARE] <= res.milestones[Stage.KERNEL] <= res.milestones[Stage.EXPECTED]
    assert Stage.BOOTLOADER in res.milestones  # SYSLINUX banner on serial
    assert "Linux version" in res.serial
    assert res.screenshot is not None and res.screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sha256_file(image) == before  # attached read-only


def test_shifted_image_stops_at_firmware(test_disk: TestDisk, tmp_path: Path) -> None:
    """An export off by 1 MiB has no MBR at sector 0: the firmware finds nothing to boot."""
    shifted = tmp_path / "shifted.img"
    with open(shifted, "wb") as f:
        f.truncate(MiB)
        f.seek(MiB)
        f.write(test_disk.path.read_bytes())
    start = time.monotonic()
    res = boot_test(shifted, "raw", timeout=BOOT_TIMEOUT, expect=test_disk.marker, workdir=tmp_path / "run")
    report(res.summary())
    assert not res.ok
    assert res.stage is Stage.FIRMWARE
    assert res.failure is not None and "No bootable device" in res.failure
    assert res.reason.startswith("stopped on failure")
    assert "No bootable device" in res.vga_text
    assert time.monotonic() - start < 30  # stopped on the failure, not the timeout


def test_flipped_payload_fails_in_kernel(test_disk: TestDisk, tmp_path: Path) -> None:
    """One byte flipped inside the payload: boots Linux, but the guest's sha256 check refuses it."""
    bad = tmp_path / "flipped.img"
    data = bytearray(test_disk.path.read_bytes())
    at = bytes(data).find(payload_bytes()[:4096], P2_START * SECTOR)
    data[at + PAYLOAD_SIZE // 2] ^= 0xFF
    bad.write_bytes(data)
    res = boot_test(bad, "raw", timeout=BOOT_TIMEOUT, expect=test_disk.marker, workdir=tmp_path / "run")
    report(res.summary())
    assert not res.ok
    assert res.stage is Stage.KERNEL
    assert res.failure is not None and "BOOT-FAIL payload checksum mismatch" in res.failure
    assert test_disk.marker not in res.serial
    assert res.reason == "guest powered off or rebooted"


# --- third-party boot images ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["grub", "ipxe", "memtest"])
def test_debian_iso_screens(boot_iso: Callable[[str], tuple[Path, str]], tmp_path: Path, name: str) -> None:
    iso, text = boot_iso(name)
    res = boot_test(iso, "raw", timeout=ISO_TIMEOUT, expect=text, workdir=tmp_path / "run")
    report(res.summary())
    assert res.ok, res.vga_text
    assert text in res.vga_text
    assert res.screenshot is not None and res.screenshot.stat().st_size > 100
    if name == "grub":
        assert Stage.BOOTLOADER in res.milestones


# --- timeouts and process hygiene ---------------------------------------------------------------------

def _hang_image(path: Path) -> Path:
    """A disk whose boot sector spins forever ("jmp $"): only the timeout can end the test."""
    mbr = bytearray(512)
    mbr[0:2] = b"\xeb\xfe"
    mbr[510:512] = b"\x55\xaa"
    with open(path, "wb") as f:
        f.write(mbr)
        f.truncate(MiB)
    return path


def test_timeout_is_enforced(tmp_path: Path) -> None:
    need_tools("qemu-system-x86_64")
    timeout = 3.0
    start = time.monotonic()
    res = boot_test(_hang_image(tmp_path / "hang.img"), "raw", timeout=timeout, expect="never",
                    workdir=tmp_path / "run", accel="tcg")
    took = time.monotonic() - start
    report(f"{res.summary()} (wall {took:.2f}s)")
    assert took < timeout + TIMEOUT_SLACK
    assert res.reason == "timeout" and not res.ok
    assert res.stage is Stage.FIRMWARE and "Booting from Hard Disk" in res.vga_text
    assert res.qemu_status is not None  # the process was reaped


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        boot_test(tmp_path / "missing.img", "raw", workdir=tmp_path)
    img = _hang_image(tmp_path / "x.img")
    for kwargs in ({"fmt": "bogus"}, {"timeout": 0}, {"bus": "scsi"}):
        with pytest.raises(UsageError):
            boot_test(img, workdir=tmp_path, **kwargs)  # type: ignore[arg-type]


def test_decode_vga_text() -> None:
    raw = bytearray(b"\x20\x07" * 2000)
    for i, ch in enumerate(b"Hello\x01"):
        raw[2 * i] = ch
    raw[2 * 80] = ord("X")
    assert decode_vga_text(bytes(raw)) == "Hello\nX"


def test_hmp_quote() -> None:
    assert qemu.hmp_quote('/tmp/a "b"\\c') == '"/tmp/a \\"b\\"\\\\c"'
    with pytest.raises(UsageError):
        qemu.hmp_quote("/tmp/a\nquit")


# --- accelerator choice -------------------------------------------------------------------------------

def test_probe_guest_runs_under_tcg() -> None:
    """The probe disk itself is sound: under TCG it reaches the SYSLINUX protected-mode core."""
    need_tools("qemu-system-x86_64", "syslinux", "mcopy", "mkfs.fat", "sfdisk")
    assert qemu.probe_guest_runs("tcg") is True


def test_accelerator_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(qemu.ACCEL_ENV, "TCG")
    assert qemu.accelerator() == "tcg"
    monkeypatch.setenv(qemu.ACCEL_ENV, "hax")
    with pytest.raises(UsageError):
        qemu.accelerator()


def test_accelerator_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a PVM host KVM opens but hangs real guests: the probe must choose TCG."""
    need_tools("qemu-system-x86_64", "syslinux")
    monkeypatch.delenv(qemu.ACCEL_ENV, raising=False)
    start = time.monotonic()
    chosen = qemu.accelerator()
    report(f"accelerator probe chose {chosen} in {time.monotonic() - start:.2f}s")
    assert chosen in qemu.ACCELERATORS
    if os.path.isdir("/sys/module/kvm_pvm") or not os.path.exists("/dev/kvm"):
        assert chosen == "tcg"
    assert qemu.accelerator() == chosen  # cached
