# SPDX-License-Identifier: Apache-2.0
"""``euca2kvm inspect ID``: VG, PV and LV details and the extent map of one volume."""

from __future__ import annotations

import argparse
import itertools
import os
from typing import Any

from ..blocks import BlockReader
from ..errors import UsageError
from ..eucalyptus.discovery import NotAVolume, Volume
from ..kvm.guest import GuestReport, inspect_disk, open_image
from ..kvm.guestfiles import attach_config
from ..kvm.imagefile import Reader
from ..lvm.extents import ExtentMap, Kind
from ..lvm.mirrors import MirrorReport, check_mirrors
from ..lvm.reader import ExtentReader
from ..rbd.sources import RbdRef
from ..units import human
from .common import add_sources, console, esc, print_json, resolve_volumes

# An LV striped in 64 KiB chunks has millions of extents; print the first ones only.
MAX_EXTENTS_SHOWN = 64
# Segment keys the segment line shows already (its extents and type), left out of its parameters.
SHOWN_SEGMENT_KEYS = frozenset({"start_extent", "extent_count", "type"})


def build_parser(sub: Any) -> None:
    p = sub.add_parser("inspect", help="show VG/PV/LV details and the extent map of a volume",
                       description="Show one volume: its VG, PVs and LV segments as the metadata records them, "
                                   "the extent map euca2kvm reads, and the guest disk inside (partition table, "
                                   "filesystems, boot loader and a verdict). An image file that is not a "
                                   "container (an exported qcow2 or raw disk) gets the guest section only. "
                                   "Nothing is written.")
    p.add_argument("id", metavar="ID", help="volume id, VG/LV, or path of a container, snapshot or image file")
    add_sources(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--extents", type=int, default=MAX_EXTENTS_SHOWN, metavar="N",
                   help=f"how many extents to list (default {MAX_EXTENTS_SHOWN})")
    p.add_argument("--check-mirrors", action="store_true",
                   help="compare every leg of a raid1/mirror LV and report the first difference")
    p.add_argument("--no-guest", dest="guest", action="store_false",
                   help="skip the guest section (partition table, filesystems, boot loader, verdict)")
    p.set_defaults(func=do_inspect)


def describe(vol: Volume, max_extents: int, guest: bool = True,
             reports: dict[str, GuestReport] | None = None) -> dict[str, Any]:
    """The volume as a dict; ``reports["guest"]`` receives the guest report itself (for printing it
    without reading the guest again)."""
    out: dict[str, Any] = {"volume": vol.to_json()}
    g = vol.group
    if g is not None:
        vg = g.vg
        out["vg"] = {"name": vg.name, "id": vg.id, "seqno": vg.seqno, "extent_size": vg.extent_size,
                     "status": list(vg.status), "metadata_from": g.copy.origin,
                     "metadata_wrapped": g.copy.wrapped, "warnings": g.warnings}
        out["pvs"] = [{"name": pv.name, "id": pv.id, "file": (d.path if (d := g.devices.get(pv.name)) else None),
                       "missing": g.missing.get(pv.name), "pe_start": pv.pe_start, "pe_count": pv.pe_count,
                       "dev_size": pv.dev_size, "status": list(pv.status)} for pv in vg.pvs.values()]
        assert vol.lv is not None
        lv = vg.lvs[vol.lv]
        out["lv"] = {"name": lv.name, "id": lv.id, "status": list(lv.status), "tags": list(lv.tags),
                     "size": vg.lv_size(lv),
                     "segments": [{"index": s.index, "start_extent": s.start_extent,
                                   "extent_count": s.extent_count, "type": s.type, "flags": list(s.flags),
                                   "segment_type": s.shown_type,
                                   "params": {k: v for k, v in s.params.items() if not isinstance(v, dict)}}
                                  for s in lv.segments]}
    if vol.problem is None and vol.blocks_factory is not None:
        return _describe_blocks(vol, out, max_extents, guest, reports)
    if vol.problem is None and not vol.compressed:
        emap: ExtentMap = vol.extent_map()
        out["extent_map"] = emap.describe()
        shown = list(itertools.islice(emap.extents(), max_extents + 1))
        out["extents"] = [e.to_json() for e in shown[:max_extents]]
        out["extents_truncated"] = len(shown) > max_extents
        if guest and Kind.ERROR not in emap.kinds():
            with ExtentReader(emap, vol.id) as reader:
                report = guest_report(reader, vol.id)
            out["guest"] = report.to_dict()
            if reports is not None:
                reports["guest"] = report
    return out


def _describe_blocks(vol: Volume, out: dict[str, Any], max_extents: int, guest: bool,
                     reports: dict[str, GuestReport] | None) -> dict[str, Any]:
    """A backend's volume (RBD): its own facts (the parent chain), its ranges and the guest inside."""
    ref = vol.blocks_factory
    if isinstance(ref, RbdRef):
        f = ref.facts
        out["rbd"] = {"image": ref.spec, "id": f.id, "object_size": f.object_size, "watchers": f.watchers,
                      "parents": [{"pool": p.pool, "image": p.image, "snapshot": p.snap, "overlap": p.overlap}
                                  for p in f.chain],
                      "snapshots": [{"name": n, "size": sz, "protected": pr} for n, sz, pr in f.snapshots]}
    with BlockReader(vol.block_source()) as reader:
        src = reader.source
        shown = list(itertools.islice(src.ranges(0, src.size), max_extents + 1))
        out["extents"] = [{"start": r.start, "length": r.length, "kind": r.kind.value, "path": src.name,
                           "offset": r.start} for r in shown[:max_extents]]
        out["extents_truncated"] = len(shown) > max_extents
        if guest:
            report = guest_report(reader, vol.id)
            out["guest"] = report.to_dict()
            if reports is not None:
                reports["guest"] = report
    return out


def guest_report(reader: Reader, name: str) -> GuestReport:
    """The guest section: the disk's layout, then the guest's own configuration (read-only) checked
    against the domain euca2kvm writes by default."""
    report = inspect_disk(reader, name)
    attach_config(reader, report)
    return report


def mirror_report(vol: Volume) -> MirrorReport:
    if vol.group is None or vol.lv is None:
        raise UsageError(f"{vol.id} is not an LVM volume; --check-mirrors needs a raid1 or mirror LV")
    return check_mirrors(vol.group, vol.lv)


def inspect_image(path: str, as_json: bool) -> int:
    """An image file that is not a volume container (an exported qcow2, a raw disk): guest section only."""
    reader = open_image(path)
    try:
        report = guest_report(reader, os.path.basename(path))
    finally:
        close = getattr(reader, "close", None)
        if close is not None:
            close()
    if as_json:
        print_json({"image": path, "guest": report.to_dict()})
    else:
        console.print(esc(report.render().rstrip()))
    return 0


def segment_params(params: dict[str, Any]) -> str:
    """A segment's own parameters as ``key=value`` words (lists comma-separated; ``stripes`` as PV:extent
    pairs), not as a Python dict."""
    words = []
    for k, v in params.items():
        if k in SHOWN_SEGMENT_KEYS:
            continue
        if isinstance(v, list) and k == "stripes" and len(v) % 2 == 0:
            v = ",".join(f"{pv}:{start}" for pv, start in zip(v[::2], v[1::2], strict=True))
        elif isinstance(v, list):
            v = ",".join(map(str, v))
        words.append(f"{k}={v}")
    return " ".join(words)


def do_inspect(args: argparse.Namespace) -> int:
    try:
        _, (vol,) = resolve_volumes([args.id], args.source, quiet=args.json)
    except NotAVolume:
        if not os.path.isfile(args.id):
            raise
        return inspect_image(args.id, args.json)  # a file named directly that is no container: an image
    reports: dict[str, GuestReport] = {}
    info = describe(vol, args.extents, args.guest, reports)
    if args.check_mirrors:
        info["mirrors"] = mirror_report(vol).to_json()
    if args.json:
        print_json(info)
        return 0
    v = info["volume"]
    console.print(f"[bold]{esc(vol.id)}[/]  kind={vol.kind}  size={human(vol.size)} ({vol.size} bytes)")
    if vol.in_use:
        console.print("[red]in use:[/] " + esc("; ".join(h.what for h in vol.in_use)))
    if "rbd" in info:
        r = info["rbd"]
        console.print(f"RBD image {esc(r['image'])} id={esc(r['id'])} object_size={human(r['object_size'])}")
        for p in r["parents"]:
            console.print(f"   parent {esc(p['pool'])}/{esc(p['image'])}@{esc(p['snapshot'])} "
                          f"overlap={human(p['overlap'])} ({p['overlap']} bytes)")
        for sn in r["snapshots"]:
            console.print(f"   snapshot {esc(sn['name'])} size={human(sn['size'])}"
                          + (" protected" if sn["protected"] else ""))
    if "vg" in info:
        g = info["vg"]
        console.print(f"VG {esc(g['name'])} id={esc(g['id'])} seqno={g['seqno']} extent_size={human(g['extent_size'])}")
        wrapped = " (wrapped in the ring)" if g["metadata_wrapped"] else ""
        console.print(f"   metadata from {esc(g['metadata_from'])}{wrapped}")
        for w in g["warnings"]:
            console.print(f"   [yellow]warning:[/] {esc(w)}")
        for pv in info["pvs"]:
            where = pv["file"] or f"MISSING ({pv['missing']})"
            console.print(f"PV {esc(pv['name'])} {esc(pv['id'])} pe_start={pv['pe_start']} pe_count={pv['pe_count']} "
                          f"-> {esc(where)}")
        lv = info["lv"]
        console.print(f"LV {esc(lv['name'])} id={esc(lv['id'])} tags={esc(','.join(map(str, lv['tags'])))} "
                      f"status={esc(','.join(map(str, lv['status'])))}")
        for s in lv["segments"]:
            console.print(f"   segment{s['index']}: extents {s['start_extent']}+{s['extent_count']} "
                          f"type={esc(s['segment_type'])} {esc(segment_params(s['params']))}".rstrip())
    if v["problem"]:
        console.print(f"[red]cannot be exported:[/] {esc(v['problem'])}")
        return 0
    if vol.compressed:
        console.print("a gzip'd snapshot object: its size and contents are known only by decompressing it "
                      "(euca2kvm export does that, streaming)")
        return 0
    console.print("extent map:")
    for e in info["extents"]:
        if e["kind"] == "data":
            console.print(f"   {e['start']:>14} +{e['length']:<12} data  {esc(e['path'])} @ {e['offset']}")
        else:
            console.print(f"   {e['start']:>14} +{e['length']:<12} {e['kind']}")
    if info["extents_truncated"]:
        console.print(f"   ... (first {args.extents} extents shown; --extents N for more)")
    if "mirrors" in info:
        ok = info["mirrors"]["identical"]
        console.print(("[green]mirrors:[/] " if ok else "[red]mirrors:[/] ") + esc(mirror_report(vol).summary()))
    if "guest" in reports:
        console.print("[bold]guest:[/]\n" + esc(reports["guest"].render().rstrip()))
    return 0
