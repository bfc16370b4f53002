# SPDX-License-Identifier: Apache-2.0
"""``verify s3://bucket/prefix/manifest.json``: read every object back, streamed, and recompute its
block digest (gzip'd objects are inflated on the way, member after member, with a bounded output
window). Nothing is written locally; memory is one digest block plus a read chunk."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Any

from ..blocks import AllData
from ..errors import EXIT_FORMAT, EXIT_IO, EXIT_OK, EXIT_VERIFY, Euca2kvmError, FormatError, Interrupted
from ..ids import GZIP_MAGIC
from ..units import MiB
from .copy import copy_blocks
from .digest import algorithm_of
from .s3 import EXT, S3Url, call, is_missing

# Bytes asked of the response stream at a time (and compressed bytes fed to zlib at a time).
READ_CHUNK = 1 * MiB
# Largest inflated output zlib may hand back per call: bounds memory against gzip bombs.
OUT_WINDOW = 4 * MiB
class _Stream(AllData):
    """Disk bytes arriving in order as a block source (all DATA) of the recorded ``size``, for the one
    digest fold (:func:`.copy.copy_blocks` with one worker reads it front to back); a stream that ends
    early is short, one with bytes left over is longer than recorded: both FormatError."""

    def __init__(self, chunks: Iterator[bytes], size: int, where: str) -> None:
        self._chunks, self._size, self._name = chunks, size, where
        self._pending = memoryview(b"")
        self.pos = 0

    @property
    def name(self) -> str:
        return self._name

    @property
    def size(self) -> int:
        return self._size

    def read_into(self, offset: int, view: memoryview) -> None:
        assert offset == self.pos, (offset, self.pos)  # one worker: blocks are read in order
        got = 0
        while got < len(view):
            if not self._pending:
                chunk = next(self._chunks, None)
                if chunk is None:
                    raise FormatError(f"holds {self.pos + got} bytes, fewer than the recorded {self._size}",
                                      self._name)
                self._pending = memoryview(chunk)
            take = min(len(view) - got, len(self._pending))
            view[got : got + take] = self._pending[:take]
            self._pending = self._pending[take:]
            got += take
        self.pos += got

    def check_end(self) -> None:
        """FormatError if the stream holds more than the recorded size."""
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return
            self._pending = memoryview(chunk)
        raise FormatError(f"holds more than the recorded {self._size} bytes", self._name)

    def close(self) -> None:
        pass


def _digest(chunks: Iterator[bytes], size: int, want: str, where: str) -> str:
    """The block digest of the disk bytes ``chunks`` (exactly ``size`` of them) through the one fold."""
    stream = _Stream(chunks, size, where)
    res = copy_blocks(stream, None, workers=1, name=where, algorithm=algorithm_of(want))
    stream.check_end()
    assert res.digest is not None
    return res.digest


def _inflate(chunks: Any, where: str) -> Iterator[bytes]:
    """The bytes of the concatenated gzip members in ``chunks``, at most OUT_WINDOW at a time."""
    dec: Any = None
    members = 0
    for chunk in chunks:
        pending = bytes(chunk)
        while pending:
            if dec is None:
                if len(pending) < 2:
                    pending += next(chunks, b"")
                if pending[:2] != GZIP_MAGIC:
                    raise FormatError(f"not a gzip member after member {members}", where)
                dec = zlib.decompressobj(wbits=31)
                members += 1
            try:
                out = dec.decompress(pending, OUT_WINDOW)
                yield out
                while dec.unconsumed_tail and not dec.eof:
                    yield dec.decompress(dec.unconsumed_tail, OUT_WINDOW)
            except zlib.error as e:
                raise FormatError(f"gzip member {members} is corrupt: {e}", where) from e
            pending = dec.unused_data if dec.eof else b""
            if dec.eof:
                dec = None
    if dec is not None or members == 0:
        raise FormatError("the gzip stream is truncated", where)


def check_entry(client: Any, target: S3Url, entry: dict[str, Any]) -> tuple[str, str, int]:
    """(status, detail, exit status) of one entry, as the local ``verify`` reports them."""
    out = str(entry.get("output", ""))
    encoding = str(entry.get("encoding", "none"))
    prefix = target.url() + "/"
    name = out[len(prefix):] if out.startswith(prefix) else ""
    if not name or "/" in name or name in (".", "..") or encoding not in EXT or entry.get("format") != "raw" \
            or not name.endswith("." + EXT[encoding]):
        return "refused", f"not an object of this manifest's prefix ({prefix}<name>.raw[.gz])", EXIT_FORMAT
    want = entry.get("digest")
    if not want:
        return "unverifiable", "no digest recorded", EXIT_VERIFY
    try:
        algorithm_of(str(want))
    except FormatError as e:
        return "unverifiable", str(e), EXIT_VERIFY
    size = int(entry.get("size", 0))
    try:
        obj = call(out, client.get_object, Bucket=target.bucket, Key=target.key(name))
    except Euca2kvmError as e:
        if is_missing(e):
            return "missing", "no such object", EXIT_IO
        return "unreadable", str(e), e.exit_code
    body = obj["Body"]
    try:
        chunks = body.iter_chunks(READ_CHUNK)
        got = _digest(_inflate(chunks, out) if encoding == "gzip" else chunks, size, str(want), out)
    except Interrupted:
        raise
    except FormatError as e:
        return "mismatch", e.reason, EXIT_VERIFY
    except Euca2kvmError as e:
        return "unreadable", str(e), e.exit_code
    except Exception as e:  # noqa: BLE001 - a broken connection mid-stream (urllib3, botocore)
        return "unreadable", f"reading {out} failed: {type(e).__name__}: {e}", EXIT_IO
    finally:
        body.close()
    if got != want:
        return "mismatch", f"digest {got} != recorded {want}", EXIT_VERIFY
    return "ok", str(want), EXIT_OK
