# SPDX-License-Identifier: Apache-2.0
"""What an LVM export depends on besides its bytes: the VG and LV uuids and the metadata copy its
extent map was built from (the winning copy's seqno and checksum).

A re-run reuses an output only when the identity recorded in its manifest entry is the current
one (a container whose VG was rewritten, or replaced by another VG with the same names and a
restored mtime, is exported again), and after a copy the VG's metadata areas are read again
from the containers with the same reader as the scan: a different identity means the metadata
changed while exporting, and nothing is published.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import FormatError, IOFailure

if TYPE_CHECKING:  # the LVM reader is loaded by the scan that built a group: an RBD export never loads it
    from ..lvm.mda import MetadataCopy
    from ..lvm.model import VG
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
    """The identity as the containers hold it now: every metadata area of the VG's PVs read again,
    and the newest valid copy of this VG chosen, as the scan chose it (a copy that does not read is
    skipped, as the scan skips it; a rewrite that tears the winning copy lets an older one win,
    which is a change too).

    IOFailure (exit 5) naming the files when no valid copy of the VG is left (rewritten,
    truncated, a new PV label over it): for an export in progress that is a source change too.
    """
    from ..lvm.label import find_label
    from ..lvm.scan import read_copies

    best: tuple[tuple[int, bool], VG, MetadataCopy] | None = None
    for dev in (d for d in group.devices.values() if d is not None):
        try:
            label = find_label(dev)
        except (FormatError, IOFailure):
            continue
        if label is None:
            continue
        for vg, copy in read_copies(dev, label, skip=(FormatError, IOFailure))[0]:
            # Among copies of one seqno the scan's own wins (two different ones: the scan warned).
            rank = (vg.seqno, copy.locn.checksum == group.copy.locn.checksum)
            if vg.id == group.vg.id and (best is None or rank > best[0]):
                best = (rank, vg, copy)
    if best is None:
        raise IOFailure(f"{', '.join(group.files())}: no valid copy of VG {group.vg.name}'s metadata is left; "
                        "it changed while exporting")
    return _identity(best[1], best[2], lv)


def source_identity(group: VolumeGroup | None, lv: str | None) -> dict[str, Any]:
    """Keyword arguments for :class:`.pipeline.Source` of a volume: the identity at scan time and
    the function that re-reads it. Files without LVM (raw snapshots) have none: {}."""
    if group is None or lv is None:
        return {}
    recheck: Callable[[], Identity] = functools.partial(reread, group, lv)
    return {"identity": _identity(group.vg, group.copy, lv), "recheck": recheck}
