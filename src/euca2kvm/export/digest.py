# SPDX-License-Identifier: Apache-2.0
"""The block digest recorded in manifests.

``blksha256-4m:<hex>`` is ``sha256(sha256(block_0) || sha256(block_1) || ...)`` where block i is
bytes ``[i * 4 MiB, (i + 1) * 4 MiB)`` of the disk (the last block may be shorter). Blocks hash
independently, so they hash in parallel, and the digest of an all-zero block is known in advance,
so holes cost no hashing at all. To recompute it with standard tools::

    python3 -c 'import hashlib,sys; f=open(sys.argv[1],"rb"); h=hashlib.sha256()
    while b := f.read(4 << 20): h.update(hashlib.sha256(b).digest())
    print("blksha256-4m:" + h.hexdigest())' disk.raw

``--sha256`` additionally records the plain sha256 of the whole disk (what ``sha256sum`` prints).
"""

from __future__ import annotations

import functools
import hashlib

from ..units import MiB

# 4 MiB: large enough that per-block overhead (a syscall, a digest) is noise, small enough that
# a few blocks in flight per worker stay well under the memory budget; same as ovirt's blkhash.
DIGEST_BLOCK = 4 * MiB
ALGORITHM = "blksha256-4m"


@functools.lru_cache(maxsize=8)
def zero_block_digest(length: int = DIGEST_BLOCK) -> bytes:
    return hashlib.sha256(bytes(length)).digest()


class BlockDigest:
    """Folds per-block digests, supplied in block order, into the final digest."""

    def __init__(self) -> None:
        self._outer = hashlib.sha256()
        self.blocks = 0

    def add(self, block_digest: bytes) -> None:
        self._outer.update(block_digest)
        self.blocks += 1

    def add_zero(self, length: int) -> None:
        self.add(zero_block_digest(length))

    def hexdigest(self) -> str:
        return f"{ALGORITHM}:{self._outer.hexdigest()}"


def block_count(size: int) -> int:
    return (size + DIGEST_BLOCK - 1) // DIGEST_BLOCK
