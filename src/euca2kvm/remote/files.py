# SPDX-License-Identifier: Apache-2.0
"""Files on a remote host as :class:`euca2kvm.blocks.ByteFile`: sizes, data ranges, bytes.

* What a file is (mode, size, its data ranges) comes from one read-only Python one-liner run on
  the host (Python 2.7 and 3.6 of CentOS 7 both run it; nothing is copied there): it opens the file
  with ``O_NOFOLLOW`` (and ``O_NOATIME`` where allowed), takes the size by seeking to the end (block
  devices too) and walks ``SEEK_DATA``/``SEEK_HOLE``, so holes never cross the network. Without a
  Python on the host, the file's SFTP size is used and the whole file counts as data.
* Large reads (the movers' blocks) go through one reader channel per file (:mod:`.stream`),
  pipelined across the worker threads; small ones, and all on a host without Python, through the
  connection's SFTP session (asyncssh pipelines the requests of one read).

A file is named ``ssh://[user@]host[:port]/path`` everywhere in euca2kvm (volumes' files, extent
maps, messages, manifests); :class:`RemoteOpener` opens such names.
"""

from __future__ import annotations

import contextlib
import stat
import threading
from bisect import bisect_right
from dataclasses import dataclass
from typing import Any

import asyncssh

from ..blocks import register_opener
from ..errors import FormatError, IOFailure, UsageError
from .ssh import SCHEME, Connection, Target, connect, parse_url, python_command, q
from .stream import MAX_REQUEST, UNAVAILABLE, Stream

# Data ranges the one-liner reports at most; a file fragmented beyond that counts as all data
# (correct, only slower) rather than making the tool hold millions of ranges.
MAX_RANGES = 1_000_000
# O_NOATIME on Linux (all architectures CentOS 7 runs on); os.O_NOATIME is missing in Python 2.
O_NOATIME = 0o1000000

# SFTP read request size when the server states no limit (OpenSSH before 8.5, as CentOS 7's 7.4, has
# no limits@openssh.com): asyncssh then falls back to 16 KiB requests, which halves throughput; every
# OpenSSH sftp-server answers 64 KiB reads in full (a shorter answer would only cost a re-request).
FALLBACK_READ_LEN = 64 * 1024
SAFE_READ_LEN = 16 * 1024  # asyncssh's assumption without the extension
# Reads at least this long go through the file's reader channel (:mod:`.stream`; the movers' 4 MiB
# blocks); shorter ones (metadata, superblocks) through SFTP, which has no channel to start.
STREAM_MIN = 1 << 20
# Paths probed by one remote command (one round trip, bounded well under the host's ARG_MAX).
PROBE_BATCH = 512

# For each path: "P" then "S mode size", a "D start end" per data range, and "E" (end), "X" (too many
# ranges) or "U" (the file system cannot tell); or "P" then "F errno" (ELOOP: a symlink).
_PROBE = r"""
import os,sys,errno
M=int(sys.argv[1]);w=sys.stdout.write;fl=os.O_RDONLY|getattr(os,'O_NOFOLLOW',0o400000)
def probe(p):
  try:
    try:fd=os.open(p,fl|%d)
    except OSError:fd=os.open(p,fl)
  except OSError as e:
    w('F %%d\n'%%e.errno);return
  try:
    st=os.fstat(fd);n=os.lseek(fd,0,2);w('S %%d %%d\n'%%(st.st_mode,n))
    if st.st_mode&0o170000!=0o100000:w('U\n');return
    o=0;k=0;r='E'
    while o<n:
      if k>=M:r='X';break
      try:a=os.lseek(fd,o,3)
      except OSError as e:
        if e.errno!=errno.ENXIO:r='U'
        break
      b=os.lseek(fd,a,4);w('D %%d %%d\n'%%(a,b));o=b;k+=1
    w(r+'\n')
  finally:os.close(fd)
for p in sys.argv[2:]:
  w('P\n');probe(p)
""".strip() % O_NOATIME


def _probe_command(paths: list[str]) -> str:
    return python_command(_PROBE, [str(MAX_RANGES), *paths], "echo NOPYTHON")


# For each path: "S size mtime_ns ctime_ns ino" of its lstat, or "F errno". Python 2 has no st_*_ns:
# its float times (microseconds) are scaled; the same file gives the same numbers every time.
_STAMP = r"""
import os,sys
w=sys.stdout.write
def ns(s,a):
  v=getattr(s,'st_'+a+'_ns',None)
  return v if v is not None else int(round(getattr(s,'st_'+a)*1e6))*1000
for p in sys.argv[1:]:
  try:s=os.lstat(p)
  except OSError as e:w('F %d\n'%e.errno);continue
  w('S %d %d %d %d\n'%(s.st_size,ns(s,'mtime'),ns(s,'ctime'),s.st_ino))
""".strip()
# Without a Python on the host: GNU stat (CentOS 7's coreutils), whole seconds.
_STAT_FALLBACK = ("for p in {paths}; do stat -c 'S %s %Y000000000 %Z000000000 %i' -- \"$p\" 2>/dev/null"
                  " || echo 'F 2'; done")


def _stamp_command(paths: list[str]) -> str:
    quoted = " ".join(q(p) for p in paths)
    return python_command(_STAMP, paths, _STAT_FALLBACK.format(paths=quoted))


def stamp_many(conn: Connection, paths: list[str]) -> list[dict[str, Any]]:
    """Size, mtime, ctime and inode of each remote path (lstat), as ``export.pipeline.fingerprint``
    records local files, named by URL; one round trip per :data:`PROBE_BATCH` paths. A file that
    cannot be stat'ed is IOFailure naming it."""
    out: list[dict[str, Any]] = []
    for i in range(0, len(paths), PROBE_BATCH):
        batch = paths[i:i + PROBE_BATCH]
        _, raw = conn.run(_stamp_command(batch))
        lines = raw.decode("ascii", "replace").splitlines()
        if len(lines) != len(batch):
            raise FormatError("unexpected answer from the host's file stamp", conn.name)
        for p, ln in zip(batch, lines, strict=True):
            url = conn.target.url(p)
            parts = ln.split()
            if parts[:1] == ["F"]:
                raise IOFailure(f"cannot stat {url}: errno {ln[2:10]} (changed while exporting?)")
            try:
                if parts[0] != "S" or len(parts) != 5:
                    raise ValueError(ln)
                size, mtime, ctime, ino = (int(x) for x in parts[1:])
            except (ValueError, IndexError) as e:
                raise FormatError(f"unexpected answer from the host's file stamp: {ln[:80]!r}", url) from e
            out.append({"path": url, "size": size, "mtime_ns": mtime, "ctime_ns": ctime, "ino": ino})
    return out


@dataclass(frozen=True)
class Probe:
    mode: int
    size: int
    ranges: list[tuple[int, int]] | None  # None: the host cannot tell, all data


# The answer for every file of a host without a Python: sizes from SFTP, all data.
NO_PYTHON = Probe(-1, -1, None)


def _parse(name: str, lines: list[str]) -> Probe:
    if lines and lines[0].startswith("F "):
        code = lines[0][2:].strip()
        if code == "40":  # ELOOP
            raise UsageError(f"{name} is a symbolic link; name the file itself")
        raise IOFailure(f"cannot open {name} read-only (errno {code[:8]})")
    try:
        tag, mode, size = lines[0].split()
        if tag != "S" or lines[-1] not in ("E", "X", "U"):
            raise ValueError(lines[-1])
        ranges: list[tuple[int, int]] = []
        last = 0
        for ln in lines[1:-1]:
            t, a, b = ln.split()
            s, e = int(a), int(b)
            if t != "D" or not last <= s < e:
                raise ValueError(ln)
            ranges.append((s, min(e, int(size))))
            last = e
        return Probe(int(mode), int(size), ranges if lines[-1] == "E" else None)
    except (ValueError, IndexError) as e:
        raise FormatError(f"unexpected answer from the host's file probe: {str(e)[:80]!r}", name) from e


def probe_many(conn: Connection, paths: list[str]) -> dict[str, Probe | Exception]:
    """Each file's mode, size and data ranges (or why not; :data:`NO_PYTHON` without a Python)."""
    out: dict[str, Probe | Exception] = {}
    for i in range(0, len(paths), PROBE_BATCH):
        batch = paths[i:i + PROBE_BATCH]
        _, raw = conn.run(_probe_command(batch))
        lines = raw.decode("ascii", "replace").splitlines()
        if lines == ["NOPYTHON"]:
            return dict.fromkeys(paths, NO_PYTHON)
        groups: list[list[str]] = []
        for ln in lines:
            if ln == "P":
                groups.append([])
            elif groups:
                groups[-1].append(ln)
        if len(groups) != len(batch):
            raise FormatError("unexpected answer from the host's file probe", conn.name)
        for p, g in zip(batch, groups, strict=True):
            try:
                out[p] = _parse(conn.target.url(p), g)
            except (UsageError, IOFailure, FormatError) as e:
                out[p] = e
    return out


def probe(conn: Connection, path: str) -> Probe:
    """One file's mode, size and data ranges (:data:`NO_PYTHON` without a Python)."""
    r = probe_many(conn, [path])[path]
    if isinstance(r, Exception):
        raise r
    return r


class RemoteFile:
    """One remote regular file or block device, read-only (a :class:`~euca2kvm.blocks.ByteFile`)."""

    def __init__(self, conn: Connection, path: str, probed: Probe | Exception | None = None) -> None:
        """``probed``: the file's :func:`probe_many` answer when the caller probed many files at once."""
        self.conn = conn
        self.remote_path = path
        self.path = conn.target.url(path)
        self.bytes_read = 0  # bytes that crossed the network, for tests and progress
        self._count_lock = threading.Lock()
        self._stream_lock = threading.Lock()
        self._stream: Stream | str | None = None  # the reader channel, UNAVAILABLE, or not started
        attrs = conn.call(conn.sftp().lstat(path), f"cannot stat {path}")
        mode = attrs.permissions or 0
        if stat.S_ISLNK(mode):
            raise UsageError(f"{self.path} is a symbolic link; name the file itself")
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            raise FormatError("not a regular file or block device", self.path)
        if isinstance(probed, Exception):
            raise probed
        self._mode = mode
        self._sftp_size = int(attrs.size or 0)
        self._probe: Probe | None = None
        if probed is not None:
            self._set_probe(probed)
        sftp = conn.sftp()
        block = sftp.limits.max_read_len if sftp.limits.max_read_len > SAFE_READ_LEN else FALLBACK_READ_LEN
        self._file: asyncssh.SFTPClientFile = conn.call(sftp.open(path, "rb", block_size=block),
                                                        f"cannot open {path}")

    def _set_probe(self, p: Probe) -> None:
        if p is NO_PYTHON and stat.S_ISBLK(self._mode):
            raise UsageError(f"{self.path}: reading a block device needs a Python on the host (for its size)")
        self._probe = p
        self._starts = [a for a, _ in p.ranges] if p.ranges is not None else []

    def probed(self) -> Probe:
        """The host's answer about this file, asked on first need (a reader of a few metadata blocks
        never asks)."""
        if self._probe is None:
            self._set_probe(probe(self.conn, self.remote_path))
        assert self._probe is not None
        return self._probe

    @property
    def size_probed(self) -> int:
        p = self.probed()
        return self._sftp_size if p is NO_PYTHON else p.size

    def size(self) -> int:
        if stat.S_ISBLK(self._mode):
            return probe(self.conn, self.remote_path).size
        attrs = self.conn.call(self.conn.sftp().lstat(self.remote_path), f"cannot stat {self.remote_path}")
        return int(attrs.size or 0)

    def _streamer(self) -> Stream | None:
        with self._stream_lock:
            if self._stream is None:
                st = Stream(self.conn, self.remote_path, self.path)
                self._stream = UNAVAILABLE if st.start() == UNAVAILABLE else st
            return self._stream if isinstance(self._stream, Stream) else None

    def pread_into(self, offset: int, view: memoryview) -> int:
        n = len(view)
        if n == 0:
            return 0
        what = f"read of {n} bytes at {offset} in {self.remote_path}"
        st = self._streamer() if STREAM_MIN <= n <= MAX_REQUEST else None
        if st is not None:
            got = st.read_into(offset, view)
            with self._count_lock:
                self.bytes_read += got
            return got
        data: bytes | str = self.conn.call(self._file.read(n, offset), what)
        if not isinstance(data, bytes):
            raise IOFailure(f"{self.path}: the SFTP read returned text")
        got = len(data)
        if got > n:
            raise IOFailure(f"{self.path}: the server sent {got} bytes for a read of {n}")
        view[:got] = data
        with self._count_lock:
            self.bytes_read += got
        return got

    def read(self, offset: int, length: int) -> bytes:
        """Exactly ``length`` bytes at ``offset``, fewer only at the end of the file (for Device readers)."""
        buf = bytearray(length)
        view = memoryview(buf)
        got = 0
        while got < length:
            k = self.pread_into(offset + got, view[got:])
            if k == 0:
                break
            got += k
        return bytes(buf[:got])

    def data_ranges(self, lo: int, hi: int) -> list[tuple[int, int]]:
        ranges = self.probed().ranges
        if ranges is None:
            return [(lo, hi)] if lo < hi else []
        out: list[tuple[int, int]] = []
        i = max(0, bisect_right(self._starts, lo) - 1)
        for a, b in ranges[i:]:
            if a >= hi:
                break
            s, e = max(a, lo), min(b, hi)
            if s < e:
                out.append((s, e))
        if hi > self.size_probed and lo < hi:  # past the probed end: the file grew; let the reader find out
            s = max(lo, self.size_probed)
            if out and out[-1][1] == s:
                out[-1] = (out[-1][0], hi)
            else:
                out.append((s, hi))
        return out

    def close(self) -> None:
        if isinstance(self._stream, Stream):
            self._stream.close()
        with contextlib.suppress(IOFailure):
            self.conn.call(self._file.close(), "close", timeout=10)


class RemoteOpener:
    """A :class:`~euca2kvm.blocks.FileOpener` for ``ssh://`` names (one connection per host)."""

    def __call__(self, path: str) -> RemoteFile:
        return open_url(path)

    def stamp(self, urls: list[str]) -> list[dict[str, Any]]:
        """:func:`stamp_many` of ``urls`` (any hosts; one round trip per host), in their order."""
        by_host: dict[tuple[str | None, str, int], list[str]] = {}
        for u in urls:
            t = parse_url(u)
            by_host.setdefault((t.user, t.host, t.port), []).append(t.path)
        found: dict[str, dict[str, Any]] = {}
        for (user, host, port), paths in by_host.items():
            for st in stamp_many(connect(Target(user, host, port, "/")), paths):
                found[st["path"]] = st
        return [{**found[parse_url(u).url()], "path": u} for u in urls]


def open_url(url: str) -> RemoteFile:
    t: Target = parse_url(url)
    return RemoteFile(connect(t), t.path)


register_opener(SCHEME, RemoteOpener())
