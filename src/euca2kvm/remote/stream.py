# SPDX-License-Identifier: Apache-2.0
"""Large reads of one remote file through one exec channel: a read-only Python one-liner on the host
(2.7 or 3) opens the file (``O_NOFOLLOW``, ``O_NOATIME`` where allowed) and answers ``offset length``
requests, one line each on its stdin, with a 9-byte header (``D`` + the byte count, or ``E`` + an
errno) and the bytes. Requests are pipelined: every worker thread's request is written at once, the
answers come back in request order, so the host reads the next block while this side takes the last.

Why not SFTP for the bulk: asyncssh pays per SSH packet and per SFTP request; 4 MiB answers in
256 KiB packets cost about half the client CPU per byte of 64 KiB SFTP reads in 32 KiB packets,
which held SFTP at 0.74x of ``ssh cat`` (bench/bench_ssh.py). Why not a ``dd`` per read: opening a
channel and starting a process costs a login shell's start-up (0.7 s on the loaded test machine),
every read. A host without Python gets :data:`UNAVAILABLE` and the caller keeps SFTP.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import struct

import asyncssh

from ..errors import IOFailure
from .ssh import READ_TIMEOUT, WINDOW_SIZE, Connection, python_command

# Largest SSH packet asked for: OpenSSH's sshd sends up to what the client states, asyncssh's cost is
# per packet (256 KiB: half the client CPU per byte of 32 KiB, measured with bench/bench_ssh.py).
STREAM_PKTSIZE = 256 << 10
# Largest request: the movers' 4 MiB blocks, and a bound on what a hostile host can make us buffer.
MAX_REQUEST = 16 << 20
O_NOATIME = 0o1000000  # as in .files
HEADER = struct.Struct(">cQ")

_SERVER = r"""
import os,sys,struct
fl=os.O_RDONLY|getattr(os,'O_NOFOLLOW',0o400000)
i=getattr(sys.stdin,'buffer',sys.stdin);o=getattr(sys.stdout,'buffer',sys.stdout);H=struct.Struct('>cQ')
M=int(sys.argv[2])
try:
  try:fd=os.open(sys.argv[1],fl|%d)
  except OSError:fd=os.open(sys.argv[1],fl)
except OSError as e:
  o.write(H.pack(b'F',e.errno));o.flush();sys.exit(0)
o.write(H.pack(b'R',0));o.flush()
while 1:
  l=i.readline()
  if not l:break
  a,n=[int(x) for x in l.split()]
  if a<0 or not 0<n<=M:break
  b=[];g=0
  try:
    os.lseek(fd,a,0)
    while g<n:
      c=os.read(fd,n-g)
      if not c:break
      b.append(c);g+=len(c)
    o.write(H.pack(b'D',g));o.write(b''.join(b))
  except OSError as e:
    o.write(H.pack(b'E',e.errno))
  o.flush()
""".strip() % O_NOATIME

# Answer of a host that cannot stream (no Python): SFTP it is.
UNAVAILABLE = "unavailable"


class Stream:
    """One remote file's reader channel; :meth:`read_into` may be called from many threads."""

    def __init__(self, conn: Connection, path: str, name: str) -> None:
        self.conn, self.path, self.name = conn, path, name
        self._proc: asyncssh.SSHClientProcess[bytes] | None = None
        self._pending: collections.deque[tuple[int, int, memoryview, asyncio.Future[int]]] = collections.deque()
        self._pump: asyncio.Task[None] | None = None
        self._broken: BaseException | None = None
        self._holds = False  # one of the connection's reader slots

    def start(self) -> str | None:
        """Open the channel; :data:`UNAVAILABLE` when the host has no Python, the connection has
        :data:`~.ssh.MAX_READERS` open or the server refuses another channel. IOFailure when the file
        cannot be opened (ELOOP: a symlink)."""
        if not self.conn.readers.acquire(blocking=False):
            return UNAVAILABLE
        self._holds = True
        try:
            return self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> str | None:
        async def go() -> bytes:
            cmd = python_command(_SERVER, [self.path, str(MAX_REQUEST)], "exit 0")
            try:
                self._proc = await self.conn.conn.create_process(cmd, encoding=None, window=WINDOW_SIZE,
                                                                 max_pktsize=STREAM_PKTSIZE,
                                                                 stderr=asyncssh.DEVNULL)
            except asyncssh.ChannelOpenError:  # MaxSessions reached: this file reads over SFTP
                return b""
            try:
                return await self._proc.stdout.readexactly(HEADER.size)
            except asyncio.IncompleteReadError as e:
                return e.partial

        hello = self.conn.call(go(), f"cannot start a reader of {self.path}")
        if len(hello) < HEADER.size:
            self.close()
            return UNAVAILABLE
        tag, code = HEADER.unpack(hello)
        if tag != b"R":
            self.close()
            raise IOFailure(f"cannot open {self.name} read-only (errno {code})")
        self._pump = self.conn.call(self._start_pump(), "reader")
        return None

    async def _start_pump(self) -> asyncio.Task[None]:
        return asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        assert self._proc is not None
        out = self._proc.stdout
        try:
            while True:
                header = await out.readexactly(HEADER.size)
                if not self._pending:
                    raise IOFailure(f"{self.name}: the host's reader sent an unasked answer")
                offset, n, view, fut = self._pending.popleft()
                tag, got = HEADER.unpack(header)
                if tag == b"E":
                    if not fut.done():
                        fut.set_exception(IOFailure(f"{self.name}: read of {n} bytes at {offset} failed on the "
                                                    f"host (errno {got})"))
                    continue
                if tag != b"D" or got > n:
                    raise IOFailure(f"{self.name}: the host's reader answered {got} bytes for a read of {n} at "
                                    f"{offset}")
                pos = 0
                while pos < got:  # straight into the caller's buffer, packet by packet
                    chunk = await out.read(got - pos)
                    if not chunk:
                        raise asyncio.IncompleteReadError(b"", got - pos)
                    if not fut.done():  # a timed-out caller no longer owns its buffer
                        view[pos:pos + len(chunk)] = chunk
                    pos += len(chunk)
                if not fut.done():
                    fut.set_result(got)
        except (asyncio.IncompleteReadError, OSError, asyncssh.Error, IOFailure) as e:
            err = e if isinstance(e, IOFailure) else IOFailure(f"{self.name}: the host's reader ended")
            self._broken = err
            while self._pending:
                fut = self._pending.popleft()[3]
                if not fut.done():
                    fut.set_exception(err)

    def read_into(self, offset: int, view: memoryview) -> int:
        """Up to ``len(view)`` (<= :data:`MAX_REQUEST`) bytes at ``offset``; fewer only at the end."""
        n = len(view)

        async def go() -> int:
            if self._broken is not None:
                raise self._broken
            assert self._proc is not None
            fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            self._pending.append((offset, n, view, fut))  # no await between: answers come in this order
            self._proc.stdin.write(b"%d %d\n" % (offset, n))
            return await fut

        return self.conn.call(go(), f"read of {n} bytes at {offset} in {self.path}", timeout=READ_TIMEOUT)

    def close(self) -> None:
        async def go() -> None:
            if self._proc is not None:
                with contextlib.suppress(OSError, asyncssh.Error):
                    self._proc.stdin.write_eof()
                self._proc.close()
            if self._pump is not None:
                self._pump.cancel()

        with contextlib.suppress(IOFailure):
            self.conn.call(go(), "close", timeout=10)
        if self._holds:
            self._holds = False
            self.conn.readers.release()
