# SPDX-License-Identifier: Apache-2.0
"""Hostile bytes: random disks and mutated real images yield a report or a project error, nothing else.

Mutations land where the parsers look (MBR, GPT headers and entries, EBRs, boot sectors and
superblocks of each partition, the backup GPT). Half of the GPT mutations are "CRC-fixed"
(header and entry CRC32 recomputed) so hostile entry counts, sizes and LBAs reach the entry
parser instead of stopping at the checksum.
"""

from __future__ import annotations

import os
import struct
import zlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.kvm.guestimg import MiB, mkfs, need_tools, place, run, sfdisk, sparse

from euca2kvm.errors import Euca2kvmError
from euca2kvm.kvm.guest import GuestReport, inspect_disk
from euca2kvm.lvm.reader import MAX_READ

# Enough examples to reach the deep branches (EBR chains, FAT directories) while the whole file
# stays under ~30 s here; derandomized so every run checks the same inputs. A longer, random
# campaign: EUCA2KVM_FUZZ_EXAMPLES=5000 (then the seed varies per run).
EXAMPLES = int(os.environ.get("EUCA2KVM_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize="EUCA2KVM_FUZZ_EXAMPLES" not in os.environ,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# Mutations hit a field region (anchor, span) — MBR entries, GPT header, EBR links, boot sectors,
# superblocks, MFT record — or, for one in WIDE_ODDS, anywhere in the 72 KiB after an anchor
# (FAT tables and directories, btrfs/iso areas).
WIDE = 72 * 1024
WIDE_ODDS = 8
# Values written over 32-bit fields: the boundaries hostile size/count/LBA fields are made of.
EDGE_U32 = [0, 1, 2, 3, 127, 128, 255, 512, 4096, 1 << 20, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF]


class MutatedReader:
    """The ``ExtentReader`` contract over base bytes plus a sparse overlay of changed bytes."""

    def __init__(self, base: bytes, overlay: dict[int, int]) -> None:
        self.base = base
        self.overlay = overlay
        self.size = len(base)

    def pread(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError("negative offset or length")
        if length > MAX_READ:
            raise ValueError("read too large")
        data = bytearray(self.base[offset:offset + length])
        for off, val in self.overlay.items():
            if offset <= off < offset + len(data):
                data[off - offset] = val
        return bytes(data)


def check(reader: Any) -> None:
    try:
        rep = inspect_disk(reader, "fuzz")
    except Euca2kvmError:
        return
    assert isinstance(rep, GuestReport)
    assert rep.bootable in ("yes", "no", "unknown") and rep.reason
    rep.to_json()
    rep.render()


Anchors = list[tuple[int, int]]


class Base(tuple[bytes, Anchors]):
    """(image bytes, anchors) with a short repr: hypothesis prints fixture arguments on failure."""

    def __repr__(self) -> str:
        return f"<base image of {len(self[0])} bytes>"


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> list[Base]:
    """Small real images and their (offset, span) field regions: MBR with logicals, GPT with
    ESP/ext4/swap, a whole-disk NTFS."""
    need_tools("sfdisk", "mkfs.vfat", "mkfs.ext4", "mkswap", "syslinux", "mkfs.ntfs")
    d = tmp_path_factory.mktemp("fuzzbase")
    out: list[Base] = []
    mbr = sparse(d / "mbr.img", 8 * MiB)
    parts = sfdisk(mbr, "label: dos\nstart=2048, size=2MiB, type=1, bootable\ntype=5\n"
                        "size=2MiB, type=83\ntype=82\n")
    fat = mkfs(d / "fat.img", 2 * MiB, "mkfs.vfat", "-F", "12", "-n", "BOOT")
    run("syslinux", "--install", str(fat))
    place(mbr, parts[0]["start"] * 512, fat)
    place(mbr, parts[2]["start"] * 512, mkfs(d / "e.img", parts[2]["size"] * 512, "mkfs.ext4", "-q", "-F"))
    place(mbr, parts[3]["start"] * 512, mkfs(d / "s.img", parts[3]["size"] * 512, "mkswap"))
    raw = mbr.read_bytes()
    ebrs = [i for i in range(512, len(raw), 512)
            if raw[i + 510:i + 512] == b"\x55\xaa" and not raw[i:i + 446].strip(b"\0")]
    out.append(Base((raw, [(0, 512), (446, 64), *[(e + 446, 32) for e in ebrs],
                      *[(p["start"] * 512, 1280) for p in parts]])))
    gpt = sparse(d / "gpt.img", 8 * MiB)
    parts = sfdisk(gpt, "label: gpt\nsize=2MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\n"
                        "size=2MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n"
                        "type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F\n")
    esp = mkfs(d / "esp.img", 2 * MiB, "mkfs.vfat", "-n", "ESP")
    run("mmd", "-i", str(esp), "::/EFI", "::/EFI/BOOT")
    run("mcopy", "-i", str(esp), str(d / "s.img"), "::/EFI/BOOT/BOOTX64.EFI")
    place(gpt, parts[0]["start"] * 512, esp)
    place(gpt, parts[1]["start"] * 512, mkfs(d / "e2.img", parts[1]["size"] * 512, "mkfs.ext4", "-q", "-F"))
    place(gpt, parts[2]["start"] * 512, mkfs(d / "s2.img", parts[2]["size"] * 512, "mkswap"))
    out.append(Base((gpt.read_bytes(), [(446, 64), (512 + 12, 8), (512 + 24, 48), (512 + 72, 16), (1024, 384),
                                   (8 * MiB - 512, 92),
                                   *[(p["start"] * 512, 1280) for p in parts]])))
    ntfs = mkfs(d / "ntfs.img", 8 * MiB, "mkfs.ntfs", "-q", "-F", "-Q", "-L", "win").read_bytes()
    mft = struct.unpack_from("<Q", ntfs, 0x30)[0] * ntfs[13] * 512
    out.append(Base((ntfs, [(0, 512), (0x0B, 8), (0x28, 0x28), (mft + 3 * 1024, 1024), (mft + 3 * 1024, 0x18),
                       (mft + 3 * 1024 + 0x38, 0x100)])))
    return out


def _fix_gpt_crcs(base: bytes, overlay: dict[int, int], header_at: int) -> None:
    """Recompute the entry-array and header CRC32 of a (mutated) GPT header, when its fields allow."""
    r = MutatedReader(base, overlay)
    hdr = bytearray(r.pread(header_at, 512))
    hsize = struct.unpack_from("<I", hdr, 12)[0]
    entries_lba, count, esize = struct.unpack_from("<QII", hdr, 72)
    if count * esize <= 1 << 20 and entries_lba * 512 + count * esize <= len(base):
        struct.pack_into("<I", hdr, 88, zlib.crc32(r.pread(entries_lba * 512, count * esize)))
    if 92 <= hsize <= 512:
        hdr[16:20] = bytes(4)
        struct.pack_into("<I", hdr, 16, zlib.crc32(bytes(hdr[:hsize])))
    for i, b in enumerate(hdr):
        overlay[header_at + i] = b


def _mutation(base_len: int, anchors: Anchors) -> st.SearchStrategy[tuple[int, bytes]]:
    narrow = st.sampled_from(anchors).flatmap(lambda a: st.integers(a[0], a[0] + a[1] - 1))
    wide = st.sampled_from(anchors).flatmap(lambda a: st.integers(a[0], a[0] + WIDE))
    where = st.one_of(*[narrow] * (WIDE_ODDS - 1), wide).map(lambda off: min(base_len - 4, off))
    value = st.one_of(st.binary(min_size=1, max_size=1),
                      st.sampled_from(EDGE_U32).map(lambda v: struct.pack("<I", v)),
                      st.integers(0, 2**32 - 1).map(lambda v: struct.pack("<I", v)))
    return st.tuples(where, value)


@FUZZ
@given(data=st.data(), which=st.integers(0, 2), fix_crc=st.booleans())
def test_mutated_real_images(bases: list[Base], data: st.DataObject, which: int,
                             fix_crc: bool) -> None:
    base, anchors = bases[which]
    overlay: dict[int, int] = {}
    for off, value in data.draw(st.lists(_mutation(len(base), anchors), min_size=1, max_size=16)):
        for i, b in enumerate(value):
            overlay[off + i] = b
    if fix_crc and which == 1:
        _fix_gpt_crcs(base, overlay, 512)
    check(MutatedReader(base, overlay))


@FUZZ
@given(raw=st.binary(max_size=40000), magic=st.sampled_from([b"", b"\x55\xaa", b"EFI PART"]))
def test_random_bytes(raw: bytes, magic: bytes) -> None:
    disk = bytearray(raw)
    if magic == b"\x55\xaa" and len(disk) >= 512:
        disk[510:512] = magic
    elif magic and len(disk) >= 520:
        disk[512:520] = magic
    check(MutatedReader(bytes(disk), {}))


lba = st.integers(0, 2**32 - 1) | st.integers(0, 64)
mbr_type = st.sampled_from([0, 1, 5, 6, 0x0F, 0x83, 0x85, 0xEE, 0xEF])
entry = st.tuples(st.sampled_from([0, 0x80, 0x7F]), mbr_type, lba, lba)


@FUZZ
@given(entries=st.lists(entry, min_size=4, max_size=4),
       chain=st.lists(st.tuples(entry, st.booleans(), lba), max_size=12), filler=st.binary(max_size=64))
def test_structured_mbr_chains(entries: list[tuple[int, int, int, int]],
                               chain: list[tuple[tuple[int, int, int, int], bool, int]], filler: bytes) -> None:
    """A random MBR whose first entry is an extended partition holding an EBR chain; each link is
    either correct (next EBR) or hostile (random: loops, out of range, backwards)."""
    disk = bytearray(64 * 512)
    for s in range(64):
        disk[s * 512:s * 512 + len(filler)] = filler
    ext_lba = 2
    entries[0] = (0, 0x05, ext_lba, 60)
    tables = [(0, entries)]
    for i, (logical, correct, link) in enumerate(chain):
        nxt = 3 * (i + 1) if correct else link
        tables.append((ext_lba + 3 * i, [logical, (0, 0x05, nxt, 2)]))
    for sector, table in tables:
        for i, (status, ptype, start, count) in enumerate(table):
            struct.pack_into("<B3xB3xII", disk, sector * 512 + 446 + 16 * i, status, ptype, start, count)
        disk[sector * 512 + 510:sector * 512 + 512] = b"\x55\xaa"
    check(MutatedReader(bytes(disk), {}))


GPT_FIELDS = [(512 + 12, 8), (512 + 24, 48), (512 + 72, 16), (1024, 384)]


@FUZZ
@given(data=st.data())
def test_gpt_fields_crc_fixed(bases: list[Base], data: st.DataObject) -> None:
    """Few mutations of the GPT header fields and first entries, CRCs recomputed: hostile entry
    counts, sizes and LBAs reach the entry parser."""
    base = bases[1][0]
    overlay: dict[int, int] = {}
    for off, value in data.draw(st.lists(_mutation(len(base), GPT_FIELDS), min_size=1, max_size=3)):
        for i, b in enumerate(value):
            overlay[off + i] = b
    _fix_gpt_crcs(base, overlay, 512)
    check(MutatedReader(base, overlay))


def test_bases_inspect_cleanly(bases: list[Base]) -> None:
    """The unmutated bases are what the fuzzing starts from: make sure they parse fully."""
    mbr = inspect_disk(MutatedReader(bases[0][0], {}), "mbr")
    types = [pr.content.type if pr.content else None for pr in mbr.partitions]
    assert types == ["vfat", None, "ext4", "swap"]
    assert mbr.bootable == "no"  # no MBR code was written
    gpt = inspect_disk(MutatedReader(bases[1][0], {}), "gpt")
    assert [pr.content.type if pr.content else None for pr in gpt.partitions] == ["vfat", "ext4", "swap"]
    assert gpt.bootable == "yes"
    ntfs = inspect_disk(MutatedReader(bases[2][0], {}), "ntfs")
    assert ntfs.whole_disk is not None and ntfs.whole_disk.label == "win"
