# SPDX-License-Identifier: Apache-2.0
"""Writing into an image through ``qemu-nbd``: what a delta pass (:mod:`.sync`) uses for converted
images (qcow2...), whose guest bytes cannot be written with ``pwrite``.

``qemu-nbd`` serves the image read-write to exactly one client on a private socket; the client
is the read-only :class:`~.nbdclient.NbdClient` plus ``WRITE`` and ``FLUSH`` (simple replies,
as the protocol allows for commands without reply payload). The server is stopped (SIGTERM,
then SIGKILL) when the pass ends, after a FLUSH acknowledged that every write is in the image.
"""

from __future__ import annotations

import contextlib
import struct
import time
from collections.abc import Iterator

from ..errors import ToolError
from . import nbdproto as proto
from .imagedigest import qemu_nbd
from .nbdclient import NbdClient

TFLAG_READ_ONLY = 1 << 1  # transmission flag: the server refuses writes


class NbdWriter(NbdClient):
    """One NBD connection that also writes."""

    def write(self, offset: int, data: memoryview) -> int:
        """Write ``data`` at ``offset`` (split into allowed request sizes); returns the bytes written."""
        if self.transmission_flags & TFLAG_READ_ONLY:
            raise ToolError(f"NBD server on {self.sock_path} serves the image read-only")
        pos = 0
        while pos < len(data):
            piece = data[pos : pos + self.max_block]
            self._check_range(offset + pos, len(piece))
            deadline = time.monotonic() + self.request_timeout
            handle = self._request(proto.CMD_WRITE, offset + pos, len(piece), deadline)
            self._send(bytes(piece), deadline)
            self._simple_reply(handle, deadline, f"write at {offset + pos}")
            pos += len(piece)
        return pos

    def flush(self) -> None:
        deadline = time.monotonic() + self.request_timeout
        handle = self._request(proto.CMD_FLUSH, 0, 0, deadline)
        self._simple_reply(handle, deadline, "flush")

    def _simple_reply(self, handle: int, deadline: float, what: str) -> None:
        (magic,) = struct.unpack(">I", self._recv(4, deadline))
        if magic == proto.STRUCTURED_MAGIC:  # allowed too: only NONE or error chunks
            flags, rtype, rhandle, length = struct.unpack(">HHQI", self._recv(16, deadline))
            if rhandle != handle:
                raise self._violation(f"reply for handle {rhandle}, expected {handle}")
            if rtype & (1 << 15):
                raise self._error_chunk(length, deadline)
            if rtype != proto.REPLY_NONE or length or not flags & proto.REPLY_FLAG_DONE:
                raise self._violation(f"unexpected reply to a {what}")
            return
        if magic != proto.SIMPLE_MAGIC:
            raise self._violation(f"bad reply magic {magic:#x}")
        err, rhandle = struct.unpack(">IQ", self._recv(12, deadline))
        if rhandle != handle:
            raise self._violation(f"reply for handle {rhandle}, expected {handle}")
        if err:
            raise self._error(err, what)


@contextlib.contextmanager
def writable(path: str, fmt: str) -> Iterator[NbdWriter]:
    """``path`` served read-write by qemu-nbd to one connection (flushed before it is closed)."""
    with qemu_nbd(path, fmt, 1, writable=True, client=NbdWriter) as (_, client):
        assert isinstance(client, NbdWriter)
        yield client
        client.flush()
