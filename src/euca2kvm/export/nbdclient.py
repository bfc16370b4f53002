# SPDX-License-Identifier: Apache-2.0
"""A minimal, read-only NBD client for a unix socket (NetworkBlockDevice/nbd ``doc/proto.md``).

It speaks just what reading an image through ``qemu-nbd`` needs: the fixed newstyle handshake
with ``NO_ZEROES``, ``STRUCTURED_REPLY``, ``SET_META_CONTEXT base:allocation`` and ``GO`` (asking
for block size constraints); then ``READ`` (structured data and hole chunks), ``BLOCK_STATUS``
and ``DISC``. One request is in flight per connection; open several connections to read in
parallel.

Everything the server sends is treated as untrusted: every length is bounded before anything is
allocated, every reply must answer the request just sent and cover exactly the bytes asked for,
and every request has a deadline. A protocol violation or a timeout raises :class:`ToolError`
and leaves the connection unusable; an error reply (the server could not read the image)
raises :class:`IOFailure`. No other exception escapes.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import time
from collections.abc import Iterator

from ..blocks import Kind, Range, merged
from ..errors import IOFailure, ToolError
from ..units import KiB, MiB
from . import nbdproto as proto  # protocol constants shared with the server
from .digest import ZEROS
from .nbdproto import MAX_SOCK_PATH

# Seconds to connect and finish the handshake (qemu-nbd needs milliseconds once listening).
HANDSHAKE_TIMEOUT = 30.0
# Seconds one request may take end to end. A 4 MiB read of a local image takes milliseconds;
# this only trips on a wedged server or a hung mount, and bounds how long a read can block.
REQUEST_TIMEOUT = 120.0
# Option reply payloads above this are a protocol violation (the spec caps strings at 4 KiB).
MAX_OPTION_REPLY = 64 * KiB
# Option replies accepted per option before giving up on a server that never sends ACK.
MAX_OPTION_REPLIES = 64
# Error and hole chunk payloads above this are a violation (error strings are at most 4 KiB).
MAX_SMALL_CHUNK = 64 * KiB
# BLOCK_STATUS payload bound: qemu sends at most 128 Ki extents (1 MiB) per reply.
MAX_STATUS_PAYLOAD = 2 * MiB
# Chunks per request: a server splitting a 4 MiB read into more pieces than this is broken.
MAX_CHUNKS = 64 * KiB
# Default maximum request when the server advertises none (the spec's default, 32 MiB).
DEFAULT_MAX_BLOCK = 32 * MiB
# Transmission flag every server sets; its absence after GO means no export information came.
TFLAG_HAS_FLAGS = 1
REPLY_FLAG_ERROR_BIT = 1 << 15
_CHUNK = struct.Struct(">HHQI")  # after the 4-byte magic: flags, type, handle, length


class NbdClient:
    """One connection to an NBD export on a unix socket. Use as a context manager."""

    def __init__(self, sock_path: str, export_name: str = "", *, connect_timeout: float = HANDSHAKE_TIMEOUT,
                 request_timeout: float = REQUEST_TIMEOUT) -> None:
        if len(os.fsencode(sock_path)) > MAX_SOCK_PATH:
            raise ToolError(f"NBD socket path longer than {MAX_SOCK_PATH} bytes: {sock_path}")
        self.sock_path = sock_path
        self.request_timeout = request_timeout
        self.size = 0
        self.transmission_flags = 0
        self.min_block = 1
        self.max_block = DEFAULT_MAX_BLOCK
        self.base_allocation = False
        self._meta_id: int | None = None
        self._handle = 0
        self._broken = False
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.settimeout(connect_timeout)
            self._sock.connect(sock_path)
            self._handshake(export_name, time.monotonic() + connect_timeout)
        except OSError as e:
            self._sock.close()
            raise ToolError(f"NBD connection to {sock_path} failed: {e.strerror or e}") from e
        except BaseException:
            self._sock.close()
            raise

    def __enter__(self) -> NbdClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ----------------------------------------------------------------------------------

    def _violation(self, what: str) -> ToolError:
        return self._broke(f"NBD server on {self.sock_path} broke the protocol: {what}")

    def _broke(self, message: str) -> ToolError:
        """The connection is unusable from now on (a reply may be half read); the error to raise."""
        self._broken = True
        return ToolError(message)

    def _failed(self, e: OSError) -> ToolError:
        if isinstance(e, TimeoutError):
            return self._broke(f"NBD server on {self.sock_path} timed out")
        return self._broke(f"NBD connection to {self.sock_path} failed: {e.strerror or e}")

    def _arm(self, deadline: float) -> None:
        """The socket's timeout set to what is left until ``deadline``; a timeout if nothing is left."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise self._broke(f"NBD server on {self.sock_path} timed out")
        self._sock.settimeout(left)

    def _recv_into(self, view: memoryview, deadline: float) -> None:
        got = 0
        n = len(view)
        while got < n:
            self._arm(deadline)
            try:
                k = self._sock.recv_into(view[got:])
            except OSError as e:
                raise self._failed(e) from e
            if k == 0:
                raise self._broke(f"NBD server on {self.sock_path} closed the connection mid-reply")
            got += k

    def _recv(self, n: int, deadline: float) -> bytes:
        buf = bytearray(n)
        self._recv_into(memoryview(buf), deadline)
        return bytes(buf)

    def _send(self, data: bytes, deadline: float) -> None:
        self._arm(deadline)
        try:
            self._sock.sendall(data)
        except OSError as e:
            raise self._failed(e) from e

    # -- handshake ---------------------------------------------------------------------------------

    def _handshake(self, export_name: str, deadline: float) -> None:
        magic, opt_magic, flags = struct.unpack(">QQH", self._recv(18, deadline))
        if magic != proto.NBDMAGIC or opt_magic != proto.IHAVEOPT:
            raise self._violation("not an NBD fixed newstyle server")
        if not flags & proto.FLAG_FIXED_NEWSTYLE:
            raise self._violation("server does not support fixed newstyle negotiation")
        no_zeroes = flags & proto.FLAG_NO_ZEROES
        self._send(struct.pack(">I", proto.FLAG_FIXED_NEWSTYLE | no_zeroes), deadline)
        name = export_name.encode()
        structured = self._option(proto.OPT_STRUCTURED_REPLY, b"", deadline)
        if not structured:
            raise ToolError(f"NBD server on {self.sock_path} does not support structured replies")
        request = struct.pack(">I", len(name)) + name + struct.pack(">I", 1)
        request += struct.pack(">I", len(proto.BASE_ALLOCATION)) + proto.BASE_ALLOCATION
        self._option(proto.OPT_SET_META_CONTEXT, request, deadline)
        self.base_allocation = self._meta_id is not None
        go = struct.pack(">I", len(name)) + name + struct.pack(">HH", 1, proto.INFO_BLOCK_SIZE)
        if not self._option(proto.OPT_GO, go, deadline):
            raise ToolError(f"NBD server on {self.sock_path} refused export {export_name!r}")
        if not self.transmission_flags & TFLAG_HAS_FLAGS:
            raise self._violation("GO succeeded without export information")

    def _option(self, opt: int, data: bytes, deadline: float) -> bool:
        """Send one option; True on ACK, False when the server answers with an error reply."""
        self._send(struct.pack(">QII", proto.IHAVEOPT, opt, len(data)) + data, deadline)
        for _ in range(MAX_OPTION_REPLIES):
            magic, ropt, rep, length = struct.unpack(">QIII", self._recv(20, deadline))
            if magic != proto.REPLY_MAGIC or ropt != opt:
                raise self._violation(f"bad option reply (magic {magic:#x}, option {ropt})")
            if length > MAX_OPTION_REPLY:
                raise self._violation(f"option reply of {length} bytes")
            payload = self._recv(length, deadline)
            if rep == proto.REP_ACK:
                return True
            if rep & (1 << 31):
                return False
            if rep == proto.REP_META_CONTEXT and opt == proto.OPT_SET_META_CONTEXT:
                if length < 4 or payload[4:] != proto.BASE_ALLOCATION:
                    raise self._violation("unrequested meta context")
                (self._meta_id,) = struct.unpack_from(">I", payload)
            elif rep == proto.REP_INFO and opt == proto.OPT_GO:
                self._info(payload)
            # other informational replies are ignored, as the spec asks
        raise self._violation(f"no ACK after {MAX_OPTION_REPLIES} replies to option {opt}")

    def _info(self, payload: bytes) -> None:
        if len(payload) < 2:
            raise self._violation("short NBD_REP_INFO")
        (kind,) = struct.unpack_from(">H", payload)
        if kind == proto.INFO_EXPORT:
            if len(payload) != 12:
                raise self._violation("malformed NBD_INFO_EXPORT")
            self.size, self.transmission_flags = struct.unpack_from(">QH", payload, 2)
            if self.size >= 1 << 63:
                raise self._violation(f"export size {self.size}")
        elif kind == proto.INFO_BLOCK_SIZE:
            if len(payload) != 14:
                raise self._violation("malformed NBD_INFO_BLOCK_SIZE")
            minimum, _preferred, maximum = struct.unpack_from(">III", payload, 2)
            if not (1 <= minimum <= 64 * KiB and minimum & (minimum - 1) == 0 and maximum >= minimum):
                raise self._violation(f"block sizes min {minimum} max {maximum}")
            self.min_block = minimum
            self.max_block = min(maximum, DEFAULT_MAX_BLOCK)

    # -- transmission ------------------------------------------------------------------------------

    def _request(self, cmd: int, offset: int, length: int, deadline: float, flags: int = 0) -> int:
        if self._broken:
            raise ToolError(f"NBD connection to {self.sock_path} is unusable after an earlier error")
        self._handle += 1
        self._send(proto.REQUEST.pack(proto.REQUEST_MAGIC, flags, cmd, self._handle, offset, length), deadline)
        return self._handle

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length <= 0 or offset + length > self.size or length > 0xFFFFFFFF:
            raise ToolError(f"NBD request {offset}+{length} outside the export (size {self.size})")

    def _chunk(self, handle: int, deadline: float) -> tuple[int, int, int]:
        """(flags, type, length) of the next structured chunk of ``handle``; raises on simple errors."""
        (magic,) = struct.unpack(">I", self._recv(4, deadline))
        if magic == proto.SIMPLE_MAGIC:
            err, rhandle = struct.unpack(">IQ", self._recv(12, deadline))
            if rhandle != handle:
                raise self._violation(f"reply for handle {rhandle}, expected {handle}")
            if err == 0:  # a simple success reply to a command needing structured data
                raise self._violation("simple reply where a structured one is required")
            raise self._error(err, "")
        if magic != proto.STRUCTURED_MAGIC:
            raise self._violation(f"bad reply magic {magic:#x}")
        flags, rtype, rhandle, length = _CHUNK.unpack(self._recv(_CHUNK.size, deadline))
        if rhandle != handle:
            raise self._violation(f"reply for handle {rhandle}, expected {handle}")
        return flags, rtype, length

    def _error(self, err: int, message: str) -> IOFailure:
        text = os.strerror(err) if 0 < err < 256 else f"error {err}"
        return IOFailure(f"NBD server on {self.sock_path} failed the request: {text}"
                         + (f" ({message})" if message else ""))

    def _error_chunk(self, length: int, deadline: float) -> IOFailure:
        if not 6 <= length <= MAX_SMALL_CHUNK:
            raise self._violation(f"error chunk of {length} bytes")
        payload = self._recv(length, deadline)
        err, mlen = struct.unpack_from(">IH", payload)
        if mlen > length - 6:
            raise self._violation(f"error message of {mlen} bytes in a {length}-byte chunk")
        message = payload[6 : 6 + mlen].decode("utf-8", "replace")
        return self._error(err, "".join(c if c.isprintable() else "?" for c in message[:200]))

    def _reply_chunks(self, handle: int, deadline: float, what: str) -> Iterator[tuple[int, int]]:
        """(type, payload length) of each payload chunk of a structured reply, whose payload the
        caller reads before asking for the next. Error and NONE chunks are handled here; an error
        is raised once the reply is complete, so the connection stays in step."""
        failure: IOFailure | None = None
        for _ in range(MAX_CHUNKS):
            flags, rtype, clen = self._chunk(handle, deadline)
            if rtype & REPLY_FLAG_ERROR_BIT:
                failure = failure or self._error_chunk(clen, deadline)
            elif rtype == proto.REPLY_NONE:
                if clen != 0 or not flags & proto.REPLY_FLAG_DONE:
                    raise self._violation("malformed NONE chunk")
            else:
                yield rtype, clen
            if flags & proto.REPLY_FLAG_DONE:
                break
        else:
            raise self._violation(f"more than {MAX_CHUNKS} chunks for one {what}")
        if failure is not None:
            raise failure

    def read_into(self, offset: int, view: memoryview) -> None:
        """Fill ``view`` with the export's bytes at ``offset`` (split into allowed request sizes)."""
        pos = 0
        n = len(view)
        while pos < n:
            take = min(n - pos, self.max_block)
            self._read_one(offset + pos, view[pos : pos + take])
            pos += take

    def _read_one(self, offset: int, view: memoryview) -> None:
        length = len(view)
        self._check_range(offset, length)
        deadline = time.monotonic() + self.request_timeout
        handle = self._request(proto.CMD_READ, offset, length, deadline)
        covered: list[tuple[int, int]] = []
        for rtype, clen in self._reply_chunks(handle, deadline, "read"):
            if rtype == proto.REPLY_OFFSET_DATA:
                if clen < 8 or clen - 8 > length:
                    raise self._violation(f"data chunk of {clen} bytes for a {length}-byte read")
                (coff,) = struct.unpack(">Q", self._recv(8, deadline))
                a = coff - offset
                if a < 0 or a + clen - 8 > length:
                    raise self._violation(f"data chunk at {coff} outside the read {offset}+{length}")
                self._recv_into(view[a : a + clen - 8], deadline)
                covered.append((a, clen - 8))
            elif rtype == proto.REPLY_OFFSET_HOLE:
                if clen != 12:
                    raise self._violation(f"hole chunk of {clen} bytes")
                coff, hlen = struct.unpack(">QI", self._recv(12, deadline))
                a = coff - offset
                if a < 0 or a + hlen > length:
                    raise self._violation(f"hole at {coff}+{hlen} outside the read {offset}+{length}")
                for z in range(a, a + hlen, len(ZEROS)):
                    view[z : min(z + len(ZEROS), a + hlen)] = ZEROS[: min(len(ZEROS), a + hlen - z)]
                covered.append((a, hlen))
            else:
                raise self._violation(f"unexpected chunk type {rtype} in a read reply")
        covered.sort()
        pos = 0
        for a, k in covered:
            if a != pos or k == 0:
                raise self._violation(f"read reply chunks overlap or leave a gap at {offset + pos}")
            pos += k
        if pos != length:
            raise self._violation(f"read reply covers {pos} of {length} bytes")

    def block_status(self, offset: int, length: int) -> list[Range]:
        """Ranges from ``offset`` (at least one, possibly covering less than ``length``): ``DATA``,
        or ``ZERO``/``HOLE`` when the server says they read as zeros (``HOLE``: also unallocated)."""
        if self._meta_id is None:
            return [Range(offset, length, Kind.DATA)]  # no allocation information: all data
        self._check_range(offset, length)
        deadline = time.monotonic() + self.request_timeout
        handle = self._request(proto.CMD_BLOCK_STATUS, offset, length, deadline)
        out: list[Range] = []
        for rtype, clen in self._reply_chunks(handle, deadline, "block status"):
            if rtype == proto.REPLY_BLOCK_STATUS:
                if clen < 12 or clen > MAX_STATUS_PAYLOAD or (clen - 4) % 8:
                    raise self._violation(f"block status payload of {clen} bytes")
                payload = self._recv(clen, deadline)
                (ctx,) = struct.unpack_from(">I", payload)
                if ctx != self._meta_id:
                    raise self._violation(f"block status for unknown context {ctx}")
                if out:
                    raise self._violation("two block status chunks for one context")
                pos = offset
                for i in range(4, clen, 8):
                    elen, state = struct.unpack_from(">II", payload, i)
                    if elen == 0:
                        raise self._violation("zero-length extent")
                    end = min(pos + elen, offset + length)  # a final extent may run past the request
                    if end > pos:
                        out.append(Range(pos, end - pos, _kind(state)))
                    pos = end
            else:
                raise self._violation(f"unexpected chunk type {rtype} in a block status reply")
        if not out:
            raise self._violation("block status reply without extents")
        return out

    def ranges(self, lo: int, hi: int, span: int) -> Iterator[Range]:
        """Ranges of ``[lo, hi)`` in order, asking ``span`` bytes at a time; neighbours of the
        same kind are merged."""
        def pieces() -> Iterator[Range]:
            pos = lo
            while pos < hi:
                got = self.block_status(pos, min(span, hi - pos))  # at least one, from pos on
                yield from got
                pos = got[-1].end

        return merged(pieces())

    def abort(self) -> None:
        """Unblock any thread waiting on this connection (it then fails with ToolError)."""
        self._broken = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Say goodbye (NBD_CMD_DISC) when the connection is still in a clean state, then close."""
        if self._sock.fileno() < 0:
            return
        if not self._broken:
            with contextlib.suppress(ToolError):
                self._request(proto.CMD_DISC, 0, 0, time.monotonic() + HANDSHAKE_TIMEOUT)
        self._sock.close()


def _kind(state: int) -> Kind:
    """A base:allocation state as a range kind: only the ZERO bit promises zeros."""
    if not state & proto.STATE_ZERO:
        return Kind.DATA
    return Kind.HOLE if state & proto.STATE_HOLE else Kind.ZERO
