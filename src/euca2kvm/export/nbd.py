# SPDX-License-Identifier: Apache-2.0
"""A minimal, read-only NBD server over a :class:`~euca2kvm.blocks.BlockSource`, on a unix socket.

qemu-img reads every converted export through it without a temporary full-size copy:
``qemu-img convert -f raw <server.uri> out.qcow2``; the bytes it serves are read (and, for a
verified export, digested) by :class:`.served.Served`, so the source is read once. Implemented
subset of the NBD protocol (NetworkBlockDevice/nbd ``doc/proto.md``; constants in :mod:`.nbdproto`):

- fixed newstyle handshake with ``NO_ZEROES``; options ``EXPORT_NAME``, ``GO``, ``INFO``,
  ``LIST``, ``ABORT``, ``STRUCTURED_REPLY``, ``LIST_META_CONTEXT``/``SET_META_CONTEXT``
  (``base:allocation`` only); any other option gets ``NBD_REP_ERR_UNSUP``;
- ``READ`` (simple or structured replies; ZERO and HOLE ranges become hole chunks, never read),
  ``BLOCK_STATUS`` (ZERO and HOLE ranges, source-file holes included, are reported hole+zero
  so qemu skips them), ``FLUSH`` (no-op), ``DISC``; writes, trims and write-zeroes fail with
  ``EPERM``;
- ERROR ranges fail reads with ``EIO`` (a convert fails, it never gets zeros), and so does a
  source read that fails (a file that shrank): every byte of a reply is read before its header
  is sent. Requests beyond the end or larger than :data:`MAX_REQUEST` fail with ``EINVAL``.

One thread per connection (:mod:`.nbdconn`: handshake and transmission); protocol violations
close that connection only. Unexpected
exceptions are kept in :attr:`NbdServer.failures`, source read failures in
:attr:`NbdServer.read_failures`, for callers and tests to check.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote

from ..blocks import BlockSource
from ..errors import IOFailure, UsageError
from ..safefs import RUNTIME_PREFIX, runtime_dir
from .nbdconn import Connection
from .nbdproto import MAX_SOCK_PATH
from .served import Served

log = logging.getLogger(__name__)

# Accept-loop poll period in seconds: bounds how long close() waits for the acceptor.
ACCEPT_POLL = 0.2
# Seconds close() waits for each thread; a thread stuck in a read of a hung source is left.
JOIN_TIMEOUT = 10.0
# Concurrent connections; qemu-img opens one or two, more means a runaway client.
MAX_CONNECTIONS = 16
@dataclass
class Stats:
    connections: int = 0
    reads: int = 0
    data_bytes: int = 0  # bytes sent as data
    hole_bytes: int = 0  # bytes sent as hole chunks
    block_status: int = 0
    errors: int = 0  # error replies sent


class NbdServer:
    """Serves ``source`` read-only on a unix socket until :meth:`close`. Use :func:`serve`.

    Bytes are read through ``served`` (default: a plain, counting :class:`.served.Served`)."""

    def __init__(self, source: BlockSource, sock_path: str | None = None, export_name: str = "",
                 served: Served | None = None) -> None:
        self.source = source
        self.served = served or Served(source)
        self.export_name = export_name
        self._tmpdir: str | None = None
        if sock_path is None:
            self._tmpdir = runtime_dir(RUNTIME_PREFIX)  # 0700; stale ones of dead runs are removed
            sock_path = os.path.join(self._tmpdir, "nbd.sock")
        if len(os.fsencode(sock_path)) > MAX_SOCK_PATH:
            raise UsageError(f"unix socket path longer than {MAX_SOCK_PATH} bytes: {sock_path}")
        if os.path.lexists(sock_path):
            raise UsageError(f"socket path already exists: {sock_path}")
        self.sock_path = sock_path
        self.stats = Stats()
        self.failures: list[str] = []
        self.read_failures: list[IOFailure] = []  # source reads that failed (answered proto.EIO)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._conns: dict[int, tuple[socket.socket, threading.Thread]] = {}
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None

    @property
    def uri(self) -> str:
        """``nbd+unix:///<export>?socket=<path>`` for qemu's filename syntax."""
        return f"nbd+unix:///{quote(self.export_name)}?socket={quote(self.sock_path)}"

    @property
    def image_opts(self) -> str:
        """For ``qemu-img --image-opts``: the raw format over the NBD protocol driver."""
        path = self.sock_path.replace(",", ",,")
        name = self.export_name.replace(",", ",,")
        opts = f"driver=raw,file.driver=nbd,file.server.type=unix,file.server.path={path}"
        return opts + (f",file.export={name}" if name else "")

    def start(self) -> None:
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            lsock.bind(self.sock_path)
            os.chmod(self.sock_path, stat.S_IRUSR | stat.S_IWUSR)
            lsock.listen(MAX_CONNECTIONS)
            lsock.settimeout(ACCEPT_POLL)
        except OSError as e:
            lsock.close()
            self._cleanup_path()
            raise UsageError(f"cannot listen on {self.sock_path}: {e.strerror}") from e
        self._listener = lsock
        self._acceptor = threading.Thread(target=self._accept_loop, name="nbd-accept", daemon=True)
        self._acceptor.start()
        log.debug("NBD serving size=%d socket=%s", self.source.size, self.sock_path)

    def _accept_loop(self) -> None:
        assert self._listener is not None
        n = 0
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError as e:
                if not self._stop.is_set():
                    self._fail(f"accept failed: {e}")
                return
            with self._lock:
                if self._stop.is_set() or len(self._conns) >= MAX_CONNECTIONS:
                    sock.close()
                    continue
                n += 1
                self.stats.connections += 1
                t = threading.Thread(target=self._run_conn, args=(n, sock), name=f"nbd-conn-{n}",
                                     daemon=True)
                self._conns[n] = (sock, t)
            t.start()

    def _run_conn(self, n: int, sock: socket.socket) -> None:
        try:
            Connection(self, sock).run()
        finally:
            with self._lock:
                self._conns.pop(n, None)

    def _fail(self, msg: str) -> None:
        log.error("NBD server: %s", msg)
        with self._lock:
            self.failures.append(msg)

    def count(self, **delta: int) -> None:
        with self._lock:
            for k, v in delta.items():
                setattr(self.stats, k, getattr(self.stats, k) + v)

    def close(self) -> None:
        """Stop accepting, disconnect clients, join threads (bounded), remove the socket."""
        self._stop.set()
        if self._listener is not None:  # wake accept() now rather than at the next poll
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as waker:
                waker.connect(self.sock_path)
        if self._acceptor is not None:
            self._acceptor.join(JOIN_TIMEOUT)
        with self._lock:
            conns = list(self._conns.values())
        for sock, _ in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for _, t in conns:
            t.join(JOIN_TIMEOUT)
            if t.is_alive():
                log.warning("NBD connection thread %s did not stop", t.name)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self.served.close()
        self._cleanup_path()

    def _cleanup_path(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.sock_path)
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None


@contextlib.contextmanager
def serve(source: BlockSource, sock_path: str | None = None, export_name: str = "",
          served: Served | None = None) -> Iterator[NbdServer]:
    """Serve ``source`` read-only over NBD for the duration of the ``with`` block."""
    server = NbdServer(source, sock_path, export_name, served)
    server.start()
    try:
        yield server
    finally:
        server.close()
