# SPDX-License-Identifier: Apache-2.0
"""``euca2kvm export ID ... -o OUTDIR``: sparse, verified raw images plus a manifest."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from ..errors import Euca2kvmError, FormatError, InUseError, IOFailure, UsageError
from ..eucalyptus.discovery import Volume
from ..export import manifest
from ..export.copy import DEFAULT_WORKERS
from ..export.raw import export_raw
from ..lvm.extents import Kind
from ..units import human
from .common import add_sources, console, console_err, discover_sources, esc, print_json, sources
from .progress import progress_bar


def build_parser(sub: Any) -> None:
    p = sub.add_parser("export", help="export volumes to sparse raw images with a verified digest",
                       description="Export volumes to OUTDIR/<id>.raw and record them in OUTDIR/manifest.json. "
                                   "Sources are only read; outputs appear under their final name only when "
                                   "complete.")
    p.add_argument("ids", nargs="+", metavar="ID", help="volume id, VG/LV, or container file path")
    add_sources(p)
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output directory (created)")
    p.add_argument("--format", default="raw", choices=["raw"], help="image format (default raw)")
    p.add_argument("--force", action="store_true", help="export even when a source is in use")
    p.add_argument("--sha256", action="store_true", help="also record the plain sha256 of each disk")
    p.add_argument("--fsync", action="store_true", help="flush each image to stable storage before renaming it")
    p.add_argument("--workers", type=int, default=DEFAULT_WORKERS, metavar="N",
                   help=f"I/O and hashing threads per volume (1-16, default {DEFAULT_WORKERS})")
    p.add_argument("--json", action="store_true", help="print the manifest entries written as JSON")
    p.set_defaults(func=do_export)


def check_exportable(vol: Volume, force: bool) -> None:
    if vol.problem_error is not None:
        raise vol.problem_error
    if vol.in_use:
        what = "; ".join(str(h) for h in vol.in_use)
        if not force:
            raise InUseError(f"{vol.id} is in use: {what}. Stop what holds it (or export a snapshot); "
                             "--force exports anyway and the copy may be inconsistent")
        console_err.print(f"[yellow]warning:[/] {esc(vol.id)} is in use ({esc(what)}); exporting because of --force")


def export_volume(vol: Volume, outdir: Path, *, sha256: bool, workers: int, fsync: bool) -> dict[str, Any]:
    emap = vol.extent_map()
    if Kind.ERROR in emap.kinds():
        raise FormatError(f"{vol.id}: LV {vol.name} has an 'error' segment: reading it fails under "
                          "device-mapper too; refusing to export invented bytes")
    out = manifest.output_path(outdir, vol.id.replace("/", "_"), "raw")
    started = time.monotonic()
    with progress_bar(vol.id, emap.size) as advance:
        res = export_raw(emap, out, sha256=sha256, workers=workers, progress=advance, fsync=fsync,
                         name=vol.id)
    elapsed = time.monotonic() - started
    entry: dict[str, Any] = {
        "id": vol.id, "kind": vol.kind, "vg": vol.vg, "lv": vol.lv, "size": vol.size,
        "digest": res.digest, "output": str(out.resolve()), "format": "raw",
        "files": sorted(emap.paths()), "segment_types": vol.segment_types,
        "bytes_read": res.bytes_read, "bytes_written": res.bytes_written,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(elapsed, 3),
    }
    if res.sha256:
        entry["sha256"] = res.sha256
    manifest.record(outdir, entry)
    return entry


def do_export(args: argparse.Namespace) -> int:
    if not 1 <= args.workers <= 16:
        raise UsageError("--workers must be between 1 and 16")
    outdir = Path(args.output)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise IOFailure(f"cannot create {outdir}: {e.strerror}") from e
    if not os.access(outdir, os.W_OK):
        raise IOFailure(f"{outdir} is not writable")
    d = discover_sources(sources(args), quiet=args.json)
    vols = [d.find(i) for i in dict.fromkeys(args.ids)]  # unknown ids fail before anything is written
    entries: list[dict[str, Any]] = []
    first_error: Euca2kvmError | None = None
    for vol in vols:
        try:
            check_exportable(vol, args.force)
            entry = export_volume(vol, outdir, sha256=args.sha256, workers=args.workers, fsync=args.fsync)
        except Euca2kvmError as e:
            console_err.print(f"[bold red]euca2kvm: {esc(vol.id)}:[/] {esc(str(e))}")
            first_error = first_error or e
            continue
        entries.append(entry)
        if not args.json:
            rate = entry["size"] / entry["seconds"] if entry["seconds"] else 0
            console.print(f"{esc(vol.id)} -> {esc(entry['output'])}  {human(entry['size'])} in "
                          f"{entry['seconds']:.2f} s ({human(rate)}/s)  {entry['digest']}")
    if args.json:
        print_json(entries)
    if first_error is not None:
        raise first_error
    return 0
