# SPDX-License-Identifier: Apache-2.0
"""Reference block digests written from the documented recipe (README, export/digest.py), using
hashlib and blake3 directly: independent of euca2kvm's own hashing code."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blake3

BLOCK = 4 << 20
HASHES: dict[str, Callable[[], Any]] = {"blkblake3-4m": blake3.blake3, "blksha256-4m": hashlib.sha256}
DEFAULT = "blkblake3-4m"


def _h(name: str, data: bytes | bytearray = b"") -> Any:
    h = HASHES[name]()
    h.update(data)
    return h


def blkdigest(data: bytes | bytearray, name: str = DEFAULT) -> str:
    """Block digest of bytes in memory."""
    outer = _h(name)
    for i in range(0, len(data), BLOCK):
        outer.update(_h(name, data[i : i + BLOCK]).digest())
    return f"{name}:{outer.hexdigest()}"


def patched_blkdigest(size: int, patches: list[tuple[int, bytes]], name: str = DEFAULT) -> str:
    """Block digest of ``size`` zero bytes overlaid with the patches."""
    outer = _h(name)
    for b in range(0, size, BLOCK):
        n = min(BLOCK, size - b)
        buf = bytearray(n)
        for o, p in patches:
            lo, hi = max(o, b), min(o + len(p), b + n)
            if lo < hi:
                buf[lo - b : hi - b] = p[lo - o : hi - o]
        outer.update(_h(name, buf).digest())
    return f"{name}:{outer.hexdigest()}"


def file_blkdigest(path: Path, name: str = DEFAULT) -> str:
    """Block digest of a (sparse) file; blocks that are holes are hashed as zeros without reading."""
    outer = _h(name)
    size = path.stat().st_size
    fd = os.open(path, os.O_RDONLY)
    try:
        for b in range(0, size, BLOCK):
            n = min(BLOCK, size - b)
            try:
                nxt = os.lseek(fd, b, os.SEEK_DATA)
            except OSError:
                nxt = size
            data = bytes(n) if nxt >= b + n else os.pread(fd, n, b)
            outer.update(_h(name, data).digest())
    finally:
        os.close(fd)
    return f"{name}:{outer.hexdigest()}"


def file_sha256(path: Path | str) -> str:
    """Plain sha256 of a whole file (what ``sha256sum`` prints), read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(BLOCK):
            h.update(b)
    return h.hexdigest()
