# SPDX-License-Identifier: Apache-2.0
"""``euca2kvm manifest merge MANIFEST... -o merged.json``: one manifest for the export directories of many hosts."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .common import console_err, esc, print_json


def build_parser(sub: Any) -> None:
    p = sub.add_parser("manifest", help="work on manifests (merge those of several hosts)",
                       description="Work on manifests: 'manifest merge' combines those of several hosts.")
    msub = p.add_subparsers(dest="manifest_command", metavar="ACTION", required=True,
                             help="what to do with the manifests")
    m = msub.add_parser(
        "merge", help="merge manifests of several hosts or export directories into one",
        description="Merge manifests into one that report and verify read. Every entry keeps where its image is: "
                    "'host' and 'export_dir' (the absolute export directory on that host, in which 'output' is "
                    "resolved). An entry from a plain OUTDIR/manifest.json gets --host (default: this machine's "
                    "name) and that directory; entries of an already merged manifest keep theirs, so each host "
                    "merges its own manifest and the control host merges the fetched results. The same entry "
                    "seen twice is kept once; one volume exported in two places with equal digests is reported "
                    "as a duplicate (both kept); with different digests it is a conflict: nothing is written, "
                    "exit 6. verify checks an entry only where its export directory is present and that "
                    "directory's own manifest lists it; any other entry is reported as remote.")
    m.add_argument("manifests", nargs="+", metavar="MANIFEST",
                   help="a manifest file (OUTDIR/manifest.json or a merged one) or the directory holding manifest.json")
    m.add_argument("-o", "--output", required=True, type=Path, metavar="FILE",
                   help="the merged manifest to write (not named manifest.json)")
    m.add_argument("--host", metavar="NAME",
                   help="the host name recorded for entries of plain manifests (default: this machine's name)")
    m.add_argument("--json", action="store_true",
                   help="print a summary as JSON: volumes, hosts, manifests, duplicates, conflicts")
    m.set_defaults(func=do_merge)


def do_merge(args: argparse.Namespace) -> int:
    from ..export import manifestmerge

    merged = manifestmerge.merge(list(args.manifests), args.host)
    summary = merged.summary()
    if args.json:
        print_json(summary)
    for d in merged.duplicates:
        console_err.print(f"[yellow]duplicate[/] {esc(d['id'])}: exported in {esc(', '.join(d['where']))}",
                          highlight=False, soft_wrap=True)
    for c in merged.conflicts:
        console_err.print(f"[red]conflict[/] {esc(c['id'])}: {esc(', '.join(c['fields']))} differ in "
                          f"{esc(', '.join(c['where']))}", highlight=False, soft_wrap=True)
    manifestmerge.write(merged, args.output)
    console_err.print(f"wrote {esc(str(args.output))}: {summary['volumes']} volume(s) from "
                      f"{summary['manifests']} export director(ies) on {len(summary['hosts'])} host(s)"
                      + (f", {len(merged.duplicates)} duplicate(s)" if merged.duplicates else ""), highlight=False)
    return 0
