# SPDX-License-Identifier: Apache-2.0
"""Images that name other files are refused before anything reads those files.

An image in an output directory may have been replaced by anyone who can write there. Some
formats name other files that qemu then opens and reads as part of the disk: a qcow2 backing file
or external data file, the extents of a vmdk descriptor (``RW 2048 FLAT "/etc/shadow" 0``), the
parent of a vmdk. A digest of such an image would read, and reveal, files the image merely names.

:func:`refuse_references` reads only the image's own header (bounded: the first qcow2 cluster at
most, the vmdk descriptor at most as much as qemu reads of one) and runs before any qemu tool
opens the image. :func:`check_info` then refuses whatever ``qemu-img info`` reports beyond the
image itself (backing file, data file, vmdk extents that are other files) and a format other than
the expected one. Both raise :class:`RefusedImage` (exit 3) naming the image and the reference.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import struct
from typing import Any

from ..errors import IOFailure, UnsupportedError
from ..units import KiB, MiB

QCOW_MAGIC = b"QFI\xfb"  # qcow (version 1) and qcow2 (versions 2 and 3)
VMDK4_MAGIC = b"KDMV"  # hosted sparse extent, the header of monolithicSparse and streamOptimized
VMDK3_MAGIC = b"COWD"  # ESX 2 sparse extent: no descriptor, names nothing
# qcow2 keeps its header and header extensions in the first cluster; qemu allows clusters up to
# 2 MiB (cluster_bits <= 21), so this much covers every extension qemu would see.
MAX_HEADER = 2 * MiB
# qemu reads at most 1 MiB of a vmdk descriptor (vmdk_read_desc); text beyond it is never parsed.
MAX_DESCRIPTOR = 1 * MiB
# qemu looks for parentFileNameHint in this much of a sparse vmdk from offset 512 (DESC_SIZE).
VMDK_PARENT_WINDOW = 10 * KiB
VMDK_PARENT_OFFSET = 512
SECTOR = 512
QCOW2_INCOMPAT_DATA_FILE = 1 << 2  # incompatible feature bit: an external data file is in use
QCOW2_EXT_DATA_FILE = 0x44415441  # header extension "DATA": the external data file's name
QCOW2_V2_HEADER = 72
QCOW2_V3_HEADER_MIN = 104
# Extent lines as qemu's vmdk_parse_extents reads them (sscanf of "ACCESS SECTORS TYPE "FILE" OFFSET",
# which skips any whitespace and takes signs): a line whose first word is an access mode, in any
# letter case. The type and the quoted file name are taken from the rest of the line.
_EXTENT = re.compile(rb"^[ \t\r\v\f]*(?:RW|RDONLY|NOACCESS)(?=[ \t\r\v\f])([^\n]*)", re.M | re.I)
_EXTENT_TYPE = re.compile(rb"[ \t\r\v\f]*[-+]?\d*[ \t\r\v\f]*([A-Za-z]*)")
_EXTENT_FILE = re.compile(rb'"([^"\r\n]*)')
# qemu finds a vmdk's parent by strstr(descriptor, "parentFileNameHint") anywhere in the text, and
# takes the name after the next two characters, so any occurrence counts.
_PARENT = re.compile(rb"parentFileNameHint(?:..([^\"\r\n]*))?", re.I | re.S)
# What qemu's vmdk probe takes for a text descriptor: after comment lines and spaces, "version=N".
_VERSION_LINE = re.compile(rb"\A(?:[ \t\r\n]*#[^\n]*\n)*[ \t\r\n]*version=[123]\r?\n")
_NAME_SHOWN = 200  # characters of a referenced file name quoted in a message


class RefusedImage(UnsupportedError):
    """An image that references another file (backing file, data file, external extents)."""


def _name(raw: bytes | str) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return repr(text[:_NAME_SHOWN])


def refuse_references(path: str, fmt: str | None) -> None:
    """RefusedImage if the image at ``path``, read as ``fmt`` (``None``: as qemu would probe it),
    names another file. Reads only ``path`` itself, opened without following a symbolic link."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise RefusedImage("refusing an image that is a symbolic link", path) from None
        raise IOFailure(f"cannot open {path} read-only: {e.strerror}") from e
    try:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            raise RefusedImage("refusing an image that is not a regular file or block device", path)
        head = os.pread(fd, MAX_HEADER, 0)
        magic = head[:4]
        if magic == QCOW_MAGIC and fmt in (None, "qcow", "qcow2"):
            _qcow(head, path)
        elif fmt in (None, "vmdk"):
            if magic == VMDK4_MAGIC:
                _vmdk_sparse(fd, head, path)
            elif magic != VMDK3_MAGIC and (fmt == "vmdk" or _VERSION_LINE.match(head)):
                _descriptor(head[:MAX_DESCRIPTOR], path, embedded=False)
    except OSError as e:
        raise IOFailure(f"cannot read {path}: {e.strerror}") from e
    finally:
        os.close(fd)


def _qcow(head: bytes, path: str) -> None:
    if len(head) < QCOW2_V2_HEADER:
        return  # qemu refuses a truncated header itself
    version, backing_offset, backing_size = struct.unpack_from(">IQI", head, 4)
    if backing_offset:
        start = min(backing_offset, len(head))
        name = head[start : start + min(backing_size, _NAME_SHOWN)]
        raise RefusedImage(f"image names a backing file {_name(name)} (at offset {backing_offset}); "
                           "convert it to a standalone image first", path)
    if version < 3 or len(head) < QCOW2_V3_HEADER_MIN:
        return
    (incompatible,) = struct.unpack_from(">Q", head, 72)
    (header_length,) = struct.unpack_from(">I", head, 100)
    names = _qcow2_extensions(head, max(header_length, QCOW2_V3_HEADER_MIN))
    if incompatible & QCOW2_INCOMPAT_DATA_FILE or names:
        what = _name(names[0]) if names else "(no name recorded)"
        raise RefusedImage(f"image keeps its data in an external data file {what}", path)


def _qcow2_extensions(head: bytes, offset: int) -> list[bytes]:
    """The external data file names among the header extensions that fit in ``head``."""
    names = []
    while offset + 8 <= len(head):
        kind, length = struct.unpack_from(">II", head, offset)
        if kind == 0:
            break
        offset += 8
        if kind == QCOW2_EXT_DATA_FILE:
            names.append(head[offset : offset + length])
        offset += (length + 7) & ~7
    return names


def _vmdk_sparse(fd: int, head: bytes, path: str) -> None:
    """A VMDK4 sparse header: with capacity 0 qemu opens its descriptor as a descriptor file (whose
    extents are other files); otherwise the descriptor is informational, but may name a parent."""
    if len(head) < 44:
        return  # qemu refuses a truncated header itself
    capacity, _granularity, desc_offset, desc_size = struct.unpack_from("<QQQQ", head, 12)
    text = b""
    start, end = desc_offset * SECTOR, os.lseek(fd, 0, os.SEEK_END)  # st_size is 0 for block devices
    if desc_offset and start < end:
        length = min(desc_size * SECTOR if desc_size else MAX_DESCRIPTOR, MAX_DESCRIPTOR, end - start)
        text = head[start : start + length] if start + length <= len(head) else os.pread(fd, length, start)
    if capacity == 0 and desc_offset:
        _descriptor(text, path, embedded=False)
        return
    window = head[VMDK_PARENT_OFFSET : VMDK_PARENT_OFFSET + VMDK_PARENT_WINDOW]
    _descriptor(text, path, embedded=True)
    _descriptor(window, path, embedded=True)


def _descriptor(text: bytes, path: str, *, embedded: bool) -> None:
    """Refuse extents that are files (for an embedded descriptor: anything but one SPARSE extent,
    which is the image itself) and a parent."""
    parent = _PARENT.search(text)
    if parent is not None:
        raise RefusedImage(f"vmdk descriptor names a parent image {_name(parent.group(1) or b'')}", path)
    extents: list[tuple[bytes, bytes | None, bytes]] = []
    for m in _EXTENT.finditer(text):
        rest = m.group(1)
        typed = _EXTENT_TYPE.match(rest)
        quoted = _EXTENT_FILE.search(rest)
        extents.append((typed.group(1).upper() if typed else b"", quoted.group(1) if quoted else None, m.group(0)))
    if embedded:
        if len(extents) <= 1 and all(kind == b"SPARSE" for kind, _, _ in extents):
            return
        extra = next((e for e in extents if e[0] != b"SPARSE"), extents[-1])
        raise RefusedImage(f"vmdk header's descriptor lists the extent {_name(extra[2].strip())} besides the "
                           "image itself", path)
    for kind, name, _ in extents:
        if kind != b"ZERO" or name is not None:
            raise RefusedImage(f"vmdk descriptor names the extent file {_name(name or b'')} "
                               f"({kind.decode('ascii', 'replace') or '?'}); only single-file images are read", path)


def check_info(meta: dict[str, Any], path: str, fmt: str | None) -> None:
    """Refuse what ``qemu-img info --output=json`` of ``path`` reports beyond the image itself."""
    detected = meta.get("format")
    if fmt is not None and detected != fmt:
        raise RefusedImage(f"qemu-img reads the image as {_name(str(detected))}, not {fmt}", path)
    for key in ("backing-filename", "full-backing-filename", "backing-filename-format"):
        if meta.get(key) is not None:
            raise RefusedImage(f"image names a backing file {_name(str(meta.get(key)))}; convert it to a "
                               "standalone image first", path)
    specific = meta.get("format-specific")
    data = specific.get("data") if isinstance(specific, dict) else None
    if not isinstance(data, dict):
        return
    if data.get("data-file") is not None:
        raise RefusedImage(f"image keeps its data in an external data file {_name(str(data['data-file']))}", path)
    extents = data.get("extents")
    if extents is None:
        return
    if not isinstance(extents, list):
        raise RefusedImage("qemu-img reports extents it does not list", path)
    for ext in extents:
        name = ext.get("filename") if isinstance(ext, dict) else None
        if name != path:
            raise RefusedImage(f"image has the extent file {_name(str(name))}; only single-file images are read",
                               path)
