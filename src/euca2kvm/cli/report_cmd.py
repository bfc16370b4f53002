# SPDX-License-Identifier: Apache-2.0
"""``euca2kvm report MANIFEST... -o report.html``: what a migration exported, verified and booted."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import EXIT_FORMAT, EXIT_IN_USE, EXIT_IO, EXIT_TOOL, EXIT_USAGE, EXIT_VERIFY, UsageError
from ..outdir import write_atomic
from .common import console_err, esc
from .console import visible

# Most severe first, as verify orders its results, with an instance in use before a tool failure.
SEVERITY = (EXIT_FORMAT, EXIT_VERIFY, EXIT_IO, EXIT_IN_USE, EXIT_TOOL, EXIT_USAGE)


def build_parser(sub: Any) -> None:
    p = sub.add_parser(
        "report", help="write a self-contained HTML (or Markdown) report of one or more exports",
        description="Summarise the manifests of a migration: per instance (or volume exported on its own) "
                    "its VM type and hardware, disks with sizes, formats and digests, verification state, "
                    "boot-test result with screenshot, console excerpt and stage timings, and the plan's "
                    "blockers and notes (with --plan); a sortable summary table on top. The HTML page loads "
                    "nothing from anywhere: styles and script are inline, screenshots embedded. Files the "
                    "manifests name are read only inside their directories.")
    p.add_argument("manifests", nargs="+", metavar="MANIFEST",
                   help="an OUTDIR/manifest.json or its directory (repeatable: one report for all)")
    p.add_argument("-o", "--output", metavar="FILE", help="where to write the report (default: standard output)")
    p.add_argument("--format", choices=("html", "md"), default="html",
                   help="html (default) or md (Markdown, for tickets)")
    p.add_argument("--plan", action="append", type=Path, metavar="PLAN.json", default=[],
                   help="output of 'euca2kvm plan --json' for blockers, notes and VM types (repeatable; "
                        "default: none)")
    p.add_argument("--allow-failed", action="store_true",
                   help="exit 0 even when an instance or volume failed (default: the report is written and the exit "
                        "status is the most severe failure: 3 refused image, 6 failed boot test, 5 missing image, "
                        "4 in use, 2 name collision)")
    p.set_defaults(func=do_report)


def do_report(args: argparse.Namespace) -> int:
    from ..report import model, render

    out = Path(args.output) if args.output and args.output != "-" else None
    if out is not None and out.is_dir():
        raise UsageError(f"-o {out} is a directory; name the report file")
    report = model.build(args.manifests, args.plan)
    text = render.render(report, args.format, visible)
    if out is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        write_atomic(out, text)
        c = report.counts()
        console_err.print(f"wrote {esc(str(out))}: {c['total']} instance(s)/volume(s), {c['exported']} exported, "
                          f"{c['verified']} verified, {c['booted']} booted, {c['failed']} failed", highlight=False)
    return 0 if args.allow_failed else exit_code(report)


def exit_code(report: Any) -> int:
    """The most severe exit code of the failed entries (0: none failed), in the order of ``verify``."""
    codes = {c for i in report.instances for c in i.exit_codes()}
    if not codes:
        return 0
    failed = [i for i in report.instances if i.failed]
    console_err.print(f"{len(failed)} of {len(report.instances)} instance(s)/volume(s) failed: "
                      + esc(", ".join(i.id for i in failed[:20])) + (" ..." if len(failed) > 20 else "")
                      + " (--allow-failed exits 0)", highlight=False)
    return min(codes, key=lambda c: SEVERITY.index(c) if c in SEVERITY else len(SEVERITY))
