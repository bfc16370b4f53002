# SPDX-License-Identifier: Apache-2.0
"""Find Eucalyptus volumes in source paths: directories, container files, block devices.

* Overlay volumes: one container file per volume, named by the volume id (``vol-XXXXXXXX``, or
  ``volume-XXXXXXXX`` on some installs), holding one VG with one LV. Names inside vary by
  release (``euca-ebs-storage-vg-<id>/euca-<id>``, legacy ``vg-XXXX../lv-XXXX..``), so the id
  comes from the LV's tag, then the ``euca-<id>`` LV name, then the container file's name.
* VGs spread over several files (an interrupted snapshot leaves the volume's VG extended onto
  a temporary ``<id><6 chars>`` file) and DAS volume groups (one LV per volume, tagged with
  the volume id) are found the same way: PVs are matched by uuid, not by file name.
* Snapshot files ``snap-XXXXXXXX`` carry no LVM label: the file is the disk.
* Temporary files named like an id plus a suffix are not volumes; they are noted and only used
  as PVs when a VG needs them.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..blocks import BlockSource, FileOpener
from ..errors import Euca2kvmError, FormatError, UsageError
from ..ids import GZIP_MAGIC, ID_RE, SNAP_GZ_RE, STRAY_RE, is_gzip
from .inuse import LOCAL, Holder, Host, holders

if TYPE_CHECKING:  # the LVM reader is imported by the functions that scan or map: --version, verify,
    # report and manifest never load it
    from ..lvm.device import Device
    from ..lvm.extents import ExtentMap
    from ..lvm.model import LV
    from ..lvm.scan import VolumeGroup

VOLUMES_DIR = "/var/lib/eucalyptus/volumes"
EUCA_LV_PREFIX = "euca-"
# A directory with more entries than this is not a volumes directory; refuse rather than
# open a million files.
MAX_DIR_ENTRIES = 100_000


class NotAVolume(FormatError):
    """A file named explicitly that holds no LVM label and is no snapshot file: not a container (an
    image file, say; ``inspect`` reads those as images)."""


@dataclass
class Volume:
    id: str
    kind: str  # overlay | das | lvm | snapshot | snapshot-gz
    size: int
    files: list[str]
    vg: str | None = None
    lv: str | None = None
    segment_types: list[str] = field(default_factory=list)
    group: VolumeGroup | None = None
    problem: str | None = None  # why it cannot be exported
    problem_error: Euca2kvmError | None = None
    in_use: list[Holder] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    opener: FileOpener | None = None  # how this volume's files are read (None: local files)
    blocks_factory: Callable[[], BlockSource] | None = None  # a non-LVM backend's source (RBD...)

    @property
    def compressed(self) -> bool:
        """A gzip'd snapshot object: streamed by export.gzsource, it has no extent map."""
        return self.kind == "snapshot-gz"

    def extent_map(self) -> ExtentMap:
        if self.problem_error is not None:
            raise self.problem_error
        if self.compressed:
            raise UsageError(f"{self.id} is a gzip'd snapshot object: it can be exported, not mapped")
        if self.blocks_factory is not None:
            raise UsageError(f"{self.id} is a {self.kind} volume: it is read through its block source, not mapped")
        if self.group is not None:
            assert self.lv is not None
            return self.group.lv_map(self.lv)
        from ..lvm.extents import ExtentMap, LinearMapper

        return ExtentMap(self.size, [LinearMapper(0, self.size, self.files[0], 0)] if self.size else [])

    def block_source(self) -> BlockSource:
        """The volume's bytes: the backend's own source, else its extent map read through ``opener``."""
        if self.blocks_factory is not None:
            return self.blocks_factory()
        from ..lvm.source import LvmSource

        return LvmSource(self.extent_map(), self.id, self.opener)

    def local_files(self) -> list[str]:
        """The files an export fingerprints: local ones, or those of an opener that can stamp them
        (``ssh://``); none for a backend's volume."""
        if self.blocks_factory is not None or (self.opener is not None and not hasattr(self.opener, "stamp")):
            return []
        return sorted(self.extent_map().paths())

    @property
    def name(self) -> str:
        return f"{self.vg}/{self.lv}" if self.vg else self.id

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "kind": self.kind,
            "vg": self.vg,
            "lv": self.lv,
            "size": None if self.compressed else self.size,
            "files": self.files,
            "segment_types": self.segment_types,
            "tags": self.tags,
            "in_use": [h.what for h in self.in_use],
            "problem": self.problem,
        }


@dataclass(frozen=True)
class Note:
    """A file found in a source that gives no volume (or not only one): ``path``, ``what`` happens to it
    (``ignored``, ``read as a PV``...) and the ``reason``, raw (escaped by whoever prints it)."""

    path: str
    what: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.what}: {self.reason}"

    def to_json(self) -> dict[str, str]:
        return {"path": self.path, "what": self.what, "reason": self.reason}


@dataclass
class Discovery:
    volumes: list[Volume] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    unusable: dict[str, Euca2kvmError] = field(default_factory=dict)  # file -> why it gave no volume

    def unusable_error(self, ident: str) -> Euca2kvmError | None:
        """Why the file ``ident`` names (a path, or the file name of a scanned file) is no volume."""
        if ident in self.unusable:  # a file named as scanned (an ssh:// URL)
            return self.unusable[ident]
        if os.path.exists(ident):
            return self.unusable.get(os.path.realpath(ident))
        named = [e for p, e in self.unusable.items() if os.path.basename(p) == ident]
        return named[0] if len(named) == 1 else None

    def check_named(self, paths: Iterable[str]) -> None:
        """A file named as a source that is unusable fails with its own error (a corrupt container is a
        format error, exit 3), not with an empty listing."""
        for p in paths:
            err = None if os.path.isdir(p) else self.unusable_error(p)
            if err is not None:
                raise err

    def find(self, ident: str) -> Volume:
        """A volume by id, ``VG/LV`` or container path; UsageError with close matches otherwise.

        An ident that names an unusable file raises that file's error instead.
        """
        hits = [v for v in self.volumes if v.id == ident or v.name == ident]
        if not hits and os.path.exists(ident):
            real = os.path.realpath(ident)
            hits = [v for v in self.volumes if real in v.files]
            if not hits:  # an LV that reads no file (all "zero" segments) lives in its VG's files
                hits = [v for v in self.volumes if not v.files and v.group is not None and real in v.group.files()]
            if len(hits) > 1:
                # A multi-LV VG on this file: only unambiguous when one LV is named after it.
                named = [v for v in hits if v.id == os.path.basename(real)]
                hits = named or hits
        if len(hits) == 1:
            return hits[0]
        err = None if hits else self.unusable_error(ident)
        if err is not None:
            raise err
        if len(hits) > 1:
            raise UsageError(f"{ident!r} is ambiguous: " + ", ".join(f"{v.id} ({v.name} in "
                             f"{', '.join(v.files)})" for v in hits) + "; name it as VG/LV")
        names = sorted({v.id for v in self.volumes} | {v.name for v in self.volumes})
        import difflib  # only to suggest names after a miss

        close = difflib.get_close_matches(ident, names, n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        known = f" ({len(self.volumes)} volumes found)" if self.volumes else " (no volumes found)"
        raise UsageError(f"unknown volume {ident!r}{known}{hint}")


def _expand(paths: Iterable[str], notes: list[Note]) -> tuple[list[str], set[str]]:
    """Files to scan, and the subset named explicitly by the user."""
    files: list[str] = []
    explicit: set[str] = set()
    for p in paths:
        try:
            st = os.stat(p)
        except OSError as e:
            raise UsageError(f"source {p}: {e.strerror}") from e
        if stat.S_ISDIR(st.st_mode):
            try:
                names = sorted(os.listdir(p))
            except OSError as e:
                raise UsageError(f"cannot list {p}: {e.strerror}") from e
            if len(names) > MAX_DIR_ENTRIES:
                raise UsageError(f"{p} has {len(names)} entries; not a volumes directory")
            for n in names:
                full = os.path.join(p, n)
                if n.startswith("."):
                    continue  # our own partial outputs and other hidden files
                try:
                    est = os.stat(full)
                except OSError:
                    continue
                if stat.S_ISREG(est.st_mode) or stat.S_ISBLK(est.st_mode):
                    files.append(os.path.realpath(full))
        elif stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode):
            real = os.path.realpath(p)
            files.append(real)
            explicit.add(real)
        else:
            raise UsageError(f"source {p} is not a directory, regular file or block device")
    return list(dict.fromkeys(files)), explicit


def _lv_id(group: VolumeGroup, lv: LV) -> str:
    for t in lv.tags:
        if ID_RE.match(t):
            return t
    if lv.name.startswith(EUCA_LV_PREFIX) and ID_RE.match(lv.name[len(EUCA_LV_PREFIX):]):
        return lv.name[len(EUCA_LV_PREFIX):]
    if len(group.visible_lvs()) == 1:
        named = [os.path.basename(f) for f in group.files() if ID_RE.match(os.path.basename(f))]
        if len(named) == 1:
            return named[0]
    return f"{group.name}/{lv.name}"


def discover(paths: Iterable[str], check_in_use: bool = True) -> Discovery:
    from ..lvm.device import Device, file_size

    out = Discovery()
    files, explicit = _expand(paths, out.notes)
    devices: list[Device] = []
    for f in files:
        try:
            devices.append(Device(f, 0, file_size(f)))
        except Euca2kvmError as e:
            out.warnings.append(f"{f}: {e}")
            out.unusable[f] = e
    return from_devices(devices, explicit, out, check_in_use)


def from_devices(devices: list[Device], explicit: set[str], out: Discovery, check_in_use: bool = True,
                 host: Host = LOCAL) -> Discovery:
    """Volumes from listed files (local or read through ``Device.reader``): the scan, the volumes and the
    notes, shared by local and remote sources; ``explicit`` are the files named by the user, ``host`` where
    the in-use checks run."""
    from ..lvm.scan import scan

    res = scan(devices)
    out.warnings.extend(res.warnings)
    for dev_name, err in res.errors.items():
        out.warnings.append(f"{dev_name}: unusable: {err.reason}")
        out.unusable[dev_name] = err
    used_by_vg: set[str] = set()
    for g in res.vgs:
        used_by_vg.update(g.files())
        out.warnings.extend(g.warnings)
        visible = g.visible_lvs()
        ids = [_lv_id(g, lv) for lv in visible]
        tagged = sum(1 for i in ids if ID_RE.match(i))
        for lv, vid in zip(visible, ids, strict=True):
            kind = "das" if tagged > 1 else "overlay" if ID_RE.match(vid) else "lvm"
            vol = Volume(id=vid, kind=kind, size=g.vg.lv_size(lv), files=g.files(), vg=g.name,
                         lv=lv.name, segment_types=lv.segment_types, group=g, tags=list(lv.tags))
            try:
                emap = g.lv_map(lv)
                vol.files = sorted(emap.paths())
                vol.size = emap.size  # a COW snapshot's size is its origin's, not its store's
            except Euca2kvmError as e:
                vol.problem = e.reason if isinstance(e, FormatError) else str(e)
                vol.problem_error = e
            out.volumes.append(vol)
        if not visible:
            out.notes.append(Note(g.files()[0] if g.files() else g.name, "no volume",
                                  f"VG {g.name} in {', '.join(g.files())} has no visible LV"))
    for label in res.orphans:
        out.notes.append(Note(label.device.path, "ignored", f"PV {label.uuid_dashed} without VG metadata (orphan PV)"))
    for dev in res.plain:
        base = os.path.basename(dev.path)
        if (SNAP_GZ_RE.match(base) or dev.path in explicit) and _device_is_gzip(dev):
            vid = base[:-3] if base.endswith(".gz") else base
            out.volumes.append(Volume(id=vid, kind="snapshot-gz", size=0, files=[dev.path],
                                      segment_types=["gzip"]))
        elif ID_RE.match(base) and base.startswith("snap-"):
            out.volumes.append(Volume(id=base, kind="snapshot", size=dev.size, files=[dev.path],
                                      segment_types=["raw"]))
        elif dev.path in explicit:
            # The same rule as for a file in a directory, which is ignored: named explicitly, it is an error.
            out.unusable[dev.path] = NotAVolume(
                "no LVM2 label in the first 4 sectors and not a snapshot file (snap-XXXXXXXX): not a volume "
                "container" + (" (a temporary file left by an interrupted snapshot)" if STRAY_RE.match(base) else ""),
                dev.path)
        elif STRAY_RE.match(base):
            out.notes.append(Note(dev.path, "ignored", "a temporary file left by an interrupted Eucalyptus "
                                  "snapshot (name is a volume id plus a suffix)"))
        elif ID_RE.match(base):
            out.notes.append(Note(dev.path, "ignored", "named like a volume but has no LVM label"))
        else:
            out.notes.append(Note(dev.path, "ignored", "not a Eucalyptus volume or snapshot"))
    for f in sorted(used_by_vg):
        base = os.path.basename(f)
        if STRAY_RE.match(base) and not ID_RE.match(base):
            out.notes.append(Note(f, "read as a PV", "temporary file left by an interrupted snapshot; it is a PV "
                                  "of a volume's VG and is read as such"))
    if check_in_use:
        mark_in_use(out.volumes, host)
    out.volumes.sort(key=lambda v: (v.id, v.name))
    return out


def _device_is_gzip(dev: Device) -> bool:
    if dev.reader is None:
        return is_gzip(dev.path)
    try:
        return dev.size >= len(GZIP_MAGIC) and dev.read(0, len(GZIP_MAGIC)) == GZIP_MAGIC
    except Euca2kvmError:
        return False


def mark_in_use(volumes: list[Volume], host: Host = LOCAL) -> None:
    """Fill each volume's ``in_use`` with whatever holds its files or its LV."""
    files = sorted({f for v in volumes for f in v.files})
    lvs = sorted({(v.vg or '', v.lv or '') for v in volumes if v.vg and v.lv})
    found = holders(files, [(vg, lv) for vg, lv in lvs if vg and lv], host)
    for v in volumes:
        v.in_use = [h for h in found if h.path in v.files or h.path == v.name]
