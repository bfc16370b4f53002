# SPDX-License-Identifier: Apache-2.0
"""Export an extent map to a sparse raw image, atomically.

The image is written under a hidden temporary name in the output directory and renamed over
the final name only after every byte was read, hashed and written; on any error or interrupt
the temporary file is removed, so a file under the final name is always complete.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from ..errors import IOFailure
from ..lvm.extents import ExtentMap
from .copy import DEFAULT_WORKERS, CopyResult, ProgressFn, copy_blocks


def partial_name(final: Path) -> Path:
    """The temporary name an output is written under (never looks like a finished image)."""
    return final.with_name(f".{final.name}.partial")


@contextlib.contextmanager
def atomic_output(final: Path, size: int, fsync: bool = False) -> Iterator[int]:
    """Yield a descriptor of a new, empty, ``size``-byte sparse file renamed to ``final`` on success."""
    tmp = partial_name(final)
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise IOFailure(f"cannot create {tmp}: {e.strerror}") from e
    ok = False
    try:
        try:
            os.ftruncate(fd, size)
        except OSError as e:
            raise IOFailure(f"cannot size {tmp} to {size} bytes: {e.strerror}") from e
        yield fd
        if fsync:
            os.fdatasync(fd)
        ok = True
    finally:
        os.close(fd)
        if not ok:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    try:
        publish(tmp, final)
    except IOFailure:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    if fsync:
        dfd = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def publish(tmp: Path, final: Path) -> None:
    """Rename a finished output to its final name, replacing an earlier export.

    The earlier file is first moved aside, so neither rename replaces an existing file: ext4
    (auto_da_alloc) flushes a file renamed over another one synchronously, which costs seconds
    for a large image. The final name is missing only between the two renames.
    """
    old = final.with_name(f".{final.name}.old")
    moved = False
    try:
        try:
            os.rename(final, old)
            moved = True
        except FileNotFoundError:
            pass
        os.rename(tmp, final)
    except OSError as e:
        if moved:
            with contextlib.suppress(OSError):
                os.rename(old, final)  # put the earlier export back
        raise IOFailure(f"cannot rename {tmp} to {final}: {e.strerror}") from e
    if moved:
        with contextlib.suppress(FileNotFoundError):
            old.unlink()


def export_raw(emap: ExtentMap, final: Path, *, sha256: bool = False, workers: int = DEFAULT_WORKERS,
               progress: ProgressFn | None = None, fsync: bool = False, name: str = "LV") -> CopyResult:
    with atomic_output(final, emap.size, fsync=fsync) as fd:
        return copy_blocks(emap, fd, sha256=sha256, workers=workers, progress=progress, name=name)


def is_enospc(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno == errno.ENOSPC
