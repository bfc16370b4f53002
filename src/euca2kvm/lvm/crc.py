# SPDX-License-Identifier: Apache-2.0
"""LVM2's CRC (lib/misc/crc.c): reflected CRC-32, polynomial 0xEDB88320, initial value
0xF597A6CF and no final XOR. zlib implements the same polynomial with a final XOR and takes the
previous (final-XORed) value as its start, hence the two XORs. Chainable over pieces:
``calc_crc(b, calc_crc(a)) == calc_crc(a + b)``.
"""

from __future__ import annotations

import zlib

INITIAL_CRC = 0xF597A6CF


def calc_crc(data: bytes | memoryview, initial: int = INITIAL_CRC) -> int:
    return zlib.crc32(data, initial ^ 0xFFFFFFFF) ^ 0xFFFFFFFF
