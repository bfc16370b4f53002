# SPDX-License-Identifier: Apache-2.0
"""One NBD connection of :class:`.nbd.NbdServer`: the fixed newstyle handshake and option haggling,
then transmission (reads through the server's :class:`.served.Served`, block status from the
source's ranges). Protocol violations raise :class:`_Hangup` and close this connection only."""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..blocks import ZEROS as ZERO_KINDS
from ..blocks import Kind, Range
from ..errors import IOFailure
from ..units import KiB, MiB
from . import nbdproto as proto
from .nbdproto import MAX_REQUEST

if TYPE_CHECKING:
    from .nbd import NbdServer

log = logging.getLogger("euca2kvm.export.nbd")

# Advertised preferred I/O size: page size, what a page-cached source reads best at.
PREFERRED_BLOCK = 4 * KiB
# Option payloads above this close the connection (strings are at most 4 KiB by the spec).
MAX_OPTION_LENGTH = 64 * KiB
# Options per connection before the server gives up on a client that never ends haggling.
MAX_OPTIONS = 128
# Seconds a client may take per handshake message (qemu needs milliseconds).
HANDSHAKE_TIMEOUT = 30.0
# ZERO runs shorter than this inside a read are sent as zero bytes, not as a hole chunk:
# fewer chunks, and qemu gains nothing from tiny holes.
MIN_HOLE_CHUNK = 64 * KiB
# Extents examined per BLOCK_STATUS request (the spec allows a shorter answer): bounds the
# work a 4 GiB query over a 64 KiB-striped map costs.
MAX_STATUS_EXTENTS = 8192
# Bytes of the source asked for ranges at a time while answering BLOCK_STATUS: 64 MiB of 64 KiB
# stripes is 1024 ranges, so the answer stops soon after MAX_STATUS_EXTENTS.
STATUS_STEP = 64 * MiB

_CHUNK = struct.Struct(">IHHQI")
# Replies go out as one sendall per buffer (header, then each piece). Measured no better: one
# sendmsg of [header, pieces...] per reply, SO_SNDBUF of 4 MiB, 512 KiB or 2 MiB pieces (1 GiB
# over a unix socketpair in 2 MiB replies, two interleaved rounds: sender system time 0.16-0.79 s
# for every variant, noise bigger than any difference); in cold 2 GiB qcow2 exports sendmsg's
# system time was higher (median 6.5 s against 4.6 s for the whole tree).


class _Hangup(Exception):
    """The client went away or broke the protocol: close this connection quietly."""


class Connection:
    """One client: the handshake, then requests until it disconnects (see :mod:`.nbd`)."""

    def __init__(self, server: NbdServer, sock: socket.socket) -> None:
        self.server = server
        self.source = server.source
        self.sock = sock
        self.structured = False
        self.meta = False  # base:allocation selected
        self.no_zeroes = False

    def run(self) -> None:
        try:
            if self._handshake():
                self.sock.settimeout(None)  # close() unblocks us with shutdown()
                self._transmission()
        except (_Hangup, ConnectionError, TimeoutError) as e:
            log.debug("NBD client gone: %s", e or type(e).__name__)
        except OSError as e:
            if not self.server._stop.is_set():
                self.server._fail(f"connection I/O error: {e}")
        except Exception as e:  # a bug: keep serving others, report it
            log.exception("NBD connection failed")
            self.server._fail(f"{type(e).__name__}: {e}")
        finally:
            self.sock.close()

    # -- plumbing ------------------------------------------------------------------------------

    def _recv(self, n: int) -> bytes:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = self.sock.recv_into(view[got:])
            if k == 0:
                raise _Hangup("client closed the connection")
            got += k
        return bytes(buf)

    def _send(self, *bufs: bytes | memoryview) -> None:
        for b in bufs:
            self.sock.sendall(b)

    # -- handshake -------------------------------------------------------------------------------

    def _handshake(self) -> bool:
        self.sock.settimeout(HANDSHAKE_TIMEOUT)
        self._send(struct.pack(">QQH", proto.NBDMAGIC, proto.IHAVEOPT,
                               proto.FLAG_FIXED_NEWSTYLE | proto.FLAG_NO_ZEROES))
        (cflags,) = struct.unpack(">I", self._recv(4))
        if cflags & ~(proto.FLAG_FIXED_NEWSTYLE | proto.FLAG_NO_ZEROES):
            raise _Hangup(f"unknown client flags {cflags:#x}")
        self.no_zeroes = bool(cflags & proto.FLAG_NO_ZEROES)
        for _ in range(MAX_OPTIONS):
            magic, opt, length = struct.unpack(">QII", self._recv(16))
            if magic != proto.IHAVEOPT:
                raise _Hangup(f"bad option magic {magic:#x}")
            if length > MAX_OPTION_LENGTH:
                raise _Hangup(f"option {opt} payload of {length} bytes")
            if self._option(opt, self._recv(length)):
                return True
        raise _Hangup("too many options")

    def _reply(self, opt: int, rep: int, data: bytes = b"") -> None:
        self._send(struct.pack(">QIII", proto.REPLY_MAGIC, opt, rep, len(data)), data)

    def _option(self, opt: int, data: bytes) -> bool:
        """Handle one option; True when transmission starts."""
        if opt == proto.OPT_EXPORT_NAME:
            if data.decode("utf-8", "replace") != self.server.export_name:
                raise _Hangup("unknown export name")  # the only way to refuse EXPORT_NAME
            pad = b"" if self.no_zeroes else bytes(124)
            self._send(struct.pack(">QH", self.source.size, proto.EXPORT_FLAGS), pad)
            return True
        if opt == proto.OPT_ABORT:
            self._reply(opt, proto.REP_ACK)
            raise _Hangup("client aborted")
        if opt == proto.OPT_LIST:
            if data:
                self._reply(opt, proto.REP_ERR_INVALID, b"LIST takes no data")
                return False
            name = self.server.export_name.encode()
            self._reply(opt, proto.REP_SERVER, struct.pack(">I", len(name)) + name)
            self._reply(opt, proto.REP_ACK)
            return False
        if opt == proto.OPT_STRUCTURED_REPLY:
            if data:
                self._reply(opt, proto.REP_ERR_INVALID, b"STRUCTURED_REPLY takes no data")
                return False
            self.structured = True
            self._reply(opt, proto.REP_ACK)
            return False
        if opt in (proto.OPT_INFO, proto.OPT_GO):
            return self._info(opt, data)
        if opt in (proto.OPT_LIST_META_CONTEXT, proto.OPT_SET_META_CONTEXT):
            self._meta_context(opt, data)
            return False
        self._reply(opt, proto.REP_ERR_UNSUP, b"unsupported option")
        return False

    def _export_name(self, data: bytes) -> tuple[bool, int]:
        """(known export, offset after the name) of the leading name in INFO/GO/META data."""
        if len(data) < 4:
            return False, -1
        (n,) = struct.unpack_from(">I", data)
        if 4 + n > len(data):
            return False, -1
        return data[4 : 4 + n].decode("utf-8", "replace") == self.server.export_name, 4 + n

    def _info(self, opt: int, data: bytes) -> bool:
        known, pos = self._export_name(data)
        if pos < 0 or pos + 2 > len(data):
            self._reply(opt, proto.REP_ERR_INVALID, b"malformed request")
            return False
        (count,) = struct.unpack_from(">H", data, pos)
        if pos + 2 + 2 * count != len(data):
            self._reply(opt, proto.REP_ERR_INVALID, b"malformed information request list")
            return False
        if not known:
            self._reply(opt, proto.REP_ERR_UNKNOWN, b"unknown export")
            return False
        self._reply(opt, proto.REP_INFO, struct.pack(">HQH", proto.INFO_EXPORT, self.source.size, proto.EXPORT_FLAGS))
        # Sent whether asked or not (the spec allows it): clients learn the 32 MiB bound.
        self._reply(opt, proto.REP_INFO, struct.pack(">HIII", proto.INFO_BLOCK_SIZE, 1, PREFERRED_BLOCK, MAX_REQUEST))
        self._reply(opt, proto.REP_ACK)
        return opt == proto.OPT_GO

    def _meta_context(self, opt: int, data: bytes) -> None:
        if not self.structured:
            self._reply(opt, proto.REP_ERR_INVALID, b"negotiate structured replies first")
            return
        known, pos = self._export_name(data)
        queries: list[bytes] = []
        if pos >= 0 and pos + 4 <= len(data):
            (count,) = struct.unpack_from(">I", data, pos)
            pos += 4
            for _ in range(min(count, len(data))):
                if pos + 4 > len(data):
                    break
                (n,) = struct.unpack_from(">I", data, pos)
                queries.append(data[pos + 4 : pos + 4 + n])
                pos += 4 + n
            if len(queries) != count:
                pos = -1
        if pos != len(data):
            self._reply(opt, proto.REP_ERR_INVALID, b"malformed meta context request")
            return
        if not known:
            self._reply(opt, proto.REP_ERR_UNKNOWN, b"unknown export")
            return
        if opt == proto.OPT_LIST_META_CONTEXT:
            match = not queries or any(q in (b"base:", proto.BASE_ALLOCATION) for q in queries)
            if match:
                self._reply(opt, proto.REP_META_CONTEXT, struct.pack(">I", 0) + proto.BASE_ALLOCATION)
        else:
            self.meta = proto.BASE_ALLOCATION in queries
            if self.meta:
                self._reply(opt, proto.REP_META_CONTEXT,
                            struct.pack(">I", proto.BASE_ALLOCATION_ID) + proto.BASE_ALLOCATION)
        self._reply(opt, proto.REP_ACK)

    # -- transmission ----------------------------------------------------------------------------

    def _transmission(self) -> None:
        while True:
            magic, flags, cmd, handle, offset, length = proto.REQUEST.unpack(self._recv(proto.REQUEST.size))
            if magic != proto.REQUEST_MAGIC:
                raise _Hangup(f"bad request magic {magic:#x}")
            if cmd == proto.CMD_DISC:
                return
            if cmd == proto.CMD_READ:
                self._read(handle, flags, offset, length)
            elif cmd == proto.CMD_BLOCK_STATUS:
                self._block_status(handle, flags, offset, length)
            elif cmd == proto.CMD_FLUSH:
                self._done(handle)
            elif cmd == proto.CMD_WRITE:
                if length > MAX_REQUEST:
                    raise _Hangup("oversized write payload")  # cannot resynchronise otherwise
                self._recv(length)
                self._error(handle, proto.EPERM, "read-only export")
            elif cmd in (proto.CMD_TRIM, proto.CMD_WRITE_ZEROES):
                self._error(handle, proto.EPERM, "read-only export")
            else:
                self._error(handle, proto.EINVAL, f"unsupported command {cmd}")

    def _done(self, handle: int) -> None:
        if self.structured:
            self._send(_CHUNK.pack(proto.STRUCTURED_MAGIC, proto.REPLY_FLAG_DONE, proto.REPLY_NONE, handle, 0))
        else:
            self._send(struct.pack(">IIQ", proto.SIMPLE_MAGIC, 0, handle))

    def _error(self, handle: int, err: int, msg: str, offset: int | None = None) -> None:
        self.server.count(errors=1)
        log.debug("NBD error reply errno=%d: %s", err, msg)
        if not self.structured:
            self._send(struct.pack(">IIQ", proto.SIMPLE_MAGIC, err, handle))
            return
        text = msg.encode()[:4096]
        if offset is None:
            payload = struct.pack(">IH", err, len(text)) + text
            kind = proto.REPLY_ERROR
        else:
            payload = struct.pack(">IH", err, len(text)) + text + struct.pack(">Q", offset)
            kind = proto.REPLY_ERROR_OFFSET
        self._send(_CHUNK.pack(proto.STRUCTURED_MAGIC, proto.REPLY_FLAG_DONE, kind, handle, len(payload)), payload)

    def _bad_range(self, offset: int, length: int, limit: int | None) -> str | None:
        if length == 0:
            return "zero-length request"
        if limit is not None and length > limit:
            return f"request of {length} bytes exceeds {limit}"
        if offset + length > self.source.size:
            return f"request {offset}+{length} beyond the export size {self.source.size}"
        return None

    def _read(self, handle: int, flags: int, offset: int, length: int) -> None:
        self.server.count(reads=1)
        bad = self._bad_range(offset, length, MAX_REQUEST)
        if flags & ~(proto.CMD_FLAG_FUA | proto.CMD_FLAG_DF):
            bad = f"unsupported read flags {flags:#x}"
        if bad:
            return self._error(handle, proto.EINVAL, bad)
        # Every check and every read that can fail happens before the first byte is sent.
        try:
            ranges = list(self.source.ranges(offset, offset + length))
            for r in ranges:
                if r.kind is Kind.ERROR:
                    return self._error(handle, proto.EIO, f"bytes {r.start}..{r.end} map to an error segment",
                                       r.start)
            # Runs sent as one chunk each: data (with short zero runs inlined), or one hole.
            runs: list[tuple[bool, int, int]] = []  # (is a hole, start, length)
            for r in ranges:
                hole = (self.structured and not flags & proto.CMD_FLAG_DF and r.kind in ZERO_KINDS
                        and r.length >= MIN_HOLE_CHUNK)
                if runs and not hole and not runs[-1][0]:
                    runs[-1] = (False, runs[-1][1], r.end - runs[-1][1])
                else:
                    runs.append((hole, r.start, r.length))
            payload = [None if hole else self.server.served.pieces(start, n) for hole, start, n in runs]
        except IOFailure as e:
            with self.server._lock:
                self.server.read_failures.append(e)
            return self._error(handle, proto.EIO, str(e), offset)
        if not self.structured:
            self._send(struct.pack(">IIQ", proto.SIMPLE_MAGIC, 0, handle))
            for pieces in payload:
                assert pieces is not None
                self._send(*pieces)
            self.server.count(data_bytes=length)
            return None
        data = 0
        for i, ((_, start, n), pieces) in enumerate(zip(runs, payload, strict=True)):
            done = proto.REPLY_FLAG_DONE if i == len(runs) - 1 else 0
            if pieces is None:
                self._send(_CHUNK.pack(proto.STRUCTURED_MAGIC, done, proto.REPLY_OFFSET_HOLE, handle, 12)
                           + struct.pack(">QI", start, n))
            else:
                self._send(_CHUNK.pack(proto.STRUCTURED_MAGIC, done, proto.REPLY_OFFSET_DATA, handle, 8 + n)
                           + struct.pack(">Q", start), *pieces)
                data += n
        self.server.count(data_bytes=data, hole_bytes=length - data)
        return None

    def _block_status(self, handle: int, flags: int, offset: int, length: int) -> None:
        self.server.count(block_status=1)
        bad = self._bad_range(offset, length, None)
        if not self.meta:
            bad = "no metadata context negotiated"
        elif flags & ~(proto.CMD_FLAG_FUA | proto.CMD_FLAG_REQ_ONE):
            bad = f"unsupported block status flags {flags:#x}"
        if bad:
            return self._error(handle, proto.EINVAL, bad)
        descs: list[list[int]] = []
        try:
            for i, r in enumerate(self._status_ranges(offset, offset + length)):
                # ZERO and HOLE: hole+zero, qemu skips them; ERROR: "data", its read fails
                state = proto.STATE_HOLE | proto.STATE_ZERO if r.kind in ZERO_KINDS else 0
                if descs and descs[-1][1] == state:
                    descs[-1][0] += r.length
                elif descs and (flags & proto.CMD_FLAG_REQ_ONE or i >= MAX_STATUS_EXTENTS):
                    break
                else:
                    descs.append([r.length, state])
                if i >= MAX_STATUS_EXTENTS:
                    break
        except IOFailure as e:
            with self.server._lock:
                self.server.read_failures.append(e)
            return self._error(handle, proto.EIO, str(e), offset)
        payload = struct.pack(">I", proto.BASE_ALLOCATION_ID) + b"".join(struct.pack(">II", n, s) for n, s in descs)
        self._send(_CHUNK.pack(proto.STRUCTURED_MAGIC, proto.REPLY_FLAG_DONE, proto.REPLY_BLOCK_STATUS, handle,
                               len(payload)), payload)
        return None

    def _status_ranges(self, lo: int, hi: int) -> Iterator[Range]:
        """The source's ranges of [lo, hi), asked in bounded steps (a 4 GiB query over a 64 KiB-striped
        map costs at most a few thousand ranges before the answer is cut short)."""
        pos = lo
        while pos < hi:
            step = min(hi, pos + STATUS_STEP)
            yield from self.source.ranges(pos, step)
            pos = step
