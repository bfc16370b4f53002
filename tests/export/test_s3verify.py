# SPDX-License-Identifier: Apache-2.0
"""S3 verify's stream fold: object bytes (raw or gzip members) digested through copy_blocks, exactly the
recorded size or a format error."""

from __future__ import annotations

import gzip
import random

import pytest

from euca2kvm.errors import FormatError
from euca2kvm.export.digest import SHA256
from euca2kvm.export.s3verify import _digest, _inflate
from refdigest import blkdigest

MiB = 1 << 20


def disk() -> bytes:
    rng = random.Random("s3verify")
    data = bytearray(9 * MiB + 777)  # whole blocks, a zero block, an odd tail
    data[: MiB] = rng.randbytes(MiB)
    data[8 * MiB :] = rng.randbytes(len(data) - 8 * MiB)
    return bytes(data)


def chunks(data: bytes, n: int) -> list[bytes]:
    return [data[i : i + n] for i in range(0, len(data), n)]


@pytest.mark.parametrize("chunk", [1, 100_000, 3 * MiB])
def test_raw_stream_digest_is_the_block_digest(chunk: int) -> None:
    data = disk()
    if chunk == 1:  # a byte at a time costs too long for the whole disk: a short one
        data = data[: 3000]
    want = blkdigest(data)
    assert _digest(iter(chunks(data, chunk)), len(data), want, "s3://b/x.raw") == want


def test_gzip_members_inflate_to_the_same_digest() -> None:
    data = disk()
    gz = b"".join(gzip.compress(p, compresslevel=1, mtime=0) for p in chunks(data, 4 * MiB))
    want = blkdigest(data, SHA256.name)  # the algorithm the recorded digest names is the one used
    where = "s3://b/x.raw.gz"
    assert _digest(_inflate(iter(chunks(gz, 65536)), where), len(data), want, where) == want


@pytest.mark.parametrize("delta", [-1, 1])
def test_a_stream_shorter_or_longer_than_recorded_is_a_format_error(delta: int) -> None:
    data = disk()
    want = blkdigest(data)
    with pytest.raises(FormatError):
        _digest(iter(chunks(data, MiB)), len(data) + delta, want, "s3://b/x.raw")
