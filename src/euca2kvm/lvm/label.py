# SPDX-License-Identifier: Apache-2.0
"""LVM2 label (lib/label/label.h) and pv_header (lib/format_text/layout.h).

The label is searched in sectors 0..3; lvm2 ignores a ``LABELONE`` whose ``sector_xl`` is not
the sector it sits in, or whose CRC (bytes 20..511 of that sector) does not match. The
pv_header follows at ``offset_xl`` inside the same sector: the PV uuid, the device size, a
zero-terminated list of data areas, a zero-terminated list of metadata areas and, when it fits
in the sector, an extension (version 1 adds bootloader areas, version 2 a flags word).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ..errors import FormatError
from ..units import SECTOR
from .crc import calc_crc
from .device import Device

LABEL_ID = b"LABELONE"
LABEL_TYPE = b"LVM2 001"
LABEL_SCAN_SECTORS = 4  # lvm2 LABEL_SCAN_SECTORS
ID_LEN = 32
_LABEL_HEADER = struct.Struct("<8sQII8s")  # id, sector_xl, crc_xl, offset_xl, type
_DISK_LOCN = struct.Struct("<QQ")


@dataclass(frozen=True)
class Area:
    offset: int  # bytes from the start of the PV
    size: int  # bytes; 0 for a data area means "to the end of the device"


@dataclass(frozen=True)
class PVLabel:
    device: Device
    sector: int
    uuid: str  # 32 characters, no dashes
    device_size: int
    data_areas: tuple[Area, ...]
    metadata_areas: tuple[Area, ...]
    ext_version: int = 0
    ext_flags: int = 0
    bootloader_areas: tuple[Area, ...] = field(default=())

    @property
    def uuid_dashed(self) -> str:
        return format_uuid(self.uuid)


def format_uuid(u: str) -> str:
    """LVM prints 32-character ids as 6-4-4-4-4-4-6."""
    parts, pos = [], 0
    for n in (6, 4, 4, 4, 4, 4, 6):
        parts.append(u[pos : pos + n])
        pos += n
    return "-".join(parts)


def find_label(dev: Device) -> PVLabel | None:
    """The PV label of ``dev``, None when there is none, FormatError when one is damaged."""
    scan = min(dev.size, LABEL_SCAN_SECTORS * SECTOR) // SECTOR * SECTOR
    if scan < SECTOR:
        return None
    head = dev.read(0, scan)
    problem: FormatError | None = None
    for sector in range(scan // SECTOR):
        raw = head[sector * SECTOR : (sector + 1) * SECTOR]
        if raw[:8] != LABEL_ID:
            continue
        ident, sector_xl, crc_xl, offset_xl, ltype = _LABEL_HEADER.unpack_from(raw)
        where = sector * SECTOR
        if sector_xl != sector:
            # lvm2 ignores such a label (a copy of a sector, not a label): so do we.
            continue
        if calc_crc(raw[20:]) != crc_xl:
            problem = FormatError(f"LVM label checksum mismatch (stored {crc_xl:#010x}, computed "
                                  f"{calc_crc(raw[20:]):#010x})", dev.path, dev.base + where + 16)
            continue
        if ltype != LABEL_TYPE:
            problem = FormatError(f"unsupported label type {ltype!r}", dev.path, dev.base + where + 24)
            continue
        return _parse_pv_header(dev, sector, raw, offset_xl)
    if problem is not None:
        raise problem
    return None


def _parse_pv_header(dev: Device, sector: int, raw: bytes, offset_xl: int) -> PVLabel:
    where = dev.base + sector * SECTOR
    if offset_xl < _LABEL_HEADER.size or offset_xl + ID_LEN + 8 > SECTOR:
        raise FormatError(f"pv_header offset {offset_xl} outside the label sector", dev.path, where + 20)
    pos = offset_xl
    uuid_raw = raw[pos : pos + ID_LEN]
    try:
        uuid = uuid_raw.decode("ascii")
    except UnicodeDecodeError:
        raise FormatError("PV uuid is not ASCII", dev.path, where + pos) from None
    if not uuid.isalnum():
        raise FormatError(f"PV uuid {uuid!r} has invalid characters", dev.path, where + pos)
    pos += ID_LEN
    (device_size,) = struct.unpack_from("<Q", raw, pos)
    pos += 8
    data, pos = _locn_list(dev, raw, pos, where, "data area")
    meta, pos = _locn_list(dev, raw, pos, where, "metadata area")
    ext_version = ext_flags = 0
    boot: tuple[Area, ...] = ()
    # The extension exists only when it fits in the sector (lvm2 label_check_pv_layout).
    if pos + 8 <= SECTOR:
        ext_version, ext_flags = struct.unpack_from("<II", raw, pos)
        if ext_version > 2:
            # Not an extension lvm2 knows: old PVs leave zeros here; treat unknown as absent.
            ext_version = ext_flags = 0
        elif ext_version >= 1:
            boot_list, pos = _locn_list(dev, raw, pos + 8, where, "bootloader area")
            boot = tuple(boot_list)
    if not data:
        raise FormatError("pv_header lists no data area", dev.path, where + offset_xl)
    return PVLabel(dev, sector, uuid, device_size, tuple(data), tuple(meta), ext_version, ext_flags, boot)


def _locn_list(dev: Device, raw: bytes, pos: int, where: int, what: str) -> tuple[list[Area], int]:
    out: list[Area] = []
    while True:
        if pos + _DISK_LOCN.size > SECTOR:
            raise FormatError(f"{what} list runs past the label sector", dev.path, where + pos)
        offset, size = _DISK_LOCN.unpack_from(raw, pos)
        pos += _DISK_LOCN.size
        if offset == 0:
            return out, pos
        out.append(Area(offset, size))
