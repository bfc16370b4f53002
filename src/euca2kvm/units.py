# SPDX-License-Identifier: Apache-2.0
"""Size units and formatting."""

from __future__ import annotations

SECTOR = 512  # LVM2 metadata counts in 512-byte sectors whatever the device's sector size
KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40


def human(n: int | float) -> str:
    """Format a byte count with binary units: 1536 -> '1.5 KiB'."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            if unit == "B":
                return f"{int(value)} B"
            return f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
