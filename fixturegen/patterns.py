# SPDX-License-Identifier: Apache-2.0
"""Deterministic write patterns named by the ``wr`` lines of ``guest/create.sh``.

Every 4 KiB block carries its pattern name and block number, so a misplaced block changes the
hash, while the data still compresses to a few bytes per block.
"""

from __future__ import annotations

import re
from pathlib import Path

BLOCK = 4096  # label granularity; equals the guest dd block size
_WR = re.compile(r"^wr ([a-z0-9-]+) (\d+) ([a-z0-9-]+) (\d+)$", re.M)


def writes(create_script: str) -> list[tuple[str, int, str, int]]:
    """(pattern name, size KiB, dm name, offset KiB) for each ``wr`` line."""
    return [(m[1], int(m[2]), m[3], int(m[4])) for m in _WR.finditer(create_script)]


def pattern(name: str, size: int) -> bytes:
    out = bytearray()
    for k in range(size // BLOCK):
        line = f"euca2kvm fixture {name} block {k:06d}\n".encode()
        out += (line * (BLOCK // len(line) + 1))[:BLOCK]
    return bytes(out)


def write_patterns(create_script: str, dest: Path) -> int:
    """Write /pat/NAME.bin files under ``dest``; returns the number of bytes written."""
    dest.mkdir(parents=True, exist_ok=True)
    total = 0
    for name, kib, _dm, off in writes(create_script):
        if kib % 4 or off % 4:
            raise ValueError(f"write {name}: size and offset must be multiples of 4 KiB")
        data = pattern(name, kib * 1024)
        (dest / f"{name}.bin").write_bytes(data)
        total += len(data)
    return total
