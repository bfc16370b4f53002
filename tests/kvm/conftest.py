# SPDX-License-Identifier: Apache-2.0
"""Fixtures for the boot tests: the Debian package cache, the bootable test disk, third-party boot ISOs."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.kvm.testdisk import TestDisk, build_test_disk, fetch_package_file

from _env import missing, need_tools

DEB_CACHE = Path(os.environ.get("EUCA2KVM_DEBS", "/var/tmp/euca2kvm-debs"))
# Hybrid ISOs shipped in Debian packages that boot as hard disks and show a known VGA screen.
BOOT_ISOS = {
    "grub": ("grub-rescue-pc", "usr/lib/grub-rescue/grub-rescue-cdrom.iso", "GNU GRUB"),
    "ipxe": ("ipxe", "usr/lib/ipxe/ipxe.iso", "iPXE"),
    "memtest": ("memtest86+", "usr/lib/memtest86+/memtest86+x64.iso", "Memtest86+"),
}
BOOT_TOOLS = ("qemu-system-x86_64", "qemu-img", "sfdisk", "mkfs.fat", "syslinux", "mcopy", "mkfs.ext4")


@pytest.fixture(scope="session")
def deb_cache() -> Path:
    need_tools("apt-get", "apt-cache", "dpkg-deb")
    DEB_CACHE.mkdir(parents=True, exist_ok=True)
    return DEB_CACHE


@pytest.fixture(scope="session")
def test_disk(tmp_path_factory: pytest.TempPathFactory, deb_cache: Path) -> TestDisk:
    """The bootable test disk (raw), built once per session."""
    need_tools(*BOOT_TOOLS)
    if not Path("/bin/busybox").exists():
        missing("busybox-static not installed")
    return build_test_disk(tmp_path_factory.mktemp("testdisk") / "linux-boot.img", deb_cache)


@pytest.fixture(scope="session")
def boot_iso(deb_cache: Path) -> Callable[[str], tuple[Path, str]]:
    """name -> (path, expected screen text) of the Debian hybrid ISOs, fetched on first use."""
    need_tools("qemu-system-x86_64")
    def get(name: str) -> tuple[Path, str]:
        package, member, text = BOOT_ISOS[name]
        return fetch_package_file(package, member, deb_cache), text

    return get
