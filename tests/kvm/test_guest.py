# SPDX-License-Identifier: Apache-2.0
"""Guest inspection against images made by sfdisk, mkfs.*, syslinux, cryptsetup and lvm2.

What the report says is checked against ``sfdisk --json``, ``blkid -p --offset`` and
``dumpe2fs -h`` run on the same image.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
from tests.kvm.guestimg import (
    MBR_CODE,
    SYSLINUX_MBR,
    MiB,
    blkid,
    dumpe2fs,
    luks,
    lvm_pv,
    mkfs,
    need_tools,
    place,
    run,
    sfdisk,
    sfdisk_json,
    sparse,
    write_at,
)

from euca2kvm.kvm.guest import GuestReport, inspect_disk
from euca2kvm.kvm.imagefile import open_image

EXT_UUID = "0b3c9f50-7f7d-4c4a-9c55-1d2e3f405162"
SWAP_UUID = "5d8a4c1e-2b3f-4e6d-8a9b-0c1d2e3f4a5b"
PV_UUID = "AbCdEf-1234-5678-9aBc-DeFg-HiJk-LmNoPq"


def inspect(path: Path) -> GuestReport:
    with open_image(str(path)) as r:
        rep = inspect_disk(r, path.name)
    json.loads(rep.to_json())  # always serialisable
    assert rep.render().endswith(f"bootable: {rep.verdict}\n")
    return rep


def check_against_sfdisk(rep: GuestReport, table: dict[str, Any]) -> None:
    """Partition starts, sizes, types and flags as sfdisk sees them."""
    ss = table["sectorsize"]
    want = {}
    for p in table["partitions"]:
        index = int(p["node"].rsplit("img", 1)[1])
        want[index] = p
    got = {pr.partition.index: pr.partition for pr in rep.partitions}
    assert sorted(got) == sorted(want)
    for index, p in want.items():
        g = got[index]
        assert (g.start, g.size) == (p["start"] * ss, p["size"] * ss)
        if table["label"] == "dos":
            assert int(g.type, 16) == int(p["type"], 16)
            assert g.bootable == bool(p.get("bootable"))
        else:
            assert g.type == p["type"].upper()
            assert g.uuid == p["uuid"].upper()
            assert (g.name or "") == p.get("name", "")


def check_against_blkid(disk: Path, offset: int, size: int, content: Any) -> None:
    b = blkid(disk, offset, size)
    assert content.type == b["TYPE"]
    assert (content.label or "") == b.get("LABEL", "")
    if "UUID" in b:
        assert (content.uuid or "").lower() == b["UUID"].lower()
    if "VERSION" in b and content.type == "crypto_LUKS":
        assert content.version == b["VERSION"]


@pytest.fixture(scope="module")
def mbr_disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MBR: active FAT16 with SYSLINUX, extended with a needs_recovery ext4 and a swap, mbr.bin."""
    need_tools("sfdisk", "mkfs.vfat", "syslinux", "mkfs.ext4", "debugfs", "mkswap")
    d = tmp_path_factory.mktemp("mbr")
    disk = sparse(d / "mbr.img", 64 * MiB)
    parts = sfdisk(disk, "label: dos\nlabel-id: 0x1234abcd\n"
                         "start=2048, size=16MiB, type=6, bootable\n"
                         "type=5\n"
                         "size=24MiB, type=83\n"
                         "type=82\n")
    p1, p5, p6 = parts[0], parts[2], parts[3]
    fat = mkfs(d / "fat.img", p1["size"] * 512, "mkfs.vfat", "-F", "16", "-n", "SYSBOOT", "-i", "1234ABCD")
    run("syslinux", "--install", str(fat))
    place(disk, p1["start"] * 512, fat)
    ext = mkfs(d / "ext.img", p5["size"] * 512, "mkfs.ext4", "-q", "-F", "-L", "guestroot", "-U", EXT_UUID)
    run("debugfs", "-w", "-R", "feature needs_recovery", str(ext))
    place(disk, p5["start"] * 512, ext)
    swap = mkfs(d / "swap.img", p6["size"] * 512, "mkswap", "-L", "swp", "-U", SWAP_UUID)
    place(disk, p6["start"] * 512, swap)
    write_at(disk, 0, Path(SYSLINUX_MBR).read_bytes()[:MBR_CODE])
    return disk


def test_mbr_syslinux_extended(mbr_disk: Path, tmp_path: Path) -> None:
    rep = inspect(mbr_disk)
    table = sfdisk_json(mbr_disk)
    assert rep.table is not None and rep.table.kind == "mbr" and rep.table.id == table["id"]
    check_against_sfdisk(rep, table)
    by_index = {pr.partition.index: pr for pr in rep.partitions}
    assert by_index[2].partition.extended and by_index[2].content is None
    assert by_index[5].partition.logical and by_index[6].partition.logical
    for i in (1, 5, 6):
        p = by_index[i].partition
        check_against_blkid(mbr_disk, p.start, p.size, by_index[i].content)
    fat, ext, swap = by_index[1].content, by_index[5].content, by_index[6].content
    assert fat is not None and fat.version == "FAT16" and fat.label == "SYSBOOT" and fat.uuid == "1234-ABCD"
    assert ext is not None and ext.type == "ext4" and ext.uuid == EXT_UUID and ext.label == "guestroot"
    e2 = dumpe2fs(mbr_disk, by_index[5].partition.start, by_index[5].partition.size, tmp_path)
    assert "needs_recovery" in e2["Filesystem features"].split()
    assert ext.needs_recovery is True
    assert ext.size == int(e2["Block count"]) * int(e2["Block size"])
    assert swap is not None and swap.type == "swap" and swap.label == "swp"
    assert by_index[1].boot is not None and by_index[1].boot.loader == "SYSLINUX"
    assert "LDLINUX.SYS present" in by_index[1].boot.detail
    assert rep.boot[0].loader == "SYSLINUX"
    assert rep.bootable == "yes", rep.verdict
    assert "SYSLINUX" in rep.reason and "active FAT16 partition 1" in rep.reason


def test_mbr_no_active_partition(mbr_disk: Path, tmp_path: Path) -> None:
    disk = tmp_path / "noactive.img"
    disk.write_bytes(mbr_disk.read_bytes())
    run("sfdisk", "-q", "--no-reread", "--no-tell-kernel", "--activate", str(disk), "-")
    rep = inspect(disk)
    assert not any(pr.partition.bootable for pr in rep.partitions)
    assert rep.bootable == "no" and "no active partition" in rep.reason


def test_mbr_empty_code_and_ext_clean(tmp_path: Path) -> None:
    need_tools("sfdisk", "mkfs.ext2")
    disk = sparse(tmp_path / "d.img", 32 * MiB)
    (p1,) = sfdisk(disk, "label: dos\nstart=2048, type=83, bootable\n")
    ext = mkfs(tmp_path / "e.img", p1["size"] * 512, "mkfs.ext2", "-q", "-F", "-L", "old")
    place(disk, p1["start"] * 512, ext)
    rep = inspect(disk)
    c = rep.partitions[0].content
    assert c is not None and c.type == "ext2" and c.needs_recovery is False and c.clean is True
    check_against_blkid(disk, p1["start"] * 512, p1["size"] * 512, c)
    assert rep.bootable == "no" and "boot code area (bytes 0-439) is empty" in rep.reason


@pytest.fixture(scope="module")
def gpt_disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """GPT: BIOS boot, ESP (FAT32, EFI/BOOT/BOOTX64.EFI), XFS, btrfs, LVM PV, LUKS2, LUKS1."""
    need_tools("sfdisk", "mkfs.vfat", "mmd", "mcopy", "mkfs.xfs", "mkfs.btrfs")
    d = tmp_path_factory.mktemp("gpt")
    disk = sparse(d / "gpt.img", 640 * MiB)
    parts = sfdisk(disk, "label: gpt\nlabel-id: 8C5D2A0E-0B1C-4D2E-9F30-415263748596\n"
                         "size=1MiB, type=21686148-6449-6E6F-744E-656564454649, name=bios\n"
                         "size=40MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=\"EFI System\"\n"
                         "size=320MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=root, "
                         "attrs=LegacyBIOSBootable\n"
                         "size=120MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=data\n"
                         "size=8MiB, type=E6D6D379-F507-44C2-A23C-238F2A3DF928, name=pv\n"
                         "size=20MiB, type=CA7D7CCB-63ED-4C53-861C-1742536059CC, name=crypt2\n"
                         "size=4MiB, type=CA7D7CCB-63ED-4C53-861C-1742536059CC, name=crypt1\n")
    sizes = [p["size"] * 512 for p in parts]
    esp = mkfs(d / "esp.img", sizes[1], "mkfs.vfat", "-F", "32", "-n", "ESP")
    (d / "loader.efi").write_bytes(b"MZ" + bytes(1022))
    run("mmd", "-i", str(esp), "::/EFI", "::/EFI/BOOT", "::/EFI/debian")
    run("mcopy", "-i", str(esp), str(d / "loader.efi"), "::/EFI/BOOT/BOOTX64.EFI")
    files = [
        (1, esp),
        (2, mkfs(d / "xfs.img", sizes[2], "mkfs.xfs", "-q", "-L", "xroot")),
        (3, mkfs(d / "btrfs.img", sizes[3], "mkfs.btrfs", "-q", "-L", "bdata")),
        (4, lvm_pv(d / "pv.img", sizes[4], PV_UUID)),
        (5, luks(d / "luks2.img", sizes[5], 2, "secret")),
        (6, luks(d / "luks1.img", sizes[6], 1, None)),
    ]
    for i, f in files:
        place(disk, parts[i]["start"] * 512, f)
        f.unlink()
    return disk


def test_gpt_contents(gpt_disk: Path) -> None:
    rep = inspect(gpt_disk)
    table = sfdisk_json(gpt_disk)
    assert rep.table is not None and rep.table.kind == "gpt" and rep.table.header == "primary"
    assert rep.table.id == table["id"] and rep.table.protective_mbr == "valid"
    check_against_sfdisk(rep, table)
    names = [pr.partition.type_name for pr in rep.partitions]
    assert names[:3] == ["BIOS boot", "EFI System", "Linux filesystem"]
    assert rep.partitions[2].partition.bootable  # LegacyBIOSBootable attribute
    types = [pr.content.type if pr.content else None for pr in rep.partitions]
    assert types == ["unknown", "vfat", "xfs", "btrfs", "LVM2_member", "crypto_LUKS", "crypto_LUKS"]
    for pr in rep.partitions[1:]:
        check_against_blkid(gpt_disk, pr.partition.start, pr.partition.size, pr.content)
    assert rep.partitions[4].content is not None and rep.partitions[4].content.uuid == PV_UUID
    lvm = rep.partitions[4].content.lvm  # pvcreate only: an orphan PV, read through the project's reader
    assert isinstance(lvm, dict) and lvm["vgs"] == [] and lvm["orphan"] and not lvm["errors"]
    assert rep.partitions[5].content is not None and rep.partitions[5].content.label == "secret"
    assert rep.partitions[6].content is not None and rep.partitions[6].content.version == "1"
    esp = rep.partitions[1]
    assert esp.boot is not None and esp.boot.loader == "UEFI" and esp.boot.detail == "EFI/BOOT/BOOTX64.EFI"
    assert rep.bootable == "yes" and "needs UEFI firmware" in rep.reason, rep.verdict


def _flip(disk: Path, offset: int) -> None:
    with open(disk, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


@pytest.mark.parametrize("where", ["header", "entries"])
def test_gpt_backup_header(gpt_disk: Path, tmp_path: Path, where: str) -> None:
    disk = tmp_path / "bad.img"
    run("cp", "--sparse=always", str(gpt_disk), str(disk))
    _flip(disk, 512 + 0x30 if where == "header" else 1024 + 40)  # first usable LBA / entry 1 start
    rep = inspect(disk)
    assert rep.table is not None and rep.table.header == "backup"
    why = "header CRC32 mismatch" if where == "header" else "entry array CRC32 mismatch"
    assert any("using the backup header" in n and why in n for n in rep.table.notes)
    check_against_sfdisk(rep, sfdisk_json(gpt_disk))


def test_gpt_without_esp_or_bios_boot(tmp_path: Path) -> None:
    need_tools("sfdisk")
    disk = sparse(tmp_path / "g.img", 16 * MiB)
    sfdisk(disk, "label: gpt\nsize=4MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n")
    rep = inspect(disk)
    assert rep.bootable == "unknown"
    assert "GPT without an EFI System Partition or BIOS boot partition" in rep.reason
    # Both headers destroyed: no table, and the report says why.
    _flip(disk, 512 + 20)
    _flip(disk, 16 * MiB - 512 + 20)
    rep = inspect(disk)
    assert any("backup header: header CRC32 mismatch" in n for n in rep.notes)
    # What remains is the protective MBR, reported as such.
    assert rep.table is not None and rep.table.kind == "mbr" and rep.partitions[0].partition.type == "0xee"
    assert any("no valid GPT" in n for n in rep.table.notes)


def test_gpt_type_names_match_sfdisk() -> None:
    need_tools("sfdisk")
    from euca2kvm.kvm.partitions import GPT_TYPES

    known = run("sfdisk", "--label", "gpt", "-T").upper()
    # Linux LUKS is in the Discoverable Partitions Specification but not in util-linux 2.38's list.
    for guid in set(GPT_TYPES) - {"CA7D7CCB-63ED-4C53-861C-1742536059CC"}:
        assert guid in known, guid


def test_whole_disk_ext4_no_table(tmp_path: Path) -> None:
    need_tools("mkfs.ext4")
    disk = mkfs(tmp_path / "w.img", 16 * MiB, "mkfs.ext4", "-q", "-F", "-L", "ebsroot")
    rep = inspect(disk)
    assert rep.table is None and rep.whole_disk is not None and rep.whole_disk.type == "ext4"
    check_against_blkid(disk, 0, 16 * MiB, rep.whole_disk)
    assert rep.whole_disk.needs_recovery is False
    assert rep.bootable == "no"
    assert rep.reason.startswith("no partition table and no boot sector signature 55AA (whole-disk ext4")


def test_blank_and_tiny(tmp_path: Path) -> None:
    rep = inspect(sparse(tmp_path / "z.img", 4 * MiB))
    assert (rep.bootable, rep.reason) == ("no", "disk is blank (the first MiB is zero)")
    tiny = tmp_path / "t.img"
    tiny.write_bytes(b"\x55\xaa" * 10)
    assert inspect(tiny).bootable == "no"


def test_superfloppy_syslinux(tmp_path: Path) -> None:
    need_tools("mkfs.vfat", "syslinux")
    disk = mkfs(tmp_path / "f.img", 16 * MiB, "mkfs.vfat", "-F", "16", "-n", "FLOPPY", "-i", "0BADF00D")
    run("syslinux", "--install", str(disk))
    rep = inspect(disk)
    assert rep.table is None and rep.whole_disk is not None
    check_against_blkid(disk, 0, 16 * MiB, rep.whole_disk)
    assert rep.bootable == "yes" and "SYSLINUX" in rep.reason, rep.verdict


def test_qcow2_same_report(mbr_disk: Path, tmp_path: Path) -> None:
    need_tools("qemu-img")
    q = tmp_path / "mbr.qcow2"
    run("qemu-img", "convert", "-O", "qcow2", str(mbr_disk), str(q))
    a, b = inspect(mbr_disk).to_dict(), inspect(q).to_dict()
    a.pop("name"), b.pop("name")
    assert a == b


def test_grub_boot_img_and_core(tmp_path: Path) -> None:
    """Real GRUB 2 boot.img in the MBR, kernel_sector patched to 1, diskboot.img at LBA 1."""
    from tests.kvm.guestimg import deb_file

    need_tools("sfdisk")
    boot = deb_file("grub-pc-bin", "usr/lib/grub/i386-pc/boot.img").read_bytes()
    diskboot = deb_file("grub-pc-bin", "usr/lib/grub/i386-pc/diskboot.img").read_bytes()
    disk = sparse(tmp_path / "grub.img", 16 * MiB)
    sfdisk(disk, "label: dos\nstart=2048, type=83\n")
    write_at(disk, 0, boot[:MBR_CODE])
    write_at(disk, 0x5C, struct.pack("<Q", 1))
    rep = inspect(disk)
    assert rep.bootable == "unknown" and "core.img not found" in rep.reason
    write_at(disk, 512, diskboot)
    rep = inspect(disk)
    assert [b.loader for b in rep.boot] == ["GRUB", "GRUB core.img"]
    assert rep.bootable == "yes" and rep.reason == "MBR with GRUB boot.img, core.img at sector 1"


@pytest.mark.parametrize(("package", "member", "loader"), [
    ("grub-rescue-pc", "usr/lib/grub-rescue/grub-rescue-cdrom.iso", "GRUB"),
    ("grub-rescue-pc", "usr/lib/grub-rescue/grub-rescue-floppy.img", "GRUB"),
    ("ipxe", "usr/lib/ipxe/ipxe.iso", "ISOLINUX"),
    ("memtest86+", "usr/lib/memtest86+/memtest86+x64.iso", "Memtest86+"),
])
def test_debian_hybrid_isos(package: str, member: str, loader: str) -> None:
    """Third-party bootable hybrid ISOs (they boot as hard disks under QEMU)."""
    from tests.kvm.guestimg import deb_file

    need_tools("sfdisk", "blkid")
    iso = deb_file(package, member)
    rep = inspect(iso)
    check_against_sfdisk(rep, {**sfdisk_json(iso), "partitions": [
        {**p, "node": f"img{i}"} for i, p in enumerate(sfdisk_json(iso)["partitions"], start=1)]})
    assert rep.whole_disk is not None
    check_against_blkid(iso, 0, iso.stat().st_size, rep.whole_disk)
    assert "El Torito boot record" in rep.whole_disk.notes
    assert rep.boot[0].loader == loader
    assert rep.bootable == "yes", rep.verdict


def test_iso_without_mbr_is_cdrom_only(tmp_path: Path) -> None:
    from tests.kvm.guestimg import deb_file

    iso = tmp_path / "cd.iso"
    iso.write_bytes(bytes(512) + deb_file("ipxe", "usr/lib/ipxe/ipxe.iso").read_bytes()[512:])
    rep = inspect(iso)
    assert rep.table is None and rep.whole_disk is not None and rep.whole_disk.type == "iso9660"
    assert rep.bootable == "no" and "boots only as a CD-ROM" in rep.reason


def test_ebr_loop_is_bounded(tmp_path: Path) -> None:
    need_tools("sfdisk")
    disk = sparse(tmp_path / "loop.img", 32 * MiB)
    parts = sfdisk(disk, "label: dos\nstart=2048, size=8MiB, type=83\ntype=5\n"
                         "size=4MiB, type=83\nsize=4MiB, type=83\n")
    ext_lba, ebr2 = parts[1]["start"], parts[3]["start"]
    with open(disk, "rb") as f:  # the second EBR sits just before its logical partition (sfdisk: 1 MiB gap)
        f.seek(ext_lba * 512)
        first = f.read(512)
    rel_second = struct.unpack_from("<I", first, 446 + 16 + 8)[0]
    assert ext_lba + rel_second < ebr2
    # Point the second EBR's "next" link back to the first EBR: a loop.
    link = bytes([0, 0, 0, 0, 5, 0, 0, 0]) + struct.pack("<II", 0, 8)
    write_at(disk, (ext_lba + rel_second) * 512 + 446 + 16, link)
    rep = inspect(disk)
    assert [pr.partition.index for pr in rep.partitions] == [1, 2, 5, 6]
    assert rep.table is not None and any("loops back" in n for n in rep.table.notes)


def test_open_image_refuses_backing_and_unknown(mbr_disk: Path, tmp_path: Path) -> None:
    need_tools("qemu-img")
    overlay = tmp_path / "overlay.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(mbr_disk), str(overlay))
    rep = inspect(overlay)  # the backing file is never opened: the overlay alone is blank
    assert rep.table is None and rep.reason == "disk is blank (the first MiB is zero)"
    odd = tmp_path / "odd.img"
    run("qemu-img", "create", "-q", "-f", "parallels", str(odd), "1M")
    from euca2kvm.errors import UnsupportedError

    with pytest.raises(UnsupportedError, match="not inspected"):
        open_image(str(odd))
    flat = tmp_path / "desc.vmdk"  # a descriptor naming another file (desc-flat.vmdk): refused
    run("qemu-img", "create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", str(flat), "1M")
    with pytest.raises(UnsupportedError, match="other files"):
        open_image(str(flat))
    single = tmp_path / "single.vmdk"
    run("qemu-img", "convert", "-O", "vmdk", str(mbr_disk), str(single))
    assert inspect(single).verdict == inspect(mbr_disk).verdict
    from euca2kvm.errors import FormatError

    with pytest.raises(FormatError, match="expected a qcow2 image"):
        open_image(str(mbr_disk), "qcow2")
    with open_image(str(overlay), "raw") as r:  # the caller's word wins: the qcow2 file read as bytes
        assert r.pread(0, 4) == b"QFI\xfb"


def test_ntfs_partition(tmp_path: Path) -> None:
    need_tools("sfdisk", "mkfs.ntfs")
    disk = sparse(tmp_path / "win.img", 24 * MiB)
    (p1,) = sfdisk(disk, "label: dos\nstart=2048, type=7, bootable\n")
    ntfs = mkfs(tmp_path / "n.img", p1["size"] * 512, "mkfs.ntfs", "-q", "-F", "-Q", "-L", "winroot")
    place(disk, p1["start"] * 512, ntfs)
    rep = inspect(disk)
    c = rep.partitions[0].content
    assert c is not None and c.type == "ntfs" and c.label == "winroot"
    check_against_blkid(disk, p1["start"] * 512, p1["size"] * 512, c)
    assert rep.partitions[0].boot is not None and rep.partitions[0].boot.loader == "none"
