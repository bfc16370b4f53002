# SPDX-License-Identifier: Apache-2.0
"""Boot loader recognition by byte signatures in the MBR, partition boot sectors and files.

Each signature below names its source. They are strings the boot code prints on failure, so they
are stable across builds of the same loader:

* GRUB 2 ``boot.img`` (grub-core/boot/i386/pc/boot.S): notification_string "GRUB " followed by
  "Geom", "Hard Disk", "Read", " Error"; the LBA of core.img's first sector is the little-endian
  64-bit ``kernel_sector`` at 0x5C (include/grub/i386/pc/boot.h, GRUB_BOOT_MACHINE_KERNEL_SECTOR).
  In hybrid ISOs made by ``grub-mkrescue`` (xorriso ``--grub2-mbr``, boot_hybrid.img) 0x5C is zero and
  xorriso patches the LBA, in 512-byte sectors, at 0x1B0.
* GRUB 2 ``diskboot.img``, the first sector of core.img (grub-core/boot/i386/pc/diskboot.S): starts
  with ``push %dx; push %si; mov $imm16, %si`` (52 56 BE) and holds "Geom" and "Read" error strings.
* SYSLINUX ``mbr.bin``/``altmbr.bin`` (syslinux mbr/mbr.S): "Missing operating system." and
  "Multiple active partitions."; ``gptmbr.bin`` (mbr/gptmbr.S): "Missing OS" and "Multiple active
  partitions"; ``isohdpfx.bin`` (isohybrid MBR, mbr/isohdpfx.S): "isolinux.bin missing or corrupt".
* SYSLINUX boot sector written by ``syslinux --install`` (libinstaller/syslxmod.c): OEM name
  "SYSLINUX" at byte 3 of the FAT boot sector, and the file LDLINUX.SYS in the root directory.
* MS-DOS / Windows MBR (all versions since DOS 3.3): "Invalid partition table" and
  "Error loading operating system" / "Missing operating system".
* Windows boot sector (NTFS or FAT, Vista and later / NT-XP): "BOOTMGR" / "NTLDR" in the code;
  "BOOTMGR is compressed" / "NTLDR is missing" messages.
* Memtest86+ 6.x hybrid ISO MBR (memtest86plus boot/mbr.S): "Loading Memtest86+"; it loads the
  program directly from the disk.
* mkfs.fat's stub boot code (dosfstools mkfs.fat.c, dummy_boot_code) and mkntfs's (ntfs-3g):
  "This is not a bootable disk." — a boot sector that only prints that message.
* UEFI: the removable-media default path EFI/BOOT/BOOTX64.EFI (UEFI 2.10 §3.5.1.1) on a FAT
  EFI System Partition.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .filesystems import fat_dir, fat_find, fat_geometry
from .imagefile import Reader, Window, read_at

MBR_CODE = 440  # boot code area of an MBR; the disk signature and the partition table follow
GRUB_KERNEL_SECTOR_AT = 0x5C
GRUB_HYBRID_SECTOR_AT = 0x1B0
GRUB_MBR = b"GRUB \x00Geom\x00"
DISKBOOT_START = b"\x52\x56\xbe"
MEMTEST_MBR = b"Loading Memtest86+"
# dosfstools mkfs.fat.c dummy_boot_code and ntfs-3g mkntfs boot code: printed instead of booting.
MKFS_FAT_STUB = b"This is not a bootable disk."
UEFI_DEFAULT_LOADERS = ("EFI/BOOT/BOOTX64.EFI", "EFI/BOOT/BOOTIA32.EFI")
# EFI/<vendor> directories listed in the report; an ESP rarely has more than a few.
MAX_EFI_VENDORS = 16


@dataclass
class BootCode:
    """A boot loader (or its absence) recognised at one place."""

    where: str  # "MBR", "partition 1", "disk sector 0", "sector 2048", "partition 1 file"
    loader: str  # GRUB, GRUB core.img, SYSLINUX, ISOLINUX, Memtest86+, Windows, UEFI, none, unknown
    detail: str = ""


def mbr_code(sector0: bytes) -> BootCode:
    code = sector0[:MBR_CODE]
    if code == bytes(MBR_CODE):
        return BootCode("MBR", "none", "boot code area is zero")
    if GRUB_MBR in code:
        return BootCode("MBR", "GRUB", "GRUB 2 boot.img")
    if b"isolinux.bin missing or corrupt" in code:
        return BootCode("MBR", "ISOLINUX", "isohybrid MBR (isohdpfx)")
    if MEMTEST_MBR in code:
        return BootCode("MBR", "Memtest86+", "Memtest86+ MBR loader")
    if b"Multiple active partitions" in code:
        gpt = b"Missing OS" in code and b"Missing operating system" not in code
        flavour = "gptmbr.bin" if gpt else "mbr.bin"
        return BootCode("MBR", "SYSLINUX", f"SYSLINUX {flavour}")
    if b"Invalid partition table" in code:
        return BootCode("MBR", "Windows", "MS-DOS/Windows MBR")
    return BootCode("MBR", "unknown", "boot code present but not recognised")


def grub_core(reader: Reader, sector0: bytes) -> BootCode | None:
    """Follow GRUB boot.img to the first sector of core.img; None unless sector 0 is GRUB's."""
    if GRUB_MBR not in sector0[:MBR_CODE]:
        return None
    lba = struct.unpack_from("<Q", sector0, GRUB_KERNEL_SECTOR_AT)[0]
    if lba == 0:
        lba = struct.unpack_from("<Q", sector0, GRUB_HYBRID_SECTOR_AT)[0]
    if lba == 0 or lba >= reader.size // 512:
        return BootCode(f"sector {lba}", "unknown", "GRUB boot.img points outside the disk")
    sec = read_at(reader, lba * 512, 512)
    if sec is not None and sec.startswith(DISKBOOT_START) and b"Geom\x00" in sec and b"Read\x00" in sec:
        return BootCode(f"sector {lba}", "GRUB core.img", "diskboot.img found where boot.img points")
    return BootCode(f"sector {lba}", "unknown", "GRUB boot.img points at a sector without core.img")


def boot_sector(w: Window, where: str) -> BootCode:
    """What the first sector of a partition (or an unpartitioned disk) would run when chain-loaded."""
    bs = w.read(0, 512)
    if bs is None or bs[510:512] != b"\x55\xaa":
        return BootCode(where, "none", "no boot sector signature 55AA")
    if MKFS_FAT_STUB in bs:
        return BootCode(where, "none", "non-bootable stub of mkfs.fat/mkntfs")
    if bs[3:11] == b"SYSLINUX":
        fat = fat_geometry(bs)
        found = fat is not None and fat_find(w, fat, "LDLINUX.SYS") is not None
        return BootCode(where, "SYSLINUX", "SYSLINUX boot sector" + (", LDLINUX.SYS present" if found else
                                                                   ", LDLINUX.SYS not found"))
    if GRUB_MBR in bs:
        return BootCode(where, "GRUB", "GRUB 2 boot.img in the boot sector")
    if b"BOOTMGR" in bs:
        return BootCode(where, "Windows", "Windows boot manager (BOOTMGR) boot sector")
    if b"NTLDR" in bs:
        return BootCode(where, "Windows", "Windows NT loader (NTLDR) boot sector")
    if b"isolinux.bin missing or corrupt" in bs:
        return BootCode(where, "ISOLINUX", "isohybrid boot code")
    return BootCode(where, "unknown", "boot sector with signature 55AA, code not recognised")


def uefi_loader(w: Window, where: str) -> BootCode | None:
    """A UEFI default loader on a FAT filesystem, else a note of the vendor directories present."""
    bs = w.read(0, 512)
    fat = fat_geometry(bs) if bs is not None else None
    if fat is None:
        return None
    for path in UEFI_DEFAULT_LOADERS:
        if fat_find(w, fat, path) is not None:
            return BootCode(where, "UEFI", path)
    efi = fat_find(w, fat, "EFI")
    vendors: list[str] = []
    if efi is not None and efi[0] >= 2:
        for name, attr, _, _ in fat_dir(w, fat, efi[0]):
            if attr & 0x10 and not name.startswith("."):
                vendors.append(name)
            if len(vendors) >= MAX_EFI_VENDORS:
                break
    if vendors:
        listed = ", ".join("EFI/" + v for v in vendors)
        return BootCode(where, "none", f"no EFI/BOOT/BOOTX64.EFI; vendor directories: {listed}")
    return BootCode(where, "none", "no EFI directory")
