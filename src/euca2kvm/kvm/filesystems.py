# SPDX-License-Identifier: Apache-2.0
"""Content signatures of a partition or a whole disk: filesystems, swap, LVM PV, LUKS.

Offsets and field layouts follow each format's on-disk definition; the names and the UUID
formatting match ``blkid -p`` so reports can be checked against it:

* ext2/3/4: superblock at 1024, magic 0xEF53 at +0x38 (linux/fs/ext4/ext4.h); ext2/ext3/ext4 chosen
  by feature bits like libblkid's ``ext.c``.
* XFS: "XFSB" at 0 (xfs_format.h); btrfs: "_BHRfS_M" at 64 KiB + 0x40 (ctree.h).
* vfat: BIOS parameter block (Microsoft FAT specification 1.03); label from the root directory.
* swap: "SWAPSPACE2" in the last 10 bytes of the first page (linux/swap.h).
* LVM2 PV: "LABELONE" in one of the first four sectors, "LVM2 001" at +24 (lvm2 label.h).
* LUKS: "LUKS\\xba\\xbe" at 0, UUID at 168 for v1 and v2 (cryptsetup on-disk format docs).
* iso9660: "CD001" at 32769 (ECMA-119), El Torito boot record; ntfs: "NTFS    " at 3.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from .imagefile import Window, clean_text

EXT_SB = 1024
EXT_MAGIC = 0xEF53
EXT_COMPAT_HAS_JOURNAL = 0x4
EXT_INCOMPAT_FILETYPE = 0x2
EXT_INCOMPAT_RECOVER = 0x4
EXT_INCOMPAT_JOURNAL_DEV = 0x8
EXT_INCOMPAT_META_BG = 0x10
EXT_INCOMPAT_64BIT = 0x80
EXT_RO_COMPAT_EXT2 = 0x1 | 0x2 | 0x4  # sparse_super, large_file, btree_dir
EXT_STATE_VALID = 0x1
EXT_STATE_ERROR = 0x2
# Linux accepts ext4 block sizes up to 64 KiB: s_log_block_size <= 6.
EXT_MAX_LOG_BLOCK = 6
BTRFS_SB = 0x10000
SWAP_PAGE_SIZES = (4096, 8192, 16384, 65536)
ISO_START = 32768
ISO_BLOCK = 2048
# ECMA-119 allows any number of volume descriptors before the terminator; real images have 2-4.
MAX_ISO_DESCRIPTORS = 32
FAT_BYTES_PER_SECTOR = (512, 1024, 2048, 4096)
NTFS_VOLUME_RECORD = 3  # MFT record of the $Volume metafile
NTFS_VOLUME_NAME = 0x60  # $VOLUME_NAME attribute type
# NTFS clusters are at most 2 MiB (4096 sectors of 512 bytes); MFT records are 1 KiB, 4 KiB at most.
NTFS_MAX_CLUSTER_SECTORS = 4096
NTFS_MAX_RECORD = 4096
# Directory walks (volume label, boot loader files) stop after this many clusters and entries.
MAX_DIR_CLUSTERS = 64
MAX_DIR_ENTRIES = 4096


@dataclass
class Content:
    type: str  # blkid names: ext4, xfs, btrfs, vfat, swap, LVM2_member, crypto_LUKS, iso9660, ntfs, unknown
    label: str | None = None
    uuid: str | None = None
    version: str | None = None
    size: int | None = None  # filesystem size in bytes, when the superblock says
    needs_recovery: bool | None = None  # ext: journal must be replayed (RECOVER incompat flag)
    clean: bool | None = None  # ext: cleanly unmounted (s_state VALID_FS)
    notes: list[str] = field(default_factory=list)
    lvm: object | None = None  # the guest's own LVM (VGs/LVs), filled by guest._guest_lvm


def _str(raw: bytes) -> str:
    return clean_text(raw.split(b"\0", 1)[0].strip())


def _uuid(raw: bytes) -> str:
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def probe_ext(w: Window) -> Content | None:
    sb = w.read(EXT_SB, 1024)
    if sb is None or struct.unpack_from("<H", sb, 0x38)[0] != EXT_MAGIC:
        return None
    blocks_lo, log_bs = struct.unpack_from("<4xI16xI", sb, 0)
    state = struct.unpack_from("<H", sb, 0x3A)[0]
    compat, incompat, ro = struct.unpack_from("<III", sb, 0x5C)
    if log_bs > EXT_MAX_LOG_BLOCK:
        return None
    blocks = blocks_lo
    if incompat & EXT_INCOMPAT_64BIT:
        blocks |= struct.unpack_from("<I", sb, 0x150)[0] << 32
    if incompat & EXT_INCOMPAT_JOURNAL_DEV:
        kind = "jbd"
    elif not compat & EXT_COMPAT_HAS_JOURNAL and not ro & ~EXT_RO_COMPAT_EXT2 \
            and not incompat & ~(EXT_INCOMPAT_FILETYPE | EXT_INCOMPAT_META_BG):
        kind = "ext2"
    elif compat & EXT_COMPAT_HAS_JOURNAL and not ro & ~EXT_RO_COMPAT_EXT2 \
            and not incompat & ~(EXT_INCOMPAT_FILETYPE | EXT_INCOMPAT_RECOVER | EXT_INCOMPAT_META_BG):
        kind = "ext3"
    else:
        kind = "ext4"
    c = Content(kind, label=_str(sb[0x78:0x88]), uuid=_uuid(sb[0x68:0x78]), size=blocks * (1024 << log_bs),
                needs_recovery=bool(incompat & EXT_INCOMPAT_RECOVER), clean=bool(state & EXT_STATE_VALID))
    if c.needs_recovery:
        c.notes.append("journal needs recovery (not cleanly unmounted)")
    elif not c.clean:
        c.notes.append("not cleanly unmounted (s_state lacks VALID_FS)")
    if state & EXT_STATE_ERROR:
        c.notes.append("filesystem has recorded errors")
    return c


def probe_xfs(w: Window) -> Content | None:
    sb = w.read(0, 512)
    if sb is None or sb[:4] != b"XFSB":
        return None
    bsize, dblocks = struct.unpack_from(">IQ", sb, 4)
    if bsize < 512 or bsize > 65536 or bsize & (bsize - 1):
        return None
    return Content("xfs", label=_str(sb[108:120]), uuid=_uuid(sb[32:48]), size=bsize * dblocks)


def probe_btrfs(w: Window) -> Content | None:
    sb = w.read(BTRFS_SB, 4096)
    if sb is None or sb[0x40:0x48] != b"_BHRfS_M":
        return None
    return Content("btrfs", label=_str(sb[0x12B:0x22B]), uuid=_uuid(sb[0x20:0x30]),
                   size=struct.unpack_from("<Q", sb, 0x70)[0])


def probe_swap(w: Window) -> Content | None:
    for ps in SWAP_PAGE_SIZES:
        sig = w.read(ps - 10, 10)
        if sig is None:
            return None
        if sig in (b"SWAPSPACE2", b"SWAP-SPACE"):
            hdr = w.read(1024, 44)
            c = Content("swap", version="1" if sig == b"SWAPSPACE2" else "0")
            if sig == b"SWAPSPACE2" and hdr is not None:
                c.uuid = _uuid(hdr[12:28])
                c.label = _str(hdr[28:44])
                c.size = (struct.unpack_from("<I", hdr, 4)[0] + 1) * ps
            return c
        if sig[:9] in (b"S1SUSPEND", b"S2SUSPEND"):
            return Content("swsuspend", notes=["swap holding a hibernation image"])
    return None


def probe_lvm(w: Window) -> Content | None:
    for sector in range(4):
        lab = w.read(sector * 512, 64)
        if lab is not None and lab[:8] == b"LABELONE" and lab[24:32] == b"LVM2 001":
            u = _str(lab[32:64])
            pretty = "-".join((u[0:6], u[6:10], u[10:14], u[14:18], u[18:22], u[22:26], u[26:32]))
            return Content("LVM2_member", uuid=pretty, version="LVM2 001")
    return None


def probe_luks(w: Window) -> Content | None:
    hdr = w.read(0, 208)
    if hdr is None or hdr[:6] != b"LUKS\xba\xbe":
        return None
    version = struct.unpack_from(">H", hdr, 6)[0]
    c = Content("crypto_LUKS", version=str(version), uuid=_str(hdr[168:208]))
    if version == 2:
        c.label = _str(hdr[24:72]) or None
    return c


def probe_iso(w: Window) -> Content | None:
    first = w.read(ISO_START, ISO_BLOCK)
    if first is None or first[1:6] != b"CD001":
        return None
    c = Content("iso9660")
    for i in range(MAX_ISO_DESCRIPTORS):
        d = first if i == 0 else w.read(ISO_START + i * ISO_BLOCK, ISO_BLOCK)
        if d is None or d[1:6] != b"CD001" or d[0] == 255:
            break
        if d[0] == 0 and d[7:30] == b"EL TORITO SPECIFICATION":
            c.notes.append("El Torito boot record")
        elif d[0] == 1:
            c.label = _str(d[40:72])
            date = d[813:829]
            if date.isdigit() and date != b"0" * 16:
                t = date.decode()
                c.uuid = "-".join((t[0:4], t[4:6], t[6:8], t[8:10], t[10:12], t[12:14], t[14:16]))
            c.size = struct.unpack_from("<I", d, 80)[0] * struct.unpack_from("<H", d, 128)[0]
    return c


def probe_ntfs(w: Window) -> Content | None:
    bs = w.read(0, 512)
    if bs is None or bs[3:11] != b"NTFS    ":
        return None
    bps, = struct.unpack_from("<H", bs, 11)
    if bps not in FAT_BYTES_PER_SECTOR:
        return None
    total, mft_cluster = struct.unpack_from("<QQ", bs, 0x28)
    serial = struct.unpack_from("<Q", bs, 0x48)[0]
    c = Content("ntfs", uuid=f"{serial:016X}", size=total * bps)
    label = _ntfs_label(w, bs, bps, mft_cluster)
    if label is None:
        c.notes.append("volume label not readable from the MFT")
    c.label = label or None
    return c


def _ntfs_label(w: Window, bs: bytes, bps: int, mft_cluster: int) -> str | None:
    """$VOLUME_NAME of MFT record 3 ($Volume), after the update-sequence fixup (NTFS on-disk layout)."""
    spc = bs[13] if bs[13] <= 0x80 else 1 << (256 - bs[13])
    raw_rec = struct.unpack_from("<b", bs, 0x40)[0]
    rec_size = raw_rec * spc * bps if raw_rec > 0 else 1 << -raw_rec
    if not 0 < spc <= NTFS_MAX_CLUSTER_SECTORS or not bps <= rec_size <= NTFS_MAX_RECORD:
        return None
    rec = w.read(mft_cluster * spc * bps + NTFS_VOLUME_RECORD * rec_size, rec_size)
    if rec is None or rec[:4] != b"FILE":
        return None
    buf = bytearray(rec)
    usa_off, usa_count = struct.unpack_from("<HH", buf, 4)
    if usa_off + 2 * usa_count > len(buf) or usa_count - 1 > len(buf) // bps:
        return None
    for i in range(1, usa_count):  # restore the last two bytes of each sector
        buf[i * bps - 2:i * bps] = buf[usa_off + 2 * i:usa_off + 2 * i + 2]
    pos = struct.unpack_from("<H", buf, 0x14)[0]
    while pos + 24 <= len(buf):
        atype, alen = struct.unpack_from("<II", buf, pos)
        if atype == 0xFFFFFFFF or alen < 24 or pos + alen > len(buf):
            return None
        if atype == NTFS_VOLUME_NAME and buf[pos + 8] == 0:  # resident
            vlen, voff = struct.unpack_from("<IH", buf, pos + 16)
            if pos + voff + vlen > pos + alen:
                return None
            return clean_text(bytes(buf[pos + voff:pos + voff + vlen]).decode("utf-16-le", "replace"))
        pos += alen
    return None


@dataclass
class Fat:
    """Geometry of a FAT volume (all in bytes except cluster numbers)."""

    bits: int
    bps: int
    cluster: int
    fat_start: int
    data_start: int
    root_start: int  # FAT12/16 fixed root directory
    root_bytes: int
    root_cluster: int  # FAT32
    clusters: int


def fat_geometry(bs: bytes) -> Fat | None:
    """Validate a FAT boot sector's BPB (blkid-style sanity checks)."""
    if len(bs) < 512 or bs[0] not in (0xEB, 0xE9):
        return None
    bps, spc, rsvd, nfats, root_ent, tot16, media, fsz16 = struct.unpack_from("<HBHBHHBH", bs, 11)
    tot32, fsz32 = struct.unpack_from("<II", bs, 32)
    if bps not in FAT_BYTES_PER_SECTOR or spc == 0 or spc & (spc - 1) or rsvd == 0 or not 1 <= nfats <= 4:
        return None
    if media != 0xF0 and media < 0xF8:
        return None
    if b"FAT" not in bs[54:62] and b"FAT" not in bs[82:90]:
        return None
    total = tot16 or tot32
    fatsz = fsz16 or fsz32
    root_bytes = root_ent * 32
    root_sectors = (root_bytes + bps - 1) // bps
    data_sec = rsvd + nfats * fatsz + root_sectors
    if total == 0 or fatsz == 0 or data_sec >= total:
        return None
    clusters = (total - data_sec) // spc
    bits = 12 if clusters < 4085 else 16 if clusters < 65525 else 32
    if fsz16 == 0:
        bits = 32
    root_cluster = struct.unpack_from("<I", bs, 44)[0] if bits == 32 else 0
    return Fat(bits, bps, spc * bps, rsvd * bps, data_sec * bps, (rsvd + nfats * fatsz) * bps, root_bytes,
               root_cluster, clusters)


def _fat_next(w: Window, fat: Fat, cl: int) -> int | None:
    if fat.bits == 32:
        raw = w.read(fat.fat_start + cl * 4, 4)
        nxt = struct.unpack("<I", raw)[0] & 0x0FFFFFFF if raw else None
    elif fat.bits == 16:
        raw = w.read(fat.fat_start + cl * 2, 2)
        nxt = struct.unpack("<H", raw)[0] if raw else None
    else:
        raw = w.read(fat.fat_start + cl * 3 // 2, 2)
        v = struct.unpack("<H", raw)[0] if raw else None
        nxt = None if v is None else (v >> 4 if cl & 1 else v & 0xFFF)
    if nxt is None or nxt < 2 or nxt >= fat.clusters + 2:
        return None  # end of chain, free, bad or out of range
    return nxt


def fat_dir(w: Window, fat: Fat, cluster: int | None) -> Iterator[tuple[str, int, int, bytes]]:
    """(8.3 name, attributes, first cluster, raw 32-byte entry) of a directory; None = the root."""
    chunks: list[tuple[int, int]] = []
    if cluster is None and fat.bits != 32:
        chunks = [(fat.root_start, min(fat.root_bytes, MAX_DIR_ENTRIES * 32))]
    else:
        cl: int | None = fat.root_cluster if cluster is None else cluster
        seen: set[int] = set()
        while cl is not None and cl not in seen and len(seen) < MAX_DIR_CLUSTERS:
            if not 2 <= cl < fat.clusters + 2:
                break
            seen.add(cl)
            chunks.append((fat.data_start + (cl - 2) * fat.cluster, fat.cluster))
            cl = _fat_next(w, fat, cl)
    count = 0
    for off, length in chunks:
        data = w.read(off, length)
        if data is None:
            return
        for i in range(0, len(data) - 31, 32):
            count += 1
            e = data[i:i + 32]
            if e[0] == 0 or count > MAX_DIR_ENTRIES:
                return
            if e[0] == 0xE5 or e[11] == 0x0F:
                continue
            name = e[0:8].rstrip(b" ") + (b"." + e[8:11].rstrip(b" ") if e[8:11].strip(b" ") else b"")
            first = struct.unpack_from("<H", e, 26)[0]
            if fat.bits == 32:
                first |= struct.unpack_from("<H", e, 20)[0] << 16
            yield clean_text(name.decode("latin-1")), e[11], first, e


def fat_find(w: Window, fat: Fat, path: str) -> tuple[int, int] | None:
    """(first cluster, size) of an upper-case 8.3 path like ``EFI/BOOT/BOOTX64.EFI``, or None."""
    cluster: int | None = None
    parts = path.split("/")
    for depth, part in enumerate(parts):
        for name, attr, first, raw in fat_dir(w, fat, cluster):
            if name.upper() == part and not attr & 0x08:
                if depth == len(parts) - 1:
                    return first, struct.unpack_from("<I", raw, 28)[0]
                if attr & 0x10:
                    cluster = first
                    break
        else:
            return None
    return None


def probe_vfat(w: Window) -> Content | None:
    bs = w.read(0, 512)
    fat = fat_geometry(bs) if bs is not None else None
    if bs is None or fat is None:
        return None
    base = 0x43 if fat.bits == 32 else 0x27
    serial = struct.unpack_from("<I", bs, base)[0]
    label = _str(bs[base + 4:base + 15])
    for _, attr, _, raw in fat_dir(w, fat, None):
        if attr & 0x08 and not attr & 0x10:
            label = _str(raw[0:11])
            break
    if label == "NO NAME":
        label = ""
    return Content("vfat", label=label or None, uuid=f"{serial >> 16:04X}-{serial & 0xFFFF:04X}",
                   version=f"FAT{fat.bits}", size=fat.clusters * fat.cluster)


# Order matters where signatures may coexist: LUKS and LVM first (their headers sit where a stale
# filesystem superblock might survive), iso9660 before vfat (hybrid ISOs carry a boot sector).
PROBES = (probe_luks, probe_lvm, probe_swap, probe_ext, probe_xfs, probe_btrfs, probe_iso, probe_ntfs,
          probe_vfat)


def probe(w: Window) -> Content:
    for fn in PROBES:
        c = fn(w)
        if c is not None:
            return c
    return Content("unknown")
