# SPDX-License-Identifier: Apache-2.0
"""MBR (with extended/logical partitions) and GPT partition tables, read from hostile bytes.

Layouts: MBR per the IBM PC convention (four 16-byte entries at 446, signature 55 AA at 510;
an EBR chain inside an extended partition); GPT per UEFI 2.10 §5.3 (header at LBA 1, CRC32 of
the header and of the entry array, backup header at the last LBA). Nothing here raises for bad
bytes: problems become ``notes`` and the table is reported as far as it can be trusted.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from dataclasses import dataclass, field
from typing import NamedTuple

from .imagefile import Reader, clean_text, read_at

SECTOR = 512
MBR_SIGNATURE = b"\x55\xaa"
MBR_ENTRIES_AT = 446
EXTENDED_TYPES = frozenset({0x05, 0x0F, 0x85})
GPT_PROTECTIVE = 0xEE
GPT_SIGNATURE = b"EFI PART"
# GPT on 4 KiB-sector media puts the header at byte 4096; both are probed.
GPT_SECTOR_SIZES = (512, 4096)
# UEFI requires header size >= 92 and <= the logical block size.
GPT_MIN_HEADER = 92
# UEFI's minimum is 128 entries of 128 bytes; real tables use exactly that. These caps bound the
# allocation for hostile counts: at most 1 MiB of entries and entries of at most 4 KiB.
MAX_GPT_ENTRY_SIZE = 4096
MAX_GPT_ENTRIES_BYTES = 1 << 20
# Logical partitions in one EBR chain; Linux's msdos parser stops at a similar bound.
MAX_LOGICAL = 128
# GPT attribute bit 2: "legacy BIOS bootable" (UEFI 2.10 table 5.14).
GPT_ATTR_LEGACY_BOOT = 1 << 2

# GPT partition type GUIDs (UEFI spec, Discoverable Partitions Specification, util-linux sfdisk -T).
GPT_TYPES = {
    "C12A7328-F81F-11D2-BA4B-00A0C93EC93B": "EFI System",
    "21686148-6449-6E6F-744E-656564454649": "BIOS boot",
    "024DEE41-33E7-11D3-9D69-0008C781F39F": "MBR partition scheme",
    "0FC63DAF-8483-4772-8E79-3D69D8477DE4": "Linux filesystem",
    "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F": "Linux swap",
    "E6D6D379-F507-44C2-A23C-238F2A3DF928": "Linux LVM",
    "A19D880F-05FC-4D3B-A006-743F0F84911E": "Linux RAID",
    "CA7D7CCB-63ED-4C53-861C-1742536059CC": "Linux LUKS",
    "BC13C2FF-59E6-4262-A352-B275FD6F7172": "Linux extended boot",
    "933AC7E1-2EB4-4F13-B844-0E14E2AEF915": "Linux home",
    "3B8F8425-20E0-4F3B-907F-1A25A76F98E8": "Linux server data",
    "8DA63339-0007-60C0-C436-083AC8230908": "Linux reserved",
    "44479540-F297-41B2-9AF7-D131D5F0458A": "Linux root (x86)",
    "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709": "Linux root (x86-64)",
    "B921B045-1DF0-41C3-AF44-4C6F280D3FAE": "Linux root (ARM-64)",
    "8484680C-9521-48C6-9C11-B0720656F69E": "Linux /usr (x86-64)",
    "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7": "Microsoft basic data",
    "E3C9E316-0B5C-4DB8-817D-F92DF00215AE": "Microsoft reserved",
    "DE94BBA4-06D1-4D40-A16A-BFD50179D6AC": "Windows recovery environment",
    "48465300-0000-11AA-AA11-00306543ECAC": "Apple HFS/HFS+",
    "516E7CB4-6ECF-11D6-8FF8-00022D09712B": "FreeBSD data",
}
GPT_EFI_SYSTEM = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
GPT_BIOS_BOOT = "21686148-6449-6E6F-744E-656564454649"

# MBR partition type bytes (util-linux `sfdisk --label dos -T`).
MBR_TYPES = {
    0x00: "Empty", 0x01: "FAT12", 0x04: "FAT16 <32M", 0x05: "Extended", 0x06: "FAT16", 0x07: "HPFS/NTFS/exFAT",
    0x0B: "W95 FAT32", 0x0C: "W95 FAT32 (LBA)", 0x0E: "W95 FAT16 (LBA)", 0x0F: "W95 Ext'd (LBA)",
    0x11: "Hidden FAT12", 0x14: "Hidden FAT16 <32M", 0x16: "Hidden FAT16", 0x17: "Hidden HPFS/NTFS",
    0x1B: "Hidden W95 FAT32", 0x1C: "Hidden W95 FAT32 (LBA)", 0x1E: "Hidden W95 FAT16 (LBA)",
    0x27: "Hidden NTFS WinRE", 0x82: "Linux swap / Solaris", 0x83: "Linux", 0x85: "Linux extended",
    0x8E: "Linux LVM", 0xA5: "FreeBSD", 0xA6: "OpenBSD", 0xA9: "NetBSD", 0xAF: "HFS / HFS+",
    0xCD: "ISO 9660 (hybrid)", 0xDA: "Non-FS data", 0xEE: "GPT", 0xEF: "EFI (FAT-12/16/32)",
    0xFD: "Linux raid autodetect",
}
MBR_EFI_TYPE = 0xEF
NO_SIGNATURE = "has no 'EFI PART' signature"
UNREADABLE = "is outside the disk"


@dataclass
class Partition:
    index: int
    start: int  # bytes
    size: int  # bytes
    type: str  # "0x83" or a GPT type GUID
    type_name: str
    bootable: bool = False  # MBR active flag, or GPT "legacy BIOS bootable" attribute
    name: str | None = None  # GPT partition name
    uuid: str | None = None  # GPT unique partition GUID
    logical: bool = False  # inside an MBR extended partition
    extended: bool = False  # the MBR extended container itself (not probed for content)
    notes: list[str] = field(default_factory=list)


@dataclass
class PartitionTable:
    kind: str  # "mbr" or "gpt"
    sector_size: int
    id: str  # MBR disk signature or GPT disk GUID
    partitions: list[Partition] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    protective_mbr: str | None = None  # GPT only: "valid", "hybrid", "missing", "invalid"
    header: str | None = None  # GPT only: "primary" or "backup"


def guid_str(raw: bytes) -> str:
    """A mixed-endian on-disk GUID (UEFI) as the usual upper-case text form."""
    return str(uuid.UUID(bytes_le=raw)).upper()


def _mbr_entries(sector: bytes) -> list[tuple[int, int, int, int]]:
    """(status, type, lba_start, lba_count) of the four entries."""
    return [struct.unpack_from("<B3xB3xII", sector, MBR_ENTRIES_AT + 16 * i) for i in range(4)]


def mbr_looks_valid(sector: bytes) -> bool:
    """55AA present and every entry's status byte is 0x00 or 0x80 (blkid applies the same test)."""
    if len(sector) < SECTOR or sector[510:512] != MBR_SIGNATURE:
        return False
    return all(status in (0x00, 0x80) for status, _, _, _ in _mbr_entries(sector))


def _mbr_type_name(t: int) -> str:
    return MBR_TYPES.get(t, "unknown")


def _bounded(part: Partition, disk_size: int) -> None:
    if part.start + part.size > disk_size:
        part.notes.append(f"extends {part.start + part.size - disk_size} bytes past the end of the disk")


def _read_logical(reader: Reader, ext: Partition, table: PartitionTable) -> None:
    """Follow the EBR chain of an extended partition (bounded length, loop-protected)."""
    ext_lba = ext.start // SECTOR
    seen: set[int] = set()
    rel = 0
    index = 5
    while len(seen) < MAX_LOGICAL:
        ebr_lba = ext_lba + rel
        if ebr_lba in seen:
            table.notes.append(f"EBR chain loops back to LBA {ebr_lba}; stopped")
            return
        seen.add(ebr_lba)
        ebr = read_at(reader, ebr_lba * SECTOR, SECTOR)
        if ebr is None or ebr[510:512] != MBR_SIGNATURE:
            table.notes.append(f"EBR at LBA {ebr_lba} is unreadable or lacks 55AA; chain stopped")
            return
        entries = _mbr_entries(ebr)
        status, ptype, start, count = entries[0]
        if count != 0:
            part = Partition(index, (ebr_lba + start) * SECTOR, count * SECTOR, f"0x{ptype:02x}",
                             _mbr_type_name(ptype), bootable=status == 0x80, logical=True)
            _bounded(part, reader.size)
            table.partitions.append(part)
            index += 1
        _, ntype, nstart, ncount = entries[1]
        if ntype not in EXTENDED_TYPES or ncount == 0:
            return
        rel = nstart
    table.notes.append(f"more than {MAX_LOGICAL} logical partitions; the rest are not listed")


def read_mbr(reader: Reader, sector0: bytes) -> PartitionTable:
    disk_id = struct.unpack_from("<I", sector0, 440)[0]
    table = PartitionTable("mbr", SECTOR, f"0x{disk_id:08x}")
    extended_seen = False
    for i, (status, ptype, start, count) in enumerate(_mbr_entries(sector0), start=1):
        if count == 0:  # like sfdisk and Linux, an entry with sectors counts even with type 0
            continue
        part = Partition(i, start * SECTOR, count * SECTOR, f"0x{ptype:02x}", _mbr_type_name(ptype),
                         bootable=status == 0x80)
        _bounded(part, reader.size)
        table.partitions.append(part)
        if ptype in EXTENDED_TYPES:
            part.extended = True
            if extended_seen:
                part.notes.append("second extended partition ignored")
                continue
            extended_seen = True
            _read_logical(reader, part, table)
    if sum(1 for p in table.partitions if p.bootable and not p.logical) > 1:
        table.notes.append("more than one active partition")
    return table


class _GptHeader(NamedTuple):
    first: int
    last: int
    guid: bytes
    n_entries: int
    esize: int
    entries: bytes


def _gpt_header(reader: Reader, lba: int, ss: int) -> tuple[_GptHeader | None, str]:
    """Parse and CRC-check the GPT header at ``lba``; (fields, "") or (None, why)."""
    raw = read_at(reader, lba * ss, ss)
    if raw is None:
        return None, UNREADABLE
    if raw[:8] != GPT_SIGNATURE:
        return None, NO_SIGNATURE
    (_, _rev, hsize, hcrc, _, my_lba, alt_lba, first, last, disk_guid, entries_lba, n_entries, esize,
     ecrc) = struct.unpack_from("<8sIIII QQQQ 16s QIII", raw, 0)
    if not GPT_MIN_HEADER <= hsize <= ss:
        return None, f"header size {hsize} out of range"
    check = bytearray(raw[:hsize])
    check[16:20] = b"\0\0\0\0"
    if zlib.crc32(check) != hcrc:
        return None, "header CRC32 mismatch"
    if my_lba != lba:
        return None, f"header says it is at LBA {my_lba}, found at {lba}"
    if esize < 128 or esize % 128 or esize > MAX_GPT_ENTRY_SIZE:
        return None, f"entry size {esize} invalid"
    if n_entries * esize > MAX_GPT_ENTRIES_BYTES:
        return None, f"{n_entries} entries of {esize} bytes exceed the {MAX_GPT_ENTRIES_BYTES} byte bound"
    if first > last:
        return None, "first usable LBA after last usable LBA"
    entries = read_at(reader, entries_lba * ss, n_entries * esize)
    if entries is None:
        return None, "entry array outside the disk"
    if zlib.crc32(entries) != ecrc:
        return None, "entry array CRC32 mismatch"
    return _GptHeader(first, last, disk_guid, n_entries, esize, entries), ""


def _protective_state(sector0: bytes | None) -> str:
    if sector0 is None or sector0[510:512] != MBR_SIGNATURE:
        return "missing"
    types = [t for _, t, _, c in _mbr_entries(sector0) if t != 0]
    if GPT_PROTECTIVE not in types:
        return "invalid"
    return "valid" if len(types) == 1 else "hybrid"


def read_gpt(reader: Reader, sector0: bytes | None) -> tuple[PartitionTable | None, list[str]]:
    """The GPT from the primary header, else from the backup at the last LBA.

    Returns (table or None, notes about invalid headers when no table could be trusted).
    """
    problems: list[str] = []
    protective = _protective_state(sector0)
    for ss in GPT_SECTOR_SIZES:
        hdr, why = _gpt_header(reader, 1, ss)
        notes: list[str] = []
        used = "primary"
        if hdr is None:
            primary_present = why not in (NO_SIGNATURE, UNREADABLE)
            # Without a primary signature the backup is only looked for when the protective MBR
            # claims GPT, and only for 512-byte sectors (4 KiB GPTs are recognised by their primary).
            if not primary_present and (protective in ("missing", "invalid") or ss != SECTOR):
                continue
            last_lba = reader.size // ss - 1
            hdr, why2 = _gpt_header(reader, last_lba, ss) if last_lba > 1 else (None, UNREADABLE)
            if hdr is None:
                problems.append(f"GPT ({ss}-byte sectors): primary header: {why}; backup header: {why2}")
                continue
            used = "backup"
            notes.append(f"primary GPT header invalid ({why}); using the backup header at LBA {last_lba}")
        table = PartitionTable("gpt", ss, guid_str(hdr.guid), header=used,
                               notes=notes, protective_mbr=protective)
        if protective != "valid":
            table.notes.append(f"protective MBR is {protective}")
        _gpt_entries(reader, table, hdr)
        return table, []
    return None, problems


def _gpt_entries(reader: Reader, table: PartitionTable, hdr: _GptHeader) -> None:
    entries, esize, first, last = hdr.entries, hdr.esize, hdr.first, hdr.last
    ss = table.sector_size
    for i in range(hdr.n_entries):
        e = entries[i * esize:(i + 1) * esize]
        if e[:16] == bytes(16):
            continue
        type_guid = guid_str(e[0:16])
        start, end, attrs = struct.unpack_from("<QQQ", e, 32)
        name = clean_text(e[56:128].decode("utf-16-le", "replace").split("\0", 1)[0], 72)
        size = (end - start + 1) * ss if end >= start else 0
        part = Partition(i + 1, start * ss, size, type_guid, GPT_TYPES.get(type_guid, "unknown"),
                         bootable=bool(attrs & GPT_ATTR_LEGACY_BOOT), name=name, uuid=guid_str(e[16:32]))
        if end < start:
            part.notes.append("ending LBA before starting LBA")
        elif start < first or end > last:
            part.notes.append("outside the usable LBA range of the header")
        _bounded(part, reader.size)
        table.partitions.append(part)
