# SPDX-License-Identifier: Apache-2.0
"""How a segment is named in messages and how its integer parameters are read, for every resolver.

A base of ``lvm/``: the segment-type resolvers (``segtypes``, ``mirrors``, ``resolve``) import it and
it imports only the model, so no import circle runs through these helpers.
"""

from __future__ import annotations

from ..errors import FormatError
from .model import LV, VG, Segment

# Largest integer a segment parameter may hold unless the caller says less: 2^40 extents or
# sectors is far beyond any real VG, small enough that products with an extent size stay exact.
SEG_INT_MAX = 1 << 40


def where(vg: VG, lv: LV, seg: Segment) -> str:
    """``LV vg/lv segmentN``: the place a message about this segment names."""
    return f"LV {vg.name}/{lv.name} segment{seg.index}"


def seg_int(vg: VG, lv: LV, seg: Segment, key: str, default: int | None = None, hi: int = SEG_INT_MAX) -> int:
    """Integer parameter ``key`` of ``seg`` in [0, ``hi``] (``default`` when absent), else FormatError."""
    v = seg.param(key)
    if v is None and default is not None:
        return default
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= hi:
        raise FormatError(f"{where(vg, lv, seg)}: {key} must be an integer in [0, {hi}], found {v!r}")
    return v
