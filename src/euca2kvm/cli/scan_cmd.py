# SPDX-License-Identifier: Apache-2.0
"""``euca2kvm scan [PATH ...] [--json]``: list the volumes found."""

from __future__ import annotations

import argparse
import os
from typing import Any

from rich.table import Table

from ..eucalyptus.discovery import VOLUMES_DIR
from ..units import human
from .common import add_sources, console, console_err, discover_sources, esc, print_json


def build_parser(sub: Any) -> None:
    p = sub.add_parser("scan", help="list volumes in volumes directories, container files or block devices",
                       description="List every volume found, with its kind, VG/LV, size, segment types and "
                                   "whether anything holds it. A file named explicitly must be a volume "
                                   "container or a snapshot file (exit 3 otherwise); in a directory, other "
                                   "files are noted and ignored.")
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help=f"sources, the same as --source (default {VOLUMES_DIR})")
    add_sources(p)
    p.add_argument("--json", action="store_true",
                   help='print one JSON object: {"volumes": [...], "notes": [...]} (the notes: files ignored or '
                        'read only as part of another volume, with path, what and reason)')
    p.set_defaults(func=do_scan)


def do_scan(args: argparse.Namespace) -> int:
    named = [*args.paths, *(args.source or [])]
    d = discover_sources(named or [VOLUMES_DIR], quiet=args.json)
    d.check_named(named)
    if args.json:
        print_json({"volumes": [v.to_json() for v in d.volumes], "notes": [n.to_json() for n in d.notes]})
        return 0
    t = Table(title=None, show_lines=False)
    for col in ("ID", "KIND", "VG/LV", "SIZE", "TYPES", "IN USE", "FILES"):
        t.add_column(col, overflow="fold")
    for v in d.volumes:
        state = "; ".join(h.what for h in v.in_use) or "no"
        types = ",".join(v.segment_types)
        if v.problem:
            types += f" [red](refused: {esc(v.problem)})[/]"
        size = "? (gzip)" if v.compressed else human(v.size)
        t.add_row(esc(v.id), v.kind, esc(f"{v.vg}/{v.lv}" if v.vg else "-"), size, types,
                  esc(state), esc(", ".join(os.path.basename(f) for f in v.files)))
    console.print(t)
    for n in d.notes:
        console_err.print(f"note: {esc(str(n))}")
    console_err.print(f"{len(d.volumes)} volume(s)")
    return 0
