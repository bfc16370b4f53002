# SPDX-License-Identifier: Apache-2.0
"""membuf: the I/O buffers are page-aligned and zeroed, and ``same`` compares bytes, not objects (the
read back of a rewritten block through it: tests/export/test_warm.py)."""

from __future__ import annotations

import ctypes
import mmap
import os

import pytest

from euca2kvm import membuf
from euca2kvm.export import copy
from euca2kvm.export.digest import DIGEST_BLOCK


def address(view: memoryview) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


@pytest.mark.parametrize("n", [1, 4095, 4096, 512 * 1024 + 17, DIGEST_BLOCK])
def test_aligned_buffers_are_writable_zeroed_and_start_on_a_page(n: int) -> None:
    view = membuf.aligned(n)
    assert len(view) == n and not view.readonly
    assert address(view) % mmap.PAGESIZE == 0
    assert view.tobytes() == bytes(n)
    view[n - 1] = 7
    assert view[n - 1] == 7


def test_an_empty_buffer_is_empty() -> None:
    assert len(membuf.aligned(0)) == 0


def test_the_movers_block_buffers_are_aligned() -> None:
    """The buffers the kernel copies blocks into (the mover's pool): a bytearray's start 16 bytes into
    its malloc chunk is what made those copies 4-5x slower."""
    pool = copy.BufferPool(3)
    bufs = [pool.get() for _ in range(3)]
    assert all(address(b) % mmap.PAGESIZE == 0 and len(b) == DIGEST_BLOCK for b in bufs)
    assert len({address(b) for b in bufs}) == 3
    pool.put(bufs[0])
    assert pool.get() is bufs[0]


def test_same_compares_bytes() -> None:
    data = os.urandom(DIGEST_BLOCK)
    a, b = membuf.aligned(DIGEST_BLOCK), membuf.aligned(DIGEST_BLOCK)
    a[:] = data
    b[:] = data
    assert membuf.same(a, b)
    for at in (0, 4096, DIGEST_BLOCK - 1):
        b[at] ^= 1
        assert not membuf.same(a, b)
        b[at] ^= 1
    assert not membuf.same(a, b[:-1])
    assert membuf.same(a[:0], b[:0])
    assert membuf.same(memoryview(data), a)  # a read-only side is compared too
    assert not membuf.same(memoryview(bytes(DIGEST_BLOCK)), a)

