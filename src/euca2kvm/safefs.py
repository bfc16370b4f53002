# SPDX-License-Identifier: Apache-2.0
"""Single files by path, where whatever is at the path is hostile, and private runtime directories.

* :func:`open_new_or_truncate`, :func:`read_bounded` and :func:`read_prefix` refuse a symlink
  (``O_NOFOLLOW``) or anything but a regular file at the path (``O_NONBLOCK`` so a planted FIFO cannot
  block the open), and reads are bounded;
* :func:`runtime_dir` makes a private (0700) directory ``<prefix><pid>-XXXXXXXX`` in the system
  temporary directory (NBD sockets when OUTDIR's path is too long for a unix socket, ``verify``'s
  qemu-nbd, boot tests) after removing those that dead processes of ours left (SIGKILL).

Writing into an output directory is :mod:`euca2kvm.outdir`'s.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import IOFailure

RUNTIME_PREFIX = "euca2kvm-nbd-"  # NBD socket directories in the system temporary directory
_RUNTIME_TAG = re.compile(r"^(?P<pid>\d+)-[a-z0-9_]{8}$")  # after the prefix: "<pid>-" + mkdtemp's 8
_FILE_KIND = {stat.S_IFDIR: "a directory", stat.S_IFLNK: "a symbolic link", stat.S_IFIFO: "a FIFO",
              stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}


def stamp(st: os.stat_result) -> dict[str, int]:
    """What moves when a file is written, truncated or replaced: size, mtime, ctime (which no caller
    can set back, unlike the mtime) and inode."""
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino}


def kind_of(mode: int) -> str:
    """What a non-regular file is, for messages ("a symbolic link", "a FIFO", ...)."""
    return _FILE_KIND.get(stat.S_IFMT(mode), "not a regular file")


def open_regular(path: Path | str, flags: int, mode: int = 0o644, *, dir_fd: int | None = None,
                 shown: Path | str | None = None) -> int:
    """A blocking descriptor of the regular file ``path`` opened with ``flags`` (``dir_fd`` relative),
    never through a symlink; IOFailure for anything else at the name (a planted FIFO cannot block
    the open: it is opened non-blocking and refused). ``shown`` names it in messages."""
    shown = path if shown is None else shown
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    except OSError as e:
        raise IOFailure(f"cannot open {shown}: {e.strerror}") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise IOFailure(f"{shown} is {kind_of(st.st_mode)}, not a regular file; refusing to use it")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_new_or_truncate(path: Path | str, mode: int = 0o644) -> int:
    """A write descriptor of ``path``, created or truncated, refusing a symlink or non-regular file there."""
    fd = open_regular(path, os.O_WRONLY | os.O_CREAT, mode)
    try:
        os.ftruncate(fd, 0)
    except OSError as e:
        os.close(fd)
        raise IOFailure(f"cannot write {path}: {e.strerror}") from e
    return fd


def read_bounded(path: Path | str, limit: int) -> bytes:
    """The content of the regular file ``path`` (not through a symlink), IOFailure if over ``limit`` bytes."""
    out = read_prefix(path, limit)
    if len(out) > limit:
        raise IOFailure(f"{path} is larger than {limit} bytes")
    return out


def read_prefix(path: Path | str, limit: int) -> bytes:
    """At most ``limit + 1`` bytes of the regular file ``path`` (not through a symlink): more than
    ``limit`` tells the caller the file is too large, to refuse with its own error."""
    fd = open_regular(path, os.O_RDONLY)
    try:
        chunks, left = [], limit + 1
        while left > 0:
            data = os.read(fd, min(left, 1 << 20))
            if not data:
                break
            chunks.append(data)
            left -= len(data)
    except OSError as e:
        raise IOFailure(f"cannot read {path}: {e.strerror}") from e
    finally:
        os.close(fd)
    return b"".join(chunks)


def runtime_dir(prefix: str, base: str | None = None) -> str:
    """A new private (0700) directory in ``base`` (default: the system temporary directory), named
    ``<prefix><pid>-XXXXXXXX``. Directories of this pattern left by dead processes of this user
    (SIGKILL) are removed first.
    """
    base = base or tempfile.gettempdir()
    sweep_runtime(base, prefix)
    try:
        return tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=base)
    except OSError as e:
        raise IOFailure(f"cannot create a directory in {base}: {e.strerror}") from e


@contextlib.contextmanager
def private_tmp(prefix: str) -> Iterator[Path]:
    """A :func:`runtime_dir` removed with its content when the ``with`` block ends."""
    path = runtime_dir(prefix)
    try:
        yield Path(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


def sweep_runtime(base: str, prefix: str) -> None:
    """Remove ``base/<prefix><pid>-*`` directories of ours whose process is gone (never via a symlink)."""
    try:
        bfd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        for name in os.listdir(bfd):
            if not name.startswith(prefix):
                continue
            m = _RUNTIME_TAG.match(name[len(prefix):])
            if m is None or pid_alive(int(m["pid"])):
                continue
            with contextlib.suppress(OSError):
                st = os.stat(name, dir_fd=bfd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid():
                    shutil.rmtree(name, dir_fd=bfd)
    finally:
        os.close(bfd)


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
