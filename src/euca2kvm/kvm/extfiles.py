# SPDX-License-Identifier: Apache-2.0
"""List directories and print small files of an ext2/3/4 filesystem with e2fsprogs' ``debugfs``, read-only.

``debugfs -c`` (catastrophic mode: opened read-only, bitmaps not read) is given the host file that
holds the filesystem as ``/dev/fd/N?offset=BYTES``: ``N`` is a read-only descriptor euca2kvm opened
and passes to the child, ``offset`` an e2fsprogs unix I/O option, so nothing is copied, attached or
written and no host path is re-resolved. Requests are fixed strings built from names of a plain
form (the caller's job, see ``guestfiles.SAFE_NAME``); ``ls -p`` and ``cat`` do not follow a final
symlink, and a symlink met inside a path resolves within the guest filesystem, never on the host.
Every run has a timeout, a bound on its output, and dies with euca2kvm.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from .. import procs
from ..errors import ToolError
from .imagefile import clean_text

# Entries of one directory considered (a /usr/bin has a few thousand).
MAX_ENTRIES = 20_000
# debugfs output of one ``ls -p`` (about 50 bytes an entry) or one ``cat``.
MAX_OUTPUT = 4 << 20
# One debugfs request reads a few blocks; seconds only pass on a hung disk.
DEBUGFS_TIMEOUT = 30.0
# Commands given to one debugfs run: less than a pipe buffer (64 KiB), so writing them never blocks.
MAX_STDIN = 60_000
# Output of one batch of ``cat``s: the files' sizes add up to at most this, plus the echoed commands.
MAX_CAT_BATCH = MAX_OUTPUT - (64 << 10)
# What stays of a tool's stderr for a message.
STDERR_TAIL = 2048

Entries = dict[str, tuple[str, int]]  # name -> (kind: file/dir/symlink/other, size)


def _run(argv: list[str], pass_fds: tuple[int, ...], what: str, stdin: bytes) -> tuple[bytes, str]:
    """(stdout, stderr tail) of a read-only tool run fed ``stdin``, bounded in time and output.

    Its exit status is not judged: debugfs exits 0 after a failed request, the output shows it.
    """
    if len(stdin) > MAX_STDIN:
        raise AssertionError(f"{len(stdin)} bytes of commands exceed {MAX_STDIN}")
    res = procs.run(argv, timeout=DEBUGFS_TIMEOUT, stdin=stdin, ok=None, max_stdout=MAX_OUTPUT,
                    pass_fds=pass_fds, what=f"{what}: {argv[0]}", hint="install e2fsprogs")
    return res.stdout, clean_text(res.stderr[-STDERR_TAIL:], STDERR_TAIL)


_LS_LINE = re.compile(rb"^/(\d+)/([0-7]+)/\d+/\d+/(.*)/(\d*)/$")
_S_IFMT, _S_IFDIR, _S_IFREG, _S_IFLNK = 0o170000, 0o040000, 0o100000, 0o120000


def mode_kind(mode: int) -> str:
    fmt = mode & _S_IFMT
    return {_S_IFDIR: "dir", _S_IFREG: "file", _S_IFLNK: "symlink"}.get(fmt, "other")


class DebugfsView:
    """An ext2/3/4 filesystem at ``offset`` of the host file open as ``fd``, through ``debugfs -c``.

    Requests go in batches on debugfs' standard input (``-f -``); debugfs echoes each one as
    ``debugfs: REQUEST`` before its output, which is where the output is cut. A listing line always
    starts with ``/``; a ``cat`` prints exactly the file's size. Output that does not fit that shape
    (a request that failed) makes the batch's requests run one by one instead.
    """

    def __init__(self, fd: int, offset: int, name: str) -> None:
        self.fd = fd
        self.spec = f"/dev/fd/{fd}?offset={offset}"
        self.name = name
        self._listings: dict[str, Entries | None] = {}

    def _batch(self, requests: list[str]) -> tuple[bytes, str]:
        return _run(["debugfs", "-c", "-f", "-", self.spec], (self.fd,), f"{self.name}: debugfs",
                    "".join(f"{r}\n" for r in requests).encode())

    @staticmethod
    def _echo(request: str) -> bytes:
        return f"debugfs: {request}\n".encode()

    def _listing(self, out: bytes) -> Entries:
        found: Entries = {}
        for line in out.split(b"\n", MAX_ENTRIES)[:MAX_ENTRIES]:
            m = _LS_LINE.match(line)
            if m:
                found[m.group(3).decode("utf-8", "replace")] = (mode_kind(int(m.group(2), 8)), int(m.group(4) or 0))
        return found

    def prefetch(self, paths: list[str]) -> None:
        todo = [p for p in dict.fromkeys(paths) if p not in self._listings]
        if not todo:
            return
        requests = [f"ls -p {p}" for p in todo]
        out, err = self._batch(requests)
        pos = 0
        for i, (path, req) in enumerate(zip(todo, requests, strict=True)):
            if not out.startswith(self._echo(req), pos):
                raise ToolError(f"{self.name}: debugfs output does not follow its requests: {err[-300:]}")
            start = pos + len(self._echo(req))
            nxt = out.find(b"\n" + self._echo(requests[i + 1]), start - 1) + 1 if i + 1 < len(todo) else len(out)
            if nxt <= 0:
                raise ToolError(f"{self.name}: debugfs output does not follow its requests: {err[-300:]}")
            body = out[start:nxt]
            self._listings[path] = self._listing(body) if body.startswith(b"/") else None
            pos = nxt
        if self._listings.get("/") is None and "/" in todo:
            raise ToolError(f"{self.name}: debugfs cannot open the filesystem: {err[-300:]}")

    def entries(self, path: str, want: Callable[[str], bool]) -> Entries | None:
        self.prefetch([path])
        listing = self._listings[path]
        return None if listing is None else {n: e for n, e in listing.items() if want(n)}

    def read_many(self, files: list[tuple[str, int]]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        batch: list[tuple[str, int]] = []
        for i, (path, size) in enumerate(files):
            batch.append((path, size))
            if i + 1 == len(files) or sum(s for _, s in batch) + files[i + 1][1] > MAX_CAT_BATCH:
                out.update(self._cat(batch))
                batch = []
        return out

    def _cat(self, files: list[tuple[str, int]]) -> dict[str, bytes]:
        out, err = self._batch([f"cat {p}" for p, _ in files])
        got, pos = {}, 0
        for path, size in files:
            echo = self._echo(f"cat {path}")
            if not out.startswith(echo, pos):
                break
            got[path] = out[pos + len(echo) : pos + len(echo) + size]
            pos += len(echo) + size
        if pos == len(out) and len(got) == len(files):
            return got
        if len(files) == 1:
            return {}  # this one failed (debugfs said why on stderr); the caller notes it as not read
        return {k: v for one in files for k, v in self._cat([one]).items()}  # find the one that failed
