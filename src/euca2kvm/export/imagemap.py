# SPDX-License-Identifier: Apache-2.0
"""The guest bytes of an image file read straight from the file, where its format stores them as
they are: ``qemu-img map`` says, for every guest range, that it reads as zeros or where in the file
its bytes are, and the mapping becomes :mod:`euca2kvm.lvm.extents` mappers of that file.

This is how :mod:`.imagedigest` reads the images qemu-img writes (qcow2, sparse vmdk, vpc, vdi...
without compression or encryption): the same bytes qemu-nbd would serve, since both come from
qemu's reading of the image's metadata, without a process copying every byte into a socket.
qemu-img map merges neighbours that are contiguous in the file, so a converted disk is a few
entries per GiB of data.

Anything else gives ``None`` and the caller reads through qemu-nbd: a range stored otherwise
(compressed or encrypted clusters and vhdx report data without an offset), a range that is neither
data nor zeros, another file, a backing layer, ranges that are not contiguous from 0 to the
virtual size, a file offset outside the file, more output than :data:`MAX_MAP_OUTPUT`, or a
failing ``qemu-img map``. The map is read as hostile input: every field is type-checked.
"""

from __future__ import annotations

import os
import stat
from typing import Any

from ..blocks import Kind
from ..errors import ToolError
from ..lvm.extents import FillMapper, LinearMapper, Mapper
from ..units import MiB
from . import qemu_img

# Bytes of qemu-img map JSON read (about 110 bytes an entry: some 38 k entries). A converted disk
# has a few entries per GiB; an image fragmented beyond this is read through qemu-nbd instead of
# parsed into more objects than a job's memory budget allows.
MAX_MAP_OUTPUT = 4 * MiB


def file_mappers(path: str, fmt: str, vsize: int) -> list[Mapper] | None:
    """Mappers covering guest bytes ``[0, vsize)`` of the ``fmt`` image ``path`` (a regular file,
    not a link), each zeros or a range of ``path`` itself; None when the image is not all so."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    try:
        entries: Any = qemu_img.map(path, fmt=fmt, max_stdout=MAX_MAP_OUTPUT)
    except ToolError:
        return None
    mappers: list[Mapper] = []
    pos = 0
    for e in entries:
        mapper = _mapper(e, pos, path, st.st_size)
        if mapper is None:
            return None
        mappers.append(mapper)
        pos += mapper.length
    return mappers if pos == vsize else None


def _mapper(e: Any, pos: int, path: str, file_size: int) -> Mapper | None:
    if not isinstance(e, dict):
        return None
    start, length, offset = e.get("start"), e.get("length"), e.get("offset")
    if type(start) is not int or type(length) is not int or start != pos or length <= 0:
        return None
    if e.get("depth") != 0 or e.get("filename", path) != path or e.get("compressed", False) is not False:
        return None
    if e.get("zero") is True:
        return FillMapper(start, length, Kind.ZERO)
    if e.get("data") is True and type(offset) is int and offset >= 0 and offset + length <= file_size:
        return LinearMapper(start, length, path, offset)
    return None


def head(mappers: list[Mapper], size: int) -> list[Mapper]:
    """The mappers of guest bytes ``[0, size)`` (the last one cut short)."""
    out: list[Mapper] = []
    for m in mappers:
        if m.start >= size:
            break
        n = min(m.length, size - m.start)
        if isinstance(m, LinearMapper):
            out.append(LinearMapper(m.start, n, m.path, m.offset))
        elif isinstance(m, FillMapper):
            out.append(FillMapper(m.start, n, m.kind))
        else:
            raise AssertionError(f"unexpected mapper {m!r}")
    return out
