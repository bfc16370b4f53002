# SPDX-License-Identifier: Apache-2.0
"""Metadata area header (layout.h ``struct mda_header``) and the metadata text ring.

The ring is ``[start + 512, start + size)``. ``raw_locn[0]`` points at the committed copy of
the VG text (``raw_locn[1]`` is a precommitted copy that only exists while lvm2 runs). A copy
that runs past the end of the ring continues at ring offset 512; its size includes the
trailing NUL, and its checksum covers both pieces.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import FormatError
from ..units import SECTOR, MiB
from .crc import calc_crc
from .device import Device
from .label import Area

FMTT_MAGIC = b" LVM2 x[5A%r0N*>"
FMTT_VERSION = 1
RAW_LOCN_IGNORED = 0x1
MDA_HEADER_SIZE = SECTOR
_MDA_HEADER = struct.Struct("<I16sIQQ")  # checksum, magic, version, start, size
_RAW_LOCN = struct.Struct("<QQII")  # offset, size, checksum, flags
# lvm2 writes at most (mda size - 512) / 2 bytes of text per copy; real VGs with hundreds of
# LVs stay under a few MiB. A larger claim is refused before anything is allocated.
MAX_METADATA_TEXT = 32 * MiB


@dataclass(frozen=True)
class RawLocn:
    offset: int  # from the start of the mda
    size: int  # bytes, including the trailing NUL
    checksum: int
    flags: int

    @property
    def ignored(self) -> bool:
        return bool(self.flags & RAW_LOCN_IGNORED)


@dataclass(frozen=True)
class MdaHeader:
    device: Device
    area: Area
    checksum: int
    version: int
    start: int
    size: int
    raw_locns: tuple[RawLocn, ...]

    @property
    def where(self) -> int:
        """Absolute offset of this header in its file."""
        return self.device.base + self.area.offset


@dataclass(frozen=True)
class MetadataCopy:
    """One VG text read from one metadata area."""

    header: MdaHeader
    locn: RawLocn
    text: str
    wrapped: bool  # the copy continued at the start of the ring

    @property
    def origin(self) -> str:
        return f"{self.header.device.path} mda at offset {self.header.where}"


def read_mda_header(dev: Device, area: Area) -> MdaHeader:
    raw = dev.read(area.offset, MDA_HEADER_SIZE)
    where = dev.base + area.offset
    checksum, magic, version, start, size = _MDA_HEADER.unpack_from(raw)
    if magic != FMTT_MAGIC:
        raise FormatError(f"metadata area header has wrong magic {magic!r}", dev.path, where + 4)
    computed = calc_crc(raw[4:])
    if computed != checksum:
        raise FormatError(f"metadata area header checksum mismatch (stored {checksum:#010x}, "
                          f"computed {computed:#010x})", dev.path, where)
    if version != FMTT_VERSION:
        raise FormatError(f"unsupported metadata area version {version}", dev.path, where + 20)
    if start != area.offset:
        raise FormatError(f"metadata area header says start {start}, pv_header says {area.offset}",
                          dev.path, where + 24)
    if size < MDA_HEADER_SIZE or (area.size and size > area.size):
        raise FormatError(f"metadata area size {size} is invalid (area is {area.size} bytes)",
                          dev.path, where + 32)
    locns: list[RawLocn] = []
    pos = _MDA_HEADER.size
    while pos + _RAW_LOCN.size <= MDA_HEADER_SIZE:
        rl = RawLocn(*_RAW_LOCN.unpack_from(raw, pos))
        if rl.offset == 0 and rl.size == 0 and rl.checksum == 0 and rl.flags == 0:
            break
        locns.append(rl)
        pos += _RAW_LOCN.size
    return MdaHeader(dev, area, checksum, version, start, size, tuple(locns))


def read_metadata(header: MdaHeader) -> MetadataCopy | None:
    """The committed VG text of this area, None when the area is ignored or empty."""
    if not header.raw_locns:
        return None
    rl = header.raw_locns[0]
    if rl.ignored or (rl.offset == 0 and rl.size == 0):
        return None
    dev = header.device
    where = header.where + _MDA_HEADER.size
    if rl.offset < MDA_HEADER_SIZE or rl.offset >= header.size:
        raise FormatError(f"metadata text offset {rl.offset} outside the ring (size {header.size})",
                          dev.path, where)
    if rl.size == 0 or rl.size > header.size - MDA_HEADER_SIZE:
        raise FormatError(f"metadata text size {rl.size} does not fit the ring (size {header.size})",
                          dev.path, where + 8)
    if rl.size > MAX_METADATA_TEXT:
        raise FormatError(f"metadata text size {rl.size} exceeds the {MAX_METADATA_TEXT} byte bound",
                          dev.path, where + 8)
    wrap = max(0, rl.offset + rl.size - header.size)
    first = dev.read(header.area.offset + rl.offset, rl.size - wrap)
    second = dev.read(header.area.offset + MDA_HEADER_SIZE, wrap) if wrap else b""
    computed = calc_crc(second, calc_crc(first))
    if computed != rl.checksum:
        raise FormatError(f"metadata text checksum mismatch (stored {rl.checksum:#010x}, computed "
                          f"{computed:#010x}, {rl.size} bytes at ring offset {rl.offset}"
                          f"{', wrapped' if wrap else ''})", dev.path, header.where + rl.offset)
    blob = first + second
    # The size includes the terminating NUL; tolerate writers that stored none.
    end = blob.find(b"\0")
    if end >= 0:
        blob = blob[:end]
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"metadata text is not UTF-8 at byte {e.start}", dev.path,
                          header.where + rl.offset) from None
    return MetadataCopy(header, rl, text, bool(wrap))
