# SPDX-License-Identifier: Apache-2.0
"""Export a block source to a sparse raw image, atomically.

The image is written in a private work directory inside the output directory (created with
O_EXCL, never through a symlink) and renamed to the final name only after every byte was read,
hashed and written; on any error or interrupt the temporary file is removed, so a file under
the final name is always complete.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from ..blocks import BlockSource
from ..errors import IOFailure
from ..outdir import OutDir, WorkDir
from .copy import DEFAULT_WORKERS, CopyResult, ProgressFn, copy_blocks

# The image's name inside its private work directory (see outdir.OutDir.work).
IMAGE = "image"


def partial_name(final: Path) -> Path:
    """The name prefix of the temporary an output is written under (never looks like a finished image).

    The temporary itself is ``<this>.<pid>-<random>.partial`` (see :func:`outdir.temp_name`).
    """
    return final.with_name(f".{final.name}.partial")


@contextlib.contextmanager
def new_image(work: WorkDir, size: int, fsync: bool = False) -> Iterator[int]:
    """A descriptor of a new, empty, ``size``-byte sparse file ``IMAGE`` in ``work``; removed on error."""
    fd = work.create(IMAGE)
    ok = False
    try:
        try:
            os.ftruncate(fd, size)
        except OSError as e:
            raise IOFailure(f"cannot size {work.file(IMAGE)} to {size} bytes: {e.strerror}") from e
        yield fd
        if fsync:
            os.fdatasync(fd)
        ok = True
    finally:
        os.close(fd)
        if not ok:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(IMAGE, dir_fd=work.fd)


@contextlib.contextmanager
def atomic_output(final: Path, size: int, fsync: bool = False,
                  commit: Callable[[], None] | None = None) -> Iterator[int]:
    """Yield a descriptor of a new, empty, ``size``-byte sparse file published as ``final`` on success.

    ``commit`` (recording the manifest entry) runs while the new file is in place under the output
    directory's lock; if it fails the earlier export is restored (see :meth:`OutDir.publish`).
    """
    with OutDir(final.parent) as od, od.work(final.name) as work:
        with new_image(work, size, fsync=fsync) as fd:
            yield fd
        od.publish(work, IMAGE, final.name, commit=commit, fsync=fsync)


def export_raw(source: BlockSource, final: Path, *, sha256: bool = False, workers: int = DEFAULT_WORKERS,
               progress: ProgressFn | None = None, fsync: bool = False) -> CopyResult:
    with atomic_output(final, source.size, fsync=fsync) as fd:
        return copy_blocks(source, fd, sha256=sha256, workers=workers, progress=progress)


def is_enospc(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno == errno.ENOSPC
