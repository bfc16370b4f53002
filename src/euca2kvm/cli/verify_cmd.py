# SPDX-License-Identifier: Apache-2.0
"""``euca2kvm verify OUTDIR/manifest.json``: re-check every exported image against its recorded digest."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import FormatError, IOFailure, VerifyError
from ..export import manifest
from ..export.copy import DEFAULT_WORKERS
from ..export.pipeline import content_digest
from .common import console, console_err, esc, print_json


def build_parser(sub: Any) -> None:
    p = sub.add_parser("verify", help="re-check exported images against their manifest",
                       description="Recompute the block digest of every image listed in a manifest (reading "
                                   "qcow2/vmdk/vhdx/vpc/vdi through qemu-nbd) and compare it with the recorded one. "
                                   "Exits 6 if any image is missing, differs or cannot be checked.")
    p.add_argument("manifest", metavar="MANIFEST", help="OUTDIR/manifest.json (or OUTDIR)")
    p.add_argument("--workers", type=int, default=DEFAULT_WORKERS, metavar="N", help="hashing threads")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=do_verify)


def check_entry(entry: dict[str, Any], workers: int) -> tuple[str, str]:
    """(status, detail): status is ok, mismatch, missing or unverifiable."""
    out = Path(entry["output"])
    if not out.exists():
        return "missing", f"{out} does not exist"
    want = entry.get("digest")
    if not want:
        return "unverifiable", "exported with --no-verify: no digest recorded"
    try:
        got = content_digest(out, str(entry.get("format", "raw")), str(want), workers)
    except (FormatError, IOFailure) as e:
        return "unverifiable", str(e)
    if got != want:
        return "mismatch", f"digest {got} != recorded {want}"
    return "ok", want


def do_verify(args: argparse.Namespace) -> int:
    path = Path(args.manifest)
    outdir = path if path.is_dir() else path.parent
    if not path.is_dir() and path.name != manifest.MANIFEST:
        raise FormatError("expected a manifest.json or an output directory", str(path))
    data = manifest.load(outdir)
    if not (outdir / manifest.MANIFEST).exists():
        raise IOFailure(f"no {manifest.MANIFEST} in {outdir}")
    results = []
    for entry in data["volumes"]:
        status, detail = check_entry(entry, args.workers)
        results.append({"id": entry.get("id"), "output": entry["output"], "status": status, "detail": detail})
        if not args.json:
            colour = "green" if status == "ok" else "red"
            console.print(f"[{colour}]{status:12s}[/] {esc(str(entry.get('id')))}  {esc(entry['output'])}  "
                          f"{esc(detail)}")
    bad = [r for r in results if r["status"] != "ok"]
    if args.json:
        print_json(results)
    if bad:
        console_err.print(f"{len(bad)} of {len(results)} image(s) failed verification")
        raise VerifyError(json.dumps([r["id"] for r in bad]) + " did not verify")
    return 0
