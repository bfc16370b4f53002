# SPDX-License-Identifier: Apache-2.0
"""Writing into the output directory, where anything already present is hostile.

The directory given by the user (``-o OUTDIR``) is trusted; what is *inside* it is not: a file at
a temporary or final name may be a symlink planted to make a writer overwrite or chmod a file
elsewhere, a directory, a FIFO. Every write into OUTDIR goes through :class:`OutDir`:

* files are created relative to a descriptor of OUTDIR with ``O_CREAT|O_EXCL|O_NOFOLLOW`` under a
  unique hidden name (``.<final>.<pid>-<random>.partial``) and published with ``renameat``, which
  replaces a symlink at the final name instead of following it;
* tools that create their own files (``qemu-img convert``, the NBD socket, a boot test's logs)
  work inside a private 0700 directory of the same name pattern (:meth:`OutDir.work`), created
  by us, so no one else can plant anything in it;
* whatever is at a final name must be a regular file (or nothing): a directory, symlink, FIFO or
  device there is refused with :class:`IOFailure` (exit 5), nothing renamed or written;
* one inter-process lock per OUTDIR (:meth:`OutDir.lock`, ``flock`` on the directory itself, so
  it leaves no file behind) serialises manifest read-modify-write and every publish;
* a run's private directory holds a file ``flock``-ed by its process; the next run removes those
  whose owner died (SIGKILL, power loss), and refuses (exit 4, naming the other run's pid) to export
  an output that a live run is writing: two exports of one volume into one OUTDIR never share or
  publish each other's temporary files.

Runtime directories outside OUTDIR and single files written or read by path are
:mod:`euca2kvm.safefs`'s.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import secrets
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import FormatError, InUseError, IOFailure
from .safefs import kind_of, open_regular

# A publish or manifest update holds the lock for milliseconds; a run waiting this long means
# the other holder hangs (stopped process, dead NFS server): give up with exit 4 rather than hang.
LOCK_TIMEOUT = 300.0
LOCK_POLL = 0.02  # seconds between non-blocking flock attempts while waiting
# Filesystems without flock on directories (NFS emulates flock with fcntl locks, which need a
# descriptor open for writing) use this file instead.
LOCK_FILE = ".euca2kvm.lock"
ALIVE_FILE = ".alive"  # in each work directory, locked by its run for as long as it lives
NAME_MAX = 255
TEMP_SUFFIX = ".partial"
_TAG_HEX = 4  # random bytes in a temporary name, beside the pid
_TEMP = re.compile(r"^\.(?P<final>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.partial$")
_NO_DIR_LOCK = (errno.EBADF, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL)


@dataclass
class _Held:
    """This process's hold on one directory's lock: threads queue on ``rlock``, processes on flock."""

    rlock: threading.RLock
    depth: int = 0
    fd: int = -1


_held: dict[tuple[int, int], _Held] = {}
_held_guard = threading.Lock()


def temp_name(final: str) -> str:
    """A fresh hidden name for a temporary of ``final`` (unique per process and call)."""
    name = f".{final}.{os.getpid()}-{secrets.token_hex(_TAG_HEX)}{TEMP_SUFFIX}"
    if len(os.fsencode(name)) > NAME_MAX:
        raise FormatError(f"output name too long for a temporary name beside it: {final!r}")
    return name


def _check_name(name: str) -> None:
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise FormatError(f"not a plain file name: {name!r}")


class OutDir:
    """A descriptor of the output directory and the safe ways to write into it. Use as a context."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:  # the user's own argument: a symlink to a directory is fine here
            self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise IOFailure(f"cannot open output directory {self.path}: {e.strerror}") from e
        st = os.fstat(self.fd)
        self._key = (st.st_dev, st.st_ino)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> OutDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the lock -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
        """Exclusive across processes and threads; re-entrant in the thread holding it."""
        with _held_guard:
            held = _held.setdefault(self._key, _Held(threading.RLock()))
        if not held.rlock.acquire(timeout=timeout):
            raise InUseError(f"{self.path} is locked by another export of this process for over {timeout:.0f} s")
        try:
            if held.depth == 0:
                held.fd = self._flock(time.monotonic() + timeout)
            held.depth += 1
            try:
                yield
            finally:
                held.depth -= 1
                if held.depth == 0:
                    os.close(held.fd)  # releases the flock
                    held.fd = -1
        finally:
            held.rlock.release()

    def _flock(self, deadline: float) -> int:
        fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.fd)  # our own open file
        try:
            _flock_until(fd, deadline, self.path)
            return fd
        except OSError as e:
            os.close(fd)
            if e.errno not in _NO_DIR_LOCK:
                raise IOFailure(f"cannot lock {self.path}: {e.strerror}") from e
        fd = open_regular(LOCK_FILE, os.O_RDWR | os.O_CREAT, dir_fd=self.fd, shown=self.path / LOCK_FILE)
        try:
            _flock_until(fd, deadline, self.path)
        except OSError as e:
            os.close(fd)
            raise IOFailure(f"cannot lock {self.path / LOCK_FILE}: {e.strerror}") from e
        except BaseException:
            os.close(fd)
            raise
        return fd

    # -- what is at a name ----------------------------------------------------------------------

    def lstat(self, name: str) -> os.stat_result | None:
        """``lstat`` of ``name`` in OUTDIR (never follows a symlink), None when absent."""
        _check_name(name)
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise IOFailure(f"cannot stat {self.path / name}: {e.strerror}") from e

    def check_replaceable(self, name: str) -> None:
        """IOFailure unless ``name`` is absent or a regular file: nothing else is ever replaced."""
        st = self.lstat(name)
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise IOFailure(f"{self.path / name} is {kind_of(st.st_mode)}, not a regular file; "
                            "refusing to replace it (remove it or choose another output directory)")

    # -- small files ----------------------------------------------------------------------------

    def write_file(self, name: str, data: bytes | str, mode: int = 0o644, fsync: bool = True) -> Path:
        """Replace ``name`` with ``data`` atomically (mode exactly ``mode``); returns its path.

        Written under the lock, so a temporary of a live writer is never swept by another run.
        """
        payload = data.encode("utf-8") if isinstance(data, str) else data
        path = self.path / name
        with self.lock():
            self.check_replaceable(name)
            tmp = temp_name(name)
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                             dir_fd=self.fd)
            except OSError as e:
                raise IOFailure(f"cannot write {path}: {e.strerror}") from e
            try:
                try:
                    view = memoryview(payload)
                    while view:
                        view = view[os.write(fd, view):]
                    os.fchmod(fd, mode)
                    if fsync:
                        os.fsync(fd)
                finally:
                    os.close(fd)
                os.rename(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)  # replaces a symlink, never follows
            except BaseException as e:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=self.fd)
                if isinstance(e, OSError):
                    raise IOFailure(f"cannot write {path}: {e.strerror}") from e
                raise
            if fsync:
                _fsync_dir(self.fd)
        return path

    def flush(self, name: str) -> None:
        """Flush the regular file ``name`` (never through a symlink) and OUTDIR to stable storage."""
        _check_name(name)
        fd = open_regular(name, os.O_RDONLY, dir_fd=self.fd, shown=self.path / name)
        try:
            os.fsync(fd)
        except OSError as e:
            raise IOFailure(f"cannot flush {self.path / name}: {e.strerror}") from e
        finally:
            os.close(fd)
        _fsync_dir(self.fd)

    # -- private work directories and publishing ------------------------------------------------

    @contextlib.contextmanager
    def work(self, final: str) -> Iterator[WorkDir]:
        """A private 0700 directory in OUTDIR for producing ``final``; removed with its content at exit.

        Stale work directories of dead runs are removed first; a live one for the same ``final``
        makes this raise InUseError (exit 4) naming its pid.
        """
        _check_name(final)
        with self.lock():
            for name, pid in self.sweep():
                m = _TEMP.match(name)
                if m is not None and m["final"] == final:
                    raise InUseError(f"{self.path / final} is being written by another euca2kvm run (pid {pid}); "
                                     "wait for it to finish or export into another directory")
            name = temp_name(final)
            try:
                os.mkdir(name, 0o700, dir_fd=self.fd)
            except OSError as e:
                raise IOFailure(f"cannot create a work directory in {self.path}: {e.strerror}") from e
            fd = alive = -1
            try:
                fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd)
                # Held until the end: "alive" for other runs' sweeps. A file opened for writing, so
                # that NFS (which turns flock into a byte-range lock) honours it across hosts too.
                alive = os.open(ALIVE_FILE, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                                0o600, dir_fd=fd)
                fcntl.flock(alive, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                for d in (alive, fd):
                    if d >= 0:
                        os.close(d)
                with contextlib.suppress(OSError):
                    shutil.rmtree(name, dir_fd=self.fd)
                raise IOFailure(f"cannot create a work directory in {self.path}: {e.strerror}") from e
        wd = WorkDir(self, name, fd)
        try:
            yield wd
        finally:
            with contextlib.suppress(OSError):
                shutil.rmtree(name, dir_fd=self.fd)
            os.close(alive)
            os.close(fd)

    def sweep(self) -> list[tuple[str, int]]:
        """Remove temporaries of dead runs; returns (name, pid) of the live runs' work directories.

        Only names of our pattern owned by this user are considered, never through a symlink: a
        directory whose flock can be taken has lost its owner; a temporary file is only ever
        present while its writer holds the OUTDIR lock, which the caller now holds.
        """
        live: list[tuple[str, int]] = []
        with self.lock():
            try:
                names = os.listdir(self.fd)
            except OSError as e:
                raise IOFailure(f"cannot list {self.path}: {e.strerror}") from e
            for name in names:
                m = _TEMP.match(name)
                if m is None:
                    continue
                try:
                    st = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
                    if st.st_uid != os.geteuid():
                        continue
                    if stat.S_ISREG(st.st_mode):
                        os.unlink(name, dir_fd=self.fd)
                    elif stat.S_ISDIR(st.st_mode):
                        if _owner_alive(self.fd, name):
                            live.append((name, int(m["pid"])))
                        else:
                            shutil.rmtree(name, dir_fd=self.fd)
                except OSError:
                    continue  # gone meanwhile, or not ours to remove: leave it
        return live

    def publish(self, work: WorkDir, name: str, final: str, *, commit: Callable[[], None] | None = None,
                fsync: bool = False) -> Path:
        """Move ``work/name`` to ``final`` in OUTDIR, replacing an earlier export; returns the final path.

        The earlier file is first moved aside into the work directory, so neither rename replaces
        an existing file: ext4 (auto_da_alloc) flushes a file renamed over another one
        synchronously, which costs seconds for a large image.

        ``commit`` (recording the manifest entry) runs under the OUTDIR lock right after the new
        file is in place. If it fails (ENOSPC...), the new file is taken back out and the earlier
        export restored, so a file under the final name is always complete *and* recorded; only a
        crash between the rename and the manifest write can leave an unrecorded image, which the
        next run's resume check (digest mismatch) then exports again.
        """
        path = self.path / final
        prev = f"{name}.previous"
        with self.lock():
            self.check_replaceable(final)
            aside = False
            try:
                os.rename(final, prev, src_dir_fd=self.fd, dst_dir_fd=work.fd)
                aside = True
            except FileNotFoundError:
                pass
            except OSError as e:
                raise IOFailure(f"cannot move the earlier {path} aside: {e.strerror}") from e
            try:
                if aside and not stat.S_ISREG(os.stat(prev, dir_fd=work.fd, follow_symlinks=False).st_mode):
                    raise IOFailure(f"{path} was replaced by something other than a regular file; "
                                    "refusing to replace it")
                try:
                    os.rename(name, final, src_dir_fd=work.fd, dst_dir_fd=self.fd)
                except OSError as e:
                    raise IOFailure(f"cannot rename {work.path / name} to {path}: {e.strerror}") from e
                if commit is not None:
                    try:
                        commit()
                    except BaseException:
                        with contextlib.suppress(OSError):  # the new file goes with the work directory
                            os.rename(final, f"{name}.unrecorded", src_dir_fd=self.fd, dst_dir_fd=work.fd)
                        raise
            except BaseException:
                if aside:
                    with contextlib.suppress(OSError):
                        os.rename(prev, final, src_dir_fd=work.fd, dst_dir_fd=self.fd)  # put the earlier back
                raise
            if aside:
                with contextlib.suppress(OSError):
                    os.unlink(prev, dir_fd=work.fd)
            if fsync:
                _fsync_dir(self.fd)
        return path


class WorkDir:
    """A private directory inside OUTDIR (see :meth:`OutDir.work`)."""

    def __init__(self, outdir: OutDir, name: str, fd: int) -> None:
        self.outdir = outdir
        self.name = name
        self.fd = fd
        self.path = outdir.path / name

    def create(self, name: str, mode: int = 0o644) -> int:
        """A descriptor (read-write) of a new, empty file ``name`` in this directory."""
        _check_name(name)
        try:
            return os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode,
                           dir_fd=self.fd)
        except OSError as e:
            raise IOFailure(f"cannot create {self.path / name}: {e.strerror}") from e

    def file(self, name: str) -> Path:
        """The path of ``name`` in this directory, for a tool that creates the file itself."""
        _check_name(name)
        return self.path / name

    def socket_path(self, name: str, limit: int) -> str | None:
        """Where a unix socket ``name`` goes here, or None when the path is longer than ``limit`` bytes."""
        path = str(self.file(name).absolute())
        return path if len(os.fsencode(path)) <= limit else None

    def stat(self, name: str) -> os.stat_result:
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except OSError as e:
            raise IOFailure(f"cannot stat {self.path / name}: {e.strerror}") from e

    def fsync(self, name: str) -> None:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise IOFailure(f"cannot flush {self.path / name}: {e.strerror}") from e


def write_atomic(path: Path | str, data: bytes | str, mode: int = 0o644, fsync: bool = True) -> Path:
    """Replace the file ``path`` atomically without following a symlink at its name (see OutDir)."""
    path = Path(path)
    with OutDir(path.parent) as od:
        return od.write_file(path.name, data, mode=mode, fsync=fsync)


def _owner_alive(dir_fd: int, name: str) -> bool:
    """Whether the run that created work directory ``name`` still holds the lock on its ALIVE_FILE.

    A directory without one lost its owner between mkdir and the lock (both done under the
    OUTDIR lock, so only by a crash).
    """
    wd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        try:
            fd = os.open(ALIVE_FILE, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=wd)
        except FileNotFoundError:
            return False
    finally:
        os.close(wd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _flock_until(fd: int, deadline: float, where: Path) -> None:
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise InUseError(f"{where} is locked by another euca2kvm process; gave up waiting") from None
            time.sleep(LOCK_POLL)


def _fsync_dir(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError as e:
        raise IOFailure(f"cannot flush the output directory: {e.strerror}") from e
