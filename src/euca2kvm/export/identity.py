# SPDX-License-Identifier: Apache-2.0
"""What an LVM export depends on besides its bytes: the VG and LV uuids and the metadata copy its
extent map was built from (the winning copy's seqno and checksum).

A re-run reuses an output only when the identity recorded in its manifest entry is the current
one (a container whose VG was rewritten, or replaced by another VG with the same names and a
restored mtime, is exported again), and after a copy the winning copy's metadata area is read
again from the container with the same reader as the scan: a different identity means the
metadata changed while exporting, and nothing is published.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from ..errors import FormatError, IOFailure
from ..lvm.mda import MetadataCopy, read_mda_header, read_metadata
from ..lvm.model import VG, vg_from_text
from ..lvm.scan import VolumeGroup

Identity = dict[str, Any]


def _identity(vg: VG, copy: MetadataCopy, lv: str) -> Identity:
    found = vg.lvs.get(lv)
    return {
        "vg_uuid": vg.id,
        "lv_uuid": found.id if found is not None else None,
        "seqno": vg.seqno,
        "mda_checksum": f"{copy.locn.checksum:#010x}",
    }


def reread(group: VolumeGroup, lv: str) -> Identity:
    """The identity as the container holds it now: the winning copy's area read again.

    IOFailure (exit 5) naming the file when the area no longer reads as VG metadata (rewritten,
    truncated, or a new PV label over it): for an export in progress that is a source change too.
    """
    header = group.copy.header
    try:
        copy = read_metadata(read_mda_header(header.device, header.area))
        if copy is None:
            raise FormatError("the metadata area holds no committed copy any more", header.device.path,
                              header.where)
        vg = vg_from_text(copy.text, header.device.path, header.where + copy.locn.offset)
    except FormatError as e:
        raise IOFailure(f"{header.device.path}: the VG metadata changed while exporting: {e}") from e
    return _identity(vg, copy, lv)


def source_identity(group: VolumeGroup | None, lv: str | None) -> dict[str, Any]:
    """Keyword arguments for :class:`.pipeline.Source` of a volume: the identity at scan time and
    the function that re-reads it. Files without LVM (raw snapshots) have none: {}."""
    if group is None or lv is None:
        return {}
    recheck: Callable[[], Identity] = functools.partial(reread, group, lv)
    return {"identity": _identity(group.vg, group.copy, lv), "recheck": recheck}
