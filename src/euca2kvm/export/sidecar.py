# SPDX-License-Identifier: Apache-2.0
"""``<image>.blocks``: the per-block digests of an image, beside it, for the delta passes of a warm
migration (:mod:`.sync`).

Binary, little-endian::

    magic   8 bytes  b"E2KBLK1\\n"
    algo   16 bytes  the block digest's manifest name (``blkblake3-4m``), NUL padded
    block   8 bytes  the digest block size (4 MiB)
    size    8 bytes  bytes of the disk
    count   8 bytes  number of blocks = ceil(size / block)
    then count x 32 bytes: the digest of block i (:mod:`.digest`)

The manifest entry names the file and records its sha256 (part of the entry's identity): a
sidecar that does not match is refused, never trusted. Blocks whose digest is :data:`UNKNOWN`
(32 zero bytes, which no hash yields in practice) are being rewritten by a delta pass: a resumed
pass always rewrites them. The file is read bounded: its length must be exactly what the header
says, and the header must agree with the entry.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import FormatError, IOFailure
from ..outdir import OutDir
from ..safefs import read_bounded
from .digest import DIGEST_BLOCK, Algorithm, BlockDigest, algorithm_of, block_count

MAGIC = b"E2KBLK1\n"
_HEADER = struct.Struct("<8s16sQQQ")
DIGEST_BYTES = 32  # BLAKE3 and SHA-256 both give 32 bytes
UNKNOWN = bytes(DIGEST_BYTES)  # a block being rewritten: its digest is not known
SUFFIX = ".blocks"
# 16 TiB disks at 4 MiB blocks: 4 Mi blocks, 128 MiB of digests; nothing larger is read.
MAX_BLOCKS = 4 << 20


@dataclass
class Sidecar:
    algorithm: Algorithm
    size: int
    digests: list[bytes]

    def encode(self) -> bytes:
        head = _HEADER.pack(MAGIC, self.algorithm.name.encode(), DIGEST_BLOCK, self.size, len(self.digests))
        return head + b"".join(self.digests)

    def folded(self) -> str:
        """The block digest of the image these digests describe (as recorded in manifests)."""
        bd = BlockDigest(self.algorithm)
        for d in self.digests:
            bd.add(d)
        return bd.hexdigest()


def name_for(image_name: str) -> str:
    return image_name + SUFFIX


def write(od: OutDir, name: str, car: Sidecar, fsync: bool = True) -> dict[str, str]:
    """Write ``car`` as ``name`` in the output directory (atomically); the entry's ``blocks`` field."""
    data = car.encode()
    od.write_file(name, data, fsync=fsync)
    return {"file": name, "sha256": hashlib.sha256(data).hexdigest()}


def field_of(field: object, where: str) -> tuple[str, str]:
    """(file name, sha256) of an entry's ``blocks`` field: a plain name, never a path."""
    if not isinstance(field, dict) or not isinstance(field.get("file"), str) or not isinstance(field.get("sha256"),
                                                                                              str):
        raise FormatError("the manifest entry has no block digests (export with --warm first)", where)
    fname = field["file"]
    if "/" in fname or fname in ("", ".", "..") or any(ord(c) < 32 or ord(c) == 127 for c in fname):
        raise FormatError(f"refusing block-digest file name {fname!r}", where)
    return fname, field["sha256"]


def load(outdir: Path, field: object, size: int, algorithm: Algorithm | None = None) -> Sidecar:
    """The sidecar an entry's ``blocks`` field names, checked against its sha256, the disk size and
    the algorithm; FormatError (exit 3) naming the file otherwise."""
    fname, sha = field_of(field, str(outdir))
    path = outdir / fname
    try:
        st = os.lstat(path)
    except OSError as e:
        raise IOFailure(f"cannot read {path}: {e.strerror}") from e
    if not stat.S_ISREG(st.st_mode):
        raise FormatError("block-digest file is not a regular file", str(path))
    count = block_count(size)
    want = _HEADER.size + count * DIGEST_BYTES
    if count > MAX_BLOCKS or st.st_size != want:
        raise FormatError(f"block-digest file has {st.st_size} bytes, {want} expected for a {size}-byte disk",
                          str(path))
    raw = read_bounded(path, want)
    if len(raw) != want or hashlib.sha256(raw).hexdigest() != sha:
        raise FormatError("block-digest file does not match the sha256 its manifest entry records", str(path))
    return parse(raw, size, str(path), algorithm)


def parse(raw: bytes, size: int, where: str, algorithm: Algorithm | None = None) -> Sidecar:
    """The sidecar at the start of ``raw`` (its header checked against ``size`` and ``algorithm``)."""
    count = block_count(size)
    if count > MAX_BLOCKS or len(raw) < _HEADER.size + count * DIGEST_BYTES:
        raise FormatError(f"block-digest file has {len(raw)} bytes, too few for a {size}-byte disk", where)
    magic, algo, block, rsize, rcount = _HEADER.unpack_from(raw)
    if magic != MAGIC or block != DIGEST_BLOCK or rsize != size or rcount != count:
        raise FormatError(f"block-digest header at offset 0 is wrong (magic {magic!r}, block {block}, size {rsize}, "
                          f"count {rcount}; expected {size} bytes in {count} blocks of {DIGEST_BLOCK})", where)
    found = algorithm_of(algo.rstrip(b"\0").decode("ascii", "replace") + ":0")
    if algorithm is not None and found != algorithm:
        raise FormatError(f"block digests are {found.name}, not {algorithm.name}", where)
    o = _HEADER.size
    return Sidecar(found, size, [raw[o + i * DIGEST_BYTES : o + (i + 1) * DIGEST_BYTES] for i in range(count)])


# ------------------------------------------------------------------ object storage: the parts table
# An object's sidecar (``<object>.blocks`` beside it, :mod:`.s3sync`) is the sidecar above followed by
# where each multipart part of the object lies, so that a delta pass can copy an unchanged part
# server-side (UploadPartCopy of its byte range) whatever the encoding (a gzip'd block's length in
# the object is known only once it is compressed)::
#
#     magic   8 bytes  b"E2KPRT1\n"
#     count   8 bytes  number of parts
#     then count x 72 bytes: first block, offset and length in the object (u64 each), the part's
#     SHA-256 (32 bytes) and MD5 (16 bytes: its ETag, for services that answer no checksum)
#
# Parts start at block 0, their first blocks increase, their byte ranges tile the object.
PARTS_MAGIC = b"E2KPRT1\n"
_PARTS_HEAD = struct.Struct("<8sQ")
_PART = struct.Struct("<QQQ32s16s")
MAX_PARTS = 10_000  # S3's limit


@dataclass(frozen=True)
class Part:
    first: int  # index of its first block
    offset: int  # where it starts in the object
    length: int  # its bytes in the object
    sha256: bytes
    md5: bytes


def encode_with_parts(car: Sidecar, parts: list[Part]) -> bytes:
    return car.encode() + _PARTS_HEAD.pack(PARTS_MAGIC, len(parts)) + b"".join(
        _PART.pack(p.first, p.offset, p.length, p.sha256, p.md5) for p in parts)


def max_bytes_with_parts(size: int) -> int:
    """The largest object sidecar of a ``size``-byte disk: what a read of one is bounded to."""
    return _HEADER.size + block_count(size) * DIGEST_BYTES + _PARTS_HEAD.size + MAX_PARTS * _PART.size


def parse_with_parts(raw: bytes, size: int, where: str) -> tuple[Sidecar, list[Part]]:
    """An object's sidecar: the digests and the parts table, every field checked (FormatError)."""
    car = parse(raw, size, where)
    o = _HEADER.size + len(car.digests) * DIGEST_BYTES
    if len(raw) < o + _PARTS_HEAD.size:
        raise FormatError(f"block-digest object ends at offset {len(raw)}, before its parts table", where)
    magic, n = _PARTS_HEAD.unpack_from(raw, o)
    o += _PARTS_HEAD.size
    if magic != PARTS_MAGIC or not 1 <= n <= MAX_PARTS or len(raw) != o + n * _PART.size:
        raise FormatError(f"parts table at offset {o - _PARTS_HEAD.size} is wrong (magic {magic!r}, {n} parts, "
                          f"{len(raw) - o} bytes)", where)
    parts = [Part(*_PART.unpack_from(raw, o + k * _PART.size)) for k in range(n)]
    end = 0
    for k, p in enumerate(parts):
        prev_first = parts[k - 1].first if k else -1
        if p.offset != end or p.length <= 0 or p.first <= prev_first or p.first >= len(car.digests) \
                or (k == 0 and p.first != 0):
            raise FormatError(f"part {k + 1} (table offset {o + k * _PART.size}) does not follow part {k}: block "
                              f"{p.first}, bytes {p.offset}+{p.length}", where)
        end += p.length
    return car, parts
