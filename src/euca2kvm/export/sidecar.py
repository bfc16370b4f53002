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


def load(outdir: Path, field: object, size: int, algorithm: Algorithm | None = None) -> Sidecar:
    """The sidecar an entry's ``blocks`` field names, checked against its sha256, the disk size and
    the algorithm; FormatError (exit 3) naming the file otherwise."""
    if not isinstance(field, dict) or not isinstance(field.get("file"), str) or not isinstance(field.get("sha256"),
                                                                                              str):
        raise FormatError("the manifest entry has no block digests (export with --warm first)", str(outdir))
    fname = field["file"]
    if "/" in fname or fname in ("", ".", ".."):
        raise FormatError(f"refusing block-digest file name {fname!r}", str(outdir))
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
    if len(raw) != want or hashlib.sha256(raw).hexdigest() != field["sha256"]:
        raise FormatError("block-digest file does not match the sha256 its manifest entry records", str(path))
    magic, algo, block, rsize, rcount = _HEADER.unpack_from(raw)
    if magic != MAGIC or block != DIGEST_BLOCK or rsize != size or rcount != count:
        raise FormatError(f"block-digest header at offset 0 is wrong (magic {magic!r}, block {block}, size {rsize}, "
                          f"count {rcount}; expected {size} bytes in {count} blocks of {DIGEST_BLOCK})", str(path))
    found = algorithm_of(algo.rstrip(b"\0").decode("ascii", "replace") + ":0")
    if algorithm is not None and found != algorithm:
        raise FormatError(f"block digests are {found.name}, not {algorithm.name}", str(path))
    o = _HEADER.size
    return Sidecar(found, size, [raw[o + i * DIGEST_BYTES : o + (i + 1) * DIGEST_BYTES] for i in range(count)])
