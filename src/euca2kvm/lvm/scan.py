# SPDX-License-Identifier: Apache-2.0
"""Scan devices for PVs, pick each VG's newest valid metadata, match PVs to files.

lvm2 reads every non-ignored metadata area of every PV and uses the VG copy with the highest
seqno. VGs are grouped by their id, not their name: two containers may hold VGs of the same name
(every Eucalyptus volume created by the same legacy code could collide). A copy with a bad
checksum or unparsable text is skipped with a warning; a PV none of whose copies is valid, and
that no valid VG claims, is reported as an error.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from ..errors import FormatError
from .device import Device
from .extents import ExtentMap
from .label import PVLabel, find_label, format_uuid
from .mda import MetadataCopy, read_mda_header, read_metadata
from .model import LV, VG, vg_from_text
from .resolve import Context
from .segtypes import user_target, user_visible


@dataclass
class VolumeGroup:
    """A VG as found on the scanned devices."""

    vg: VG
    copy: MetadataCopy  # the copy in use (highest seqno)
    devices: dict[str, Device | None]  # PV name -> device
    missing: dict[str, str]  # PV name -> why it is unavailable
    warnings: list[str] = field(default_factory=list)
    _ctx: Context | None = None
    _visible: tuple[LV, ...] | None = None

    @property
    def name(self) -> str:
        return self.vg.name

    def lv_map(self, lv: str | LV) -> ExtentMap:
        """Extent map of an LV; raises FormatError/UnsupportedError naming the LV when it cannot be read.

        A classic snapshot's COW LV (the name lvm shows for the snapshot) gives the snapshot view.
        """
        if self._ctx is None:
            self._ctx = Context(self.vg, self.devices, self.missing)
        return self._ctx.lv_map(user_target(self.vg, lv if isinstance(lv, str) else lv.name))

    def visible_lvs(self) -> list[LV]:
        """The LVs lvm shows (lvm2's lv_is_visible: COW LVs instead of the hidden snapshotN)."""
        if self._visible is None:  # computed once: callers ask per LV
            self._visible = tuple(lv for lv in self.vg.lvs.values() if user_visible(self.vg, lv))
        return list(self._visible)

    def files(self) -> list[str]:
        return sorted({d.path for d in self.devices.values() if d is not None})


E = TypeVar("E", bound=Exception)  # the error types read_copies skips and reports


@dataclass
class ScanResult:
    vgs: list[VolumeGroup] = field(default_factory=list)
    plain: list[Device] = field(default_factory=list)  # no LVM label
    orphans: list[PVLabel] = field(default_factory=list)  # PV with no VG metadata anywhere
    errors: dict[str, FormatError] = field(default_factory=dict)  # device -> why unusable
    warnings: list[str] = field(default_factory=list)
    labels: dict[str, PVLabel] = field(default_factory=dict)  # device str -> label


def read_copies(dev: Device, label: PVLabel, skip: tuple[type[E], ...],
                ) -> tuple[list[tuple[VG, MetadataCopy]], list[E]]:
    """Every readable metadata copy in ``label``'s areas on ``dev``, parsed, and the errors (of the
    ``skip`` types) of the copies that did not read, in area order."""
    copies: list[tuple[VG, MetadataCopy]] = []
    errors: list[E] = []
    for area in label.metadata_areas:
        try:
            header = read_mda_header(dev, area)
            copy = read_metadata(header)
            if copy is None:
                continue
            vg = vg_from_text(copy.text, dev.path, header.where + copy.locn.offset)
        except skip as e:
            errors.append(e)
            continue
        copies.append((vg, copy))
    return copies, errors


def scan(devices: Iterable[Device]) -> ScanResult:
    res = ScanResult()
    by_uuid: dict[str, list[PVLabel]] = {}
    copies: list[tuple[VG, MetadataCopy]] = []
    bad_copies: dict[str, list[FormatError]] = {}
    for dev in devices:
        try:
            label = find_label(dev)
        except FormatError as e:
            res.errors[str(dev)] = e
            continue
        if label is None:
            res.plain.append(dev)
            continue
        res.labels[str(dev)] = label
        by_uuid.setdefault(label.uuid, []).append(label)
        found, bad = read_copies(dev, label, (FormatError,))
        copies.extend(found)
        for err in bad:
            res.warnings.append(f"skipped a metadata copy: {err}")
            bad_copies.setdefault(str(dev), []).append(err)

    groups: dict[str, list[tuple[VG, MetadataCopy]]] = {}
    for vg, copy in copies:
        groups.setdefault(vg.id, []).append((vg, copy))
    claimed: set[str] = set()
    for _vg_id, group in groups.items():
        group.sort(key=lambda t: t[0].seqno, reverse=True)
        vg, copy = group[0]
        rival = next((oc for o, oc in group[1:] if o.seqno == vg.seqno and oc.text != copy.text), None)
        if rival is not None:
            _refuse_conflict(res, vg, copy, rival, group, by_uuid, claimed)
            continue
        vgv = _assemble(vg, copy, by_uuid)
        for older, ocopy in group[1:]:
            if older.seqno < vg.seqno:
                vgv.warnings.append(f"VG {vg.name}: older metadata (seqno {older.seqno} < {vg.seqno}) in "
                                    f"{ocopy.origin} ignored")
            elif ocopy.text != copy.text:
                vgv.warnings.append(f"VG {vg.name}: two different copies with seqno {vg.seqno}; using "
                                    f"{copy.origin}")
        for pv in vg.pvs.values():
            claimed.add(pv.uuid)
        res.vgs.append(vgv)
    for uuid, labels in by_uuid.items():
        if uuid in claimed:
            continue
        for label in labels:
            dev = label.device
            reasons = bad_copies.get(str(dev))
            if reasons:
                res.errors[str(dev)] = FormatError(
                    f"PV {format_uuid(uuid)} has no valid metadata copy: " + "; ".join(map(str, reasons)),
                    dev.path, reasons[0].offset)
            else:
                res.orphans.append(label)
    res.vgs.sort(key=lambda v: (v.name, v.vg.id))
    return res


def _refuse_conflict(res: ScanResult, vg: VG, copy: MetadataCopy, rival: MetadataCopy,
                     group: list[tuple[VG, MetadataCopy]], by_uuid: dict[str, list[PVLabel]],
                     claimed: set[str]) -> None:
    """Two copies of one VG with the same seqno and different text: which is the VG is unknowable.

    lvm2 2.03 warns ("found mismatch with other metadata") and uses the copy of whichever device it
    scanned first; an export must not depend on file order, so every PV of the VG is refused.
    """
    err = FormatError(f"VG {vg.name} (id {vg.id}): two different metadata copies with the same seqno "
                      f"{vg.seqno}, in {copy.origin} and in {rival.origin}; refusing to guess which one "
                      "describes the VG (conflicting metadata)", copy.header.device.path,
                      copy.header.where + copy.locn.offset)
    uuids = {pv.uuid for v, _ in group for pv in v.pvs.values()}
    for uuid in uuids:
        claimed.add(uuid)
        for label in by_uuid.get(uuid, []):
            res.errors[str(label.device)] = err
    for _, c in group:
        res.errors[str(c.header.device)] = err


def _assemble(vg: VG, copy: MetadataCopy, by_uuid: dict[str, list[PVLabel]]) -> VolumeGroup:
    devices: dict[str, Device | None] = {}
    missing: dict[str, str] = {}
    for name, pv in vg.pvs.items():
        labels = by_uuid.get(pv.uuid, [])
        if len(labels) > 1:
            paths = ", ".join(str(lab.device) for lab in labels)
            devices[name] = None
            missing[name] = f"the same PV uuid appears in several sources ({paths}); refusing to guess"
        elif not labels:
            devices[name] = None
            hint = f" (last seen as {pv.device_hint})" if pv.device_hint else ""
            missing[name] = f"no scanned source carries PV uuid {pv.id}{hint}"
        else:
            devices[name] = labels[0].device
    return VolumeGroup(vg, copy, devices, missing)
