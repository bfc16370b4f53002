# SPDX-License-Identifier: Apache-2.0
"""A physical volume candidate: a byte range of a file or block device, opened read-only.

Container files are whole files (``base = 0``); a PV inside a guest disk partition is a range
of an image file. Every read is bounded by the range and raises :class:`FormatError` naming the
file and the absolute offset when the range is shorter than the structure being read.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import FormatError, IOFailure


def file_size(path: str) -> int:
    """Size of a regular file or block device, without opening it for writing."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise IOFailure(f"cannot stat {path}: {e.strerror}") from e
    if stat.S_ISBLK(st.st_mode):
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return os.lseek(fd, 0, os.SEEK_END)
        finally:
            os.close(fd)
    if not stat.S_ISREG(st.st_mode):
        raise FormatError("not a regular file or block device", path)
    return st.st_size


@dataclass(frozen=True)
class Device:
    path: str
    base: int = 0  # byte offset of the PV inside ``path``
    size: int = -1  # bytes; -1 = to the end of the file
    # Reads through this instead of the file (a PV inside a guest disk inside an LV or a qcow2):
    # ``reader(absolute_offset, length)``. Extent maps of such PVs name ``path`` only for messages.
    reader: Callable[[int, int], bytes] | None = field(default=None, compare=False)

    @classmethod
    def whole(cls, path: str) -> Device:
        return cls(os.path.abspath(path), 0, file_size(path))

    def read(self, offset: int, length: int) -> bytes:
        """Exactly ``length`` bytes at PV-relative ``offset`` or FormatError."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise FormatError(f"structure of {length} bytes at {offset} lies outside the device "
                              f"({self.size} bytes)", self.path, self.base + offset)
        if self.reader is not None:
            data = self.reader(self.base + offset, length)
            if len(data) != length:
                raise FormatError(f"short read: {len(data)} of {length} bytes", self.path,
                                  self.base + offset + len(data))
            return data
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise IOFailure(f"cannot open {self.path} read-only: {e.strerror}") from e
        try:
            data = os.pread(fd, length, self.base + offset)
        except OSError as e:
            raise IOFailure(f"read of {length} bytes at {self.base + offset} in {self.path} failed: "
                            f"{e.strerror}") from e
        finally:
            os.close(fd)
        if len(data) != length:
            raise FormatError(f"short read: {len(data)} of {length} bytes (file truncated?)",
                              self.path, self.base + offset + len(data))
        return data

    def __str__(self) -> str:
        return self.path if self.base == 0 else f"{self.path}@{self.base}"
