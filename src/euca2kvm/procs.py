# SPDX-License-Identifier: Apache-2.0
"""Every external process euca2kvm starts goes through this module.

Two shapes:

* :func:`run` — a command that finishes (qemu-img, debugfs, tgtadm, sfdisk...): bounded in total
  time and/or in time without output, bounded in stdout size, fed ``stdin`` without deadlock,
  failures raised as the project's typed errors (:class:`ToolError`, :class:`IOFailure` when the
  tool's stderr names an I/O errno, :class:`Interrupted` when a Ctrl-C reached it);
* :class:`Service` — a long-running child (qemu-nbd, qemu-system) owned by a ``with`` block: a
  readiness wait with a timeout, its stderr kept for messages, and a stop that always reaps it
  (SIGTERM, then SIGKILL after a bound, sent to its own pid only).

External processes must not outlive euca2kvm. A long ``qemu-img convert`` left running after
euca2kvm was killed would keep reading (and holding) the source and writing a partial file. The
kernel can kill a child when its parent dies (PR_SET_PDEATHSIG); ``setpriv`` from util-linux sets
it and then execs the command, which keeps it across exec. Where ``setpriv`` is missing the
command runs as is. Both shapes wrap every argv with :func:`die_with_parent`, and both kill the
child when the caller's code raises (a progress callback cancelling, Ctrl-C, a bug).
"""

from __future__ import annotations

import functools
import os
import re
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, TypeVar

from .errors import Interrupted, IOFailure, ToolError
from .safefs import open_new_or_truncate, open_regular

# How much of a tool's stderr is kept for messages: the last lines carry its reason.
STDERR_TAIL = 4096
# Default bound on what a command may print on stdout: JSON of a qemu-img map of a heavily
# fragmented TiB image is a few MiB; anything near this is not the tool we meant to run.
MAX_STDOUT = 64 << 20
# Size of one read from a child's pipe (the pipe buffer's size on Linux).
PIPE_CHUNK = 65536
# After both pipes closed, a tool that has not exited yet gets this long before SIGKILL (it is
# exiting; a second covers a loaded 2-core host).
EXIT_GRACE = 1.0
# A Service gets this long after SIGTERM to flush and exit before SIGKILL (qemu-nbd and QEMU exit
# within well under a second).
STOP_GRACE = 3.0
# Polling period of Service.wait_ready (a socket or file appearing).
READY_POLL = 0.05
# Tools run in the C locale: the errno texts below and every output parser depend on untranslated text.
C_LOCALE = {"LC_ALL": "C"}
# strerror() of ENOSPC, EDQUOT, EFBIG and EIO as worded in the C locale: a tool failing with one of
# these failed on I/O (exit 5, like euca2kvm's own writers), not as a tool.
IO_ERRNO = re.compile(r"No space left on device|Disk quota exceeded|File too large|Input/output error")

OutputCallback = Callable[[bytes], None]
T = TypeVar("T")


@functools.lru_cache(maxsize=1)
def _setpriv() -> str | None:
    return shutil.which("setpriv")


def die_with_parent(argv: Sequence[str]) -> list[str]:
    """``argv`` wrapped so the process gets SIGKILL when its parent process dies."""
    sp = _setpriv()
    if sp is None or shutil.which(argv[0]) is None:
        return list(argv)  # a missing program must still fail as OSError at Popen, with its own name
    return [sp, "--pdeathsig", "KILL", "--", *argv]


def _cannot_run(argv: Sequence[str], e: OSError, hint: str) -> ToolError:
    return ToolError(f"cannot run {argv[0]}: {e.strerror}" + (f" ({hint})" if hint else ""))


def _decode_tail(data: bytes | bytearray, limit: int = STDERR_TAIL) -> str:
    return bytes(data[-limit:]).decode("utf-8", "replace").strip()


@dataclass(frozen=True)
class Result:
    """A finished command: exit status (negative: killed by that signal), stdout, stderr's tail."""

    argv: tuple[str, ...]
    status: int
    stdout: bytes
    stderr: str
    what: str

    def failure(self, prefix: str = "") -> ToolError | IOFailure:
        """The typed error for this status: IOFailure when stderr names an I/O errno, else ToolError."""
        msg = f"{prefix}{self.what} failed with exit status {self.status}: {self.stderr or '(no message)'}"
        return IOFailure(msg) if IO_ERRNO.search(self.stderr) else ToolError(msg)


def run(argv: Sequence[str], *, timeout: float | None, stall_timeout: float | None = None,
        stdin: bytes | None = None, ok: Sequence[int] | None = (0,), max_stdout: int = MAX_STDOUT,
        env: Mapping[str, str] | None = None, cwd: str | os.PathLike[str] | None = None,
        pass_fds: Sequence[int] = (), on_output: OutputCallback | None = None,
        what: str | None = None, hint: str = "") -> Result:
    """Run ``argv`` to completion and return its :class:`Result`.

    ``timeout`` bounds the whole run and ``stall_timeout`` the time between two writes to stdout
    (progress lines); at least one must be given. On expiry, or when stdout exceeds ``max_stdout``,
    the child is killed and :class:`ToolError` raised. ``ok`` lists the accepted exit statuses
    (``None``: any; the caller reads ``status``); another raises :func:`Result.failure`. A child
    killed by SIGINT (a Ctrl-C reached its process group) raises :class:`Interrupted`.
    ``on_output`` sees every stdout chunk as it arrives. ``env`` is added to the environment, over
    the C locale. ``what`` names the command in messages (default: the program and its first
    argument), ``hint`` says how to get a missing program.
    """
    if timeout is None and stall_timeout is None:
        raise AssertionError("an external command needs a timeout or a stall timeout")
    argv = [str(a) for a in argv]
    what = what or " ".join(argv[:2])
    try:
        proc = subprocess.Popen(die_with_parent(argv), stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, close_fds=True,
                                pass_fds=tuple(pass_fds), cwd=cwd, env={**os.environ, **C_LOCALE, **(env or {})})
    except OSError as e:
        raise _cannot_run(argv, e, hint) from e
    out, err = bytearray(), bytearray()
    pending = memoryview(stdin or b"")
    start = last = time.monotonic()
    expired = ""
    with proc, selectors.DefaultSelector() as sel:
        try:
            assert proc.stdout is not None and proc.stderr is not None
            sel.register(proc.stdout, selectors.EVENT_READ, out)
            sel.register(proc.stderr, selectors.EVENT_READ, err)
            if proc.stdin is not None:
                os.set_blocking(proc.stdin.fileno(), False)
                if pending:
                    sel.register(proc.stdin, selectors.EVENT_WRITE)
                else:
                    proc.stdin.close()
            while len(sel.get_map()) and not expired:
                now = time.monotonic()
                due: tuple[float, str] | None = None
                if timeout is not None:
                    due = (start + timeout, f"timed out after {timeout:g} s")
                if stall_timeout is not None and (due is None or last + stall_timeout < due[0]):
                    due = (last + stall_timeout, f"made no progress for {stall_timeout:g} s")
                if due is not None and due[0] <= now:
                    expired = due[1]
                    break
                for key, _ in sel.select(None if due is None else due[0] - now):
                    if key.fileobj is proc.stdin:
                        try:
                            pending = pending[os.write(key.fd, pending[:PIPE_CHUNK]):]
                        except BlockingIOError:
                            continue  # the pipe filled up between select and write
                        except BrokenPipeError:
                            pending = pending[:0]  # the tool exited early; its stderr says why
                        if not pending:
                            sel.unregister(key.fileobj)
                            proc.stdin.close()
                        continue
                    chunk = os.read(key.fd, PIPE_CHUNK)
                    if not chunk:
                        sel.unregister(key.fileobj)
                        continue
                    buf: bytearray = key.data
                    buf += chunk
                    if buf is err:
                        del err[:-STDERR_TAIL]
                        continue
                    last = time.monotonic()
                    if on_output is not None:
                        on_output(chunk)
                    if len(out) > max_stdout:
                        expired = f"wrote more than {max_stdout} bytes to stdout"
            if expired:
                proc.kill()
            try:
                rc = proc.wait(EXIT_GRACE)
            except subprocess.TimeoutExpired:
                proc.kill()  # closed its output but did not exit
                rc = proc.wait()
        except BaseException:
            proc.kill()  # the caller's code raised (a cancelling callback, Ctrl-C): the tool must not go on
            raise
    tail = _decode_tail(err)
    if expired:
        raise ToolError(f"{what} {expired}: {tail}".rstrip(": "))
    if rc == -signal.SIGINT:  # Ctrl-C reached the tool too (one process group): the user's interrupt
        raise Interrupted("interrupted")
    result = Result(tuple(argv), rc, bytes(out), tail, what)
    if ok is not None and rc not in ok:
        raise result.failure()
    return result


class Service:
    """A long-running child owned by a ``with`` block (or :meth:`start` / :meth:`stop`).

    stdin is /dev/null. With ``log_path`` its stdout and stderr go to that file (created or
    truncated, never through a symlink); without, stdout goes to /dev/null and stderr to a private
    anonymous file. :meth:`tail` returns the end of either. ``new_session`` puts the child in its
    own session, so a Ctrl-C in the terminal reaches euca2kvm first and euca2kvm stops the child
    in order. Leaving the block always stops and reaps it.
    """

    def __init__(self, argv: Sequence[str], *, log_path: str | Path | None = None,
                 cwd: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None,
                 new_session: bool = False, stop_grace: float = STOP_GRACE, what: str | None = None,
                 hint: str = "") -> None:
        self.argv = [str(a) for a in argv]
        self.what = what or os.path.basename(self.argv[0])
        self.log_path = log_path
        self._cwd = cwd
        self._env = env
        self._new_session = new_session
        self._stop_grace = stop_grace
        self._hint = hint
        self._err: IO[bytes] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        if self.log_path is not None:
            out: IO[bytes] | int = os.fdopen(open_new_or_truncate(self.log_path), "wb")
        else:
            self._err = tempfile.TemporaryFile(prefix="euca2kvm-stderr-")  # noqa: SIM115 (closed in __exit__)
            out = subprocess.DEVNULL
        try:
            self._proc = subprocess.Popen(
                die_with_parent(self.argv), stdin=subprocess.DEVNULL, stdout=out,
                stderr=self._err if self._err is not None else out, close_fds=True, cwd=self._cwd,
                start_new_session=self._new_session, env=None if self._env is None else {**os.environ, **self._env})
        except OSError as e:
            self._close_err()
            raise _cannot_run(self.argv, e, self._hint) from e
        finally:
            if not isinstance(out, int):
                out.close()  # the child has its own descriptor; the log is read back by name
        return self

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
        self._close_err()

    @property
    def pid(self) -> int:
        return self._proc.pid if self._proc is not None else -1

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def wait(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` seconds; the exit status, or None if still running."""
        if self._proc is None:
            return None
        try:
            return self._proc.wait(timeout=max(0.0, timeout))
        except subprocess.TimeoutExpired:
            return None

    def wait_ready(self, ready: Callable[[], T | None], timeout: float, *, what: str = "become ready",
                   poll: float = READY_POLL) -> T:
        """Call ``ready()`` until it returns something other than None; ToolError if the child exits
        first or ``timeout`` seconds pass (the message carries the child's stderr tail)."""
        deadline = time.monotonic() + timeout
        while True:
            rc = self.returncode
            if rc is not None or self._proc is None:
                raise ToolError(f"{self.what} exited with status {rc}: {self.tail() or '(no message)'}")
            got = ready()
            if got is not None:
                return got
            if time.monotonic() > deadline:
                raise ToolError(f"{self.what} did not {what} within {timeout:g} s: {self.tail()}".rstrip(": "))
            time.sleep(poll)

    def tail(self, limit: int = STDERR_TAIL) -> str:
        """The last ``limit`` bytes the child wrote to stderr (and to stdout, with a ``log_path``)."""
        try:
            if self.log_path is not None:
                fd = open_regular(self.log_path, os.O_RDONLY)
                try:
                    return _read_tail(fd, limit)
                finally:
                    os.close(fd)
            if self._err is not None and not self._err.closed:
                return _read_tail(self._err.fileno(), limit)
        except (OSError, IOFailure):
            pass  # no log (yet, or any more): nothing to tell
        return ""

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after ``stop_grace`` seconds; always reaps. The exit status."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=self._stop_grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def _close_err(self) -> None:
        if self._err is not None:
            self._err.close()


def _read_tail(fd: int, limit: int) -> str:
    size = os.fstat(fd).st_size
    return _decode_tail(os.pread(fd, limit, max(0, size - limit)), limit)
