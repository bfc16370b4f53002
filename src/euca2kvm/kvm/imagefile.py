# SPDX-License-Identifier: Apache-2.0
"""Read-only access to disk images for guest inspection, and the bounded-read helpers.

Every guest structure parser reads through :func:`read_at`, which caps the length, so a size
field in hostile bytes never becomes a large allocation.

:func:`open_image` returns a reader (``.size``, ``.pread(offset, length)``, ``.close()``):

* raw image files and block devices are read with ``os.pread`` on a read-only descriptor;
* qcow2, vdi, vhdx, vpc (VHD) and single-file vmdk images are read through ``qemu-img convert``
  of just the needed byte range: a ``json:{"driver":"raw","offset":O,"size":S,"file":{...}}``
  node on top of the format driver, written to a private temporary file. Ranges are fetched in
  aligned chunks and cached, so an inspection costs a few dozen short ``qemu-img`` runs.
  Backing files are disabled (``"backing": null``), images with an external data file and
  vmdk descriptors that name other files are refused: a hostile image must not make the tool read
  other host files. Any other format raises :class:`UnsupportedError`.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections import OrderedDict
from typing import Any, Protocol

from .. import procs
from ..errors import FormatError, IOFailure, ToolError, UnsupportedError
from ..export import qemu_img

# No single guest structure the inspector reads is larger than this (a GPT entry array is at most
# 1 MiB by our own cap, see partitions.MAX_GPT_ENTRIES_BYTES); a larger read is a bug.
MAX_PROBE_READ = 1 << 20

# qemu-img reads are fetched in chunks of this size, aligned, and cached: inspection reads many
# small structures near each other (MBR, GPT, superblocks), so one 1 MiB chunk serves several.
QEMU_CHUNK = 1 << 20
# At most this many chunks are kept (16 MiB of memory).
QEMU_CACHE_CHUNKS = 16
# One `qemu-img info` or chunk conversion takes milliseconds; this bound catches a hung tool.
QEMU_TIMEOUT = 60.0
# Formats read through qemu-img; each is a single-file format (vmdk is checked further).
QEMU_FORMATS = ("qcow2", "vdi", "vhdx", "vpc", "vmdk")


class Reader(Protocol):
    """What the inspector needs: a size and positional reads (like ``lvm.reader.ExtentReader``)."""

    size: int

    def pread(self, offset: int, length: int) -> bytes: ...


def read_at(reader: Reader, offset: int, length: int) -> bytes | None:
    """Exactly ``length`` bytes at ``offset``, or None when the range is outside the reader."""
    if length > MAX_PROBE_READ:
        raise AssertionError(f"probe read of {length} bytes exceeds {MAX_PROBE_READ}")
    if offset < 0 or length < 0 or offset + length > reader.size:
        return None
    data = reader.pread(offset, length)
    if len(data) != length:
        return None
    return data


def clean_text(raw: bytes | str, limit: int = 128) -> str:
    """Guest-supplied text made safe for a terminal or a log: control characters are escaped."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    out = []
    for ch in text[:limit]:
        if ch.isprintable():
            out.append(ch)
        else:
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}")
    return "".join(out)


class RawReader:
    """pread on a raw image file or block device, opened read-only."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise IOFailure(f"cannot open {path} read-only: {e.strerror}") from e
        try:
            self.size = os.lseek(self._fd, 0, os.SEEK_END)
        except OSError as e:
            os.close(self._fd)
            raise IOFailure(f"cannot size {path}: {e.strerror}") from e

    def pread(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError("negative offset or length")
        length = max(0, min(length, self.size - offset))
        try:
            return os.pread(self._fd, length, offset)
        except OSError as e:
            raise IOFailure(f"read {length} bytes at {offset} from {self.path}: {e.strerror}") from e

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> RawReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _run(args: list[str], what: str) -> bytes:
    """stdout of ``qemu-img args`` (``$QEMU_IMG`` if set), bounded in time; failures become ToolError."""
    return procs.run([qemu_img.binary(), *args], timeout=QEMU_TIMEOUT, what=f"{what}: qemu-img {args[0]}",
                     hint="install qemu-utils").stdout


def image_info(path: str) -> dict[str, Any]:
    """``qemu-img info --output=json`` of a file (format probing, no backing chain)."""
    out = _run(["info", "-U", "--output=json", path], f"probe {path}")
    try:
        info = json.loads(out)
    except ValueError as e:
        raise ToolError(f"qemu-img info {path}: output is not JSON") from e
    if not isinstance(info, dict):
        raise ToolError(f"qemu-img info {path}: unexpected output")
    return info


def _check_self_contained(path: str, fmt: str, info: dict[str, Any]) -> None:
    """Refuse images whose metadata points at other host files."""
    data = (info.get("format-specific") or {}).get("data") or {}
    if fmt == "qcow2" and data.get("data-file"):
        raise UnsupportedError("qcow2 image with an external data file is not inspected", path)
    if fmt == "vmdk":
        real = os.path.realpath(path)
        for ext in data.get("extents") or []:
            name = ext.get("filename") if isinstance(ext, dict) else None
            if not isinstance(name, str) or os.path.realpath(name) != real:
                raise UnsupportedError("vmdk image whose extents live in other files is not inspected", path)


class QemuImgReader:
    """Byte ranges of a non-raw image, converted to raw by ``qemu-img convert`` chunk by chunk."""

    def __init__(self, path: str, fmt: str, size: int) -> None:
        self.path = os.path.abspath(path)
        self.fmt = fmt
        self.size = size
        self._tmp = tempfile.TemporaryDirectory(prefix="euca2kvm-inspect-")
        self._cache: OrderedDict[int, bytes] = OrderedDict()

    def _spec(self, offset: int, size: int) -> str:
        fmt_node: dict[str, Any] = {"driver": self.fmt, "file": {"driver": "file", "filename": self.path}}
        if self.fmt == "qcow2":
            fmt_node["backing"] = None
        return "json:" + json.dumps({"driver": "raw", "offset": offset, "size": size, "file": fmt_node})

    def _chunk(self, index: int) -> bytes:
        cached = self._cache.get(index)
        if cached is not None:
            self._cache.move_to_end(index)
            return cached
        start = index * QEMU_CHUNK
        size = min(QEMU_CHUNK, self.size - start)
        out = os.path.join(self._tmp.name, "chunk.raw")
        _run(["convert", "-U", "-O", "raw", self._spec(start, size), out],
             f"read {size} bytes at {start} from {self.path}")
        try:
            with open(out, "rb") as f:
                data = f.read(size + 1)
            os.unlink(out)
        except OSError as e:
            raise IOFailure(f"reading converted range of {self.path}: {e.strerror}") from e
        if len(data) != size:
            raise ToolError(f"qemu-img returned {len(data)} bytes for a {size} byte range of {self.path}")
        self._cache[index] = data
        if len(self._cache) > QEMU_CACHE_CHUNKS:
            self._cache.popitem(last=False)
        return data

    def pread(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError("negative offset or length")
        end = min(self.size, offset + length)
        parts = []
        pos = offset
        while pos < end:
            index = pos // QEMU_CHUNK
            chunk = self._chunk(index)
            lo = pos - index * QEMU_CHUNK
            hi = min(len(chunk), end - index * QEMU_CHUNK)
            parts.append(chunk[lo:hi])
            pos = index * QEMU_CHUNK + hi
        return b"".join(parts)

    def close(self) -> None:
        self._cache.clear()
        self._tmp.cleanup()

    def __enter__(self) -> QemuImgReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_image(path: str, fmt: str | None = None) -> RawReader | QemuImgReader:
    """A read-only reader over a disk image file or block device (see the module docstring).

    ``fmt`` names the format when the caller knows it (e.g. "raw" for an image the tool wrote):
    a raw guest disk whose first bytes imitate a qcow2 header is then not mistaken for one.
    Without it the format is probed with ``qemu-img info``.
    """
    try:
        st = os.stat(path)
    except OSError as e:
        raise IOFailure(f"cannot stat {path}: {e.strerror}") from e
    if stat.S_ISBLK(st.st_mode):
        return RawReader(path)
    if not stat.S_ISREG(st.st_mode):
        raise FormatError("not a regular file or block device", path)
    if fmt == "raw":
        return RawReader(path)
    info = image_info(path)
    probed = info.get("format")
    if fmt is not None and probed != fmt:
        raise FormatError(f"expected a {fmt} image, qemu-img probes {clean_text(str(probed))!r}", path)
    fmt = probed
    size = info.get("virtual-size")
    if fmt == "raw":
        return RawReader(path)
    if fmt not in QEMU_FORMATS:
        raise UnsupportedError(f"image format {clean_text(str(fmt))!r} is not inspected "
                               f"(supported: raw, {', '.join(QEMU_FORMATS)})", path)
    if not isinstance(size, int) or size < 0:
        raise FormatError("qemu-img reports no virtual size", path)
    _check_self_contained(path, str(fmt), info)
    return QemuImgReader(path, str(fmt), size)


class Window:
    """A byte range of a reader (a partition); reads outside it return None."""

    def __init__(self, reader: Reader, offset: int, size: int) -> None:
        self.reader = reader
        self.offset = offset
        # A partition entry may claim more than the disk holds: only the bytes that exist count.
        self.size = max(0, min(size, reader.size - offset))

    def read(self, offset: int, length: int) -> bytes | None:
        if offset < 0 or length < 0 or offset + length > self.size:
            return None
        return read_at(self.reader, self.offset + offset, length)
