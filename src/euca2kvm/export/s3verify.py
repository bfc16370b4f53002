# SPDX-License-Identifier: Apache-2.0
"""``verify s3://bucket/prefix/manifest.json``: read every object back, streamed, and recompute its
block digest (gzip'd objects are inflated on the way, member after member, with a bounded output
window). Nothing is written locally; memory is one digest block plus a read chunk."""

from __future__ import annotations

import zlib
from typing import Any

from ..errors import EXIT_FORMAT, EXIT_IO, EXIT_OK, EXIT_VERIFY, Euca2kvmError, FormatError, Interrupted
from ..ids import GZIP_MAGIC
from ..units import MiB
from .digest import DIGEST_BLOCK, BlockDigest, algorithm_of
from .s3 import EXT, S3Url, call, is_missing

# Bytes asked of the response stream at a time (and compressed bytes fed to zlib at a time).
READ_CHUNK = 1 * MiB
# Largest inflated output zlib may hand back per call: bounds memory against gzip bombs.
OUT_WINDOW = 4 * MiB
_ZEROS = bytes(DIGEST_BLOCK)


class _Fold:
    """Disk bytes in order → the block digest; refuses more bytes than the recorded size."""

    def __init__(self, digest: str, limit: int, where: str) -> None:
        self.bd = BlockDigest(algorithm_of(digest))
        self.block = bytearray()
        self.size = 0
        self.limit, self.where = limit, where

    def feed(self, data: bytes | memoryview) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise FormatError(f"holds more than the recorded {self.limit} bytes", self.where)
        view = memoryview(data)
        while len(view):
            take = min(len(view), DIGEST_BLOCK - len(self.block))
            self.block += view[:take]
            view = view[take:]
            if len(self.block) == DIGEST_BLOCK:
                self._flush()

    def _flush(self) -> None:
        if self.block:
            if _ZEROS.startswith(self.block):  # a hole: its digest is known
                self.bd.add_zero(len(self.block))
            else:
                self.bd.add(self.bd.algorithm.block(self.block))
            self.block = bytearray()

    def hexdigest(self) -> str:
        self._flush()
        return self.bd.hexdigest()


def _inflate(chunks: Any, fold: _Fold, where: str) -> None:
    """Concatenated gzip members from ``chunks`` into ``fold``."""
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
                fold.feed(out)
                while dec.unconsumed_tail and not dec.eof:
                    fold.feed(dec.decompress(dec.unconsumed_tail, OUT_WINDOW))
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
    fold = _Fold(str(want), size, out)
    try:
        chunks = body.iter_chunks(READ_CHUNK)
        if encoding == "gzip":
            _inflate(chunks, fold, out)
        else:
            for chunk in chunks:
                fold.feed(chunk)
        got = fold.hexdigest()
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
    if fold.size != size:
        return "mismatch", f"{fold.size} bytes, recorded {size}", EXIT_VERIFY
    if got != want:
        return "mismatch", f"digest {got} != recorded {want}", EXIT_VERIFY
    return "ok", str(want), EXIT_OK
