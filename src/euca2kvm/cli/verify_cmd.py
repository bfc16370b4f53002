# SPDX-License-Identifier: Apache-2.0
"""``euca2kvm verify OUTDIR/manifest.json``: re-check every exported image against its recorded digest.

Every entry is checked and reported, whatever happened to the ones before it; the exit status is
the most severe of all (see ``SEVERITY``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import (
    EXIT_FORMAT,
    EXIT_IO,
    EXIT_OK,
    EXIT_TOOL,
    EXIT_USAGE,
    EXIT_VERIFY,
    Euca2kvmError,
    FormatError,
    Interrupted,
    IOFailure,
    ToolError,
    UsageError,
    VerifyError,
)
from ..export import manifest
from ..export.copy import DEFAULT_WORKERS
from ..export.digest import algorithm_of
from ..export.imagerefs import RefusedImage
from ..export.manifestcheck import entry_path
from ..export.manifestmerge import RemoteImage, image_dir
from ..export.pipeline import content_digest
from .common import console, console_err, esc, print_json
from .console import visible
from .s3_cmd import add_s3_args

# Exit statuses from most to least severe: an entry or image refused as hostile or invalid (3)
# says more than a digest that differs or was never recorded (6), which says more than an image
# that could not be read (5) or a qemu tool that failed (7).
SEVERITY = (EXIT_FORMAT, EXIT_VERIFY, EXIT_IO, EXIT_TOOL, EXIT_USAGE)
_ERROR_FOR = {EXIT_FORMAT: FormatError, EXIT_VERIFY: VerifyError, EXIT_IO: IOFailure, EXIT_TOOL: ToolError,
              EXIT_USAGE: UsageError}
MAX_WORKERS = 16
# The id and output columns are as wide as their longest value up to this, so that they line up
# without one hostile name pushing every detail off the screen.
MAX_COLUMN = 48
STATUS_WIDTH = max(len(s) for s in ("ok", "mismatch", "unverifiable", "missing", "unreadable", "refused",
                                    "remote"))


def build_parser(sub: Any) -> None:
    p = sub.add_parser(
        "verify", help="re-check exported images against their manifest",
        description="Recompute the block digest of every image listed in a manifest (reading "
                    "qcow2/vmdk/vhdx/vpc/vdi through qemu-nbd) and compare it with the recorded one. Every entry "
                    "is checked and reported as ok, mismatch, unverifiable (no usable digest recorded), remote "
                    "(a merged entry whose export directory is on another host: not checked here), missing, "
                    "unreadable or refused (its output leaves the manifest's directory, passes through a symbolic "
                    "link or is not a regular file, or the image names other files: a backing file, a data file, "
                    "vmdk extents). The exit status is the most severe found: 3 (refused, or an image or manifest "
                    "that is invalid) before 6 (mismatch, unverifiable, remote) before 5 (missing or unreadable) "
                    "before 7 (qemu-img or qemu-nbd failed); 0 when every image verified.")
    p.add_argument("manifest", metavar="MANIFEST", help="OUTDIR/manifest.json (or OUTDIR), a merged manifest, or "
                   "s3://bucket/prefix/manifest.json (every object is read back, streamed)")
    p.add_argument("--workers", type=int, default=DEFAULT_WORKERS, metavar="N",
                   help=f"hashing threads (1-{MAX_WORKERS}, default {DEFAULT_WORKERS})")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    add_s3_args(p, upload=False)
    p.set_defaults(func=do_verify)


def one_line(text: str) -> str:
    """A detail as one line of words: a tool's multi-line message (or JSON it quoted) is not a table row."""
    return " ".join(text.split())


def padded(text: str, width: int) -> str:
    """``text`` (markup-escaped) padded to ``width`` columns as the console shows it: escaped by
    :func:`visible` at output, so the escaped form's length is what takes up the columns."""
    return esc(text) + " " * max(0, width - len(visible(text)))


def check_entry(outdir: Path, entry: dict[str, Any], workers: int,
                seen: dict[str, frozenset[str] | None] | None = None) -> tuple[str, str, int]:
    """(status, detail, exit status) of one manifest entry; a merged entry's image is looked for in its
    export directory, and is "remote" (not checked: exit 6) unless that directory is here."""
    try:
        out = entry_path(image_dir(outdir, entry, {} if seen is None else seen), entry["output"])
    except RemoteImage as e:
        return "remote", e.reason, EXIT_VERIFY
    except FileNotFoundError:
        return "missing", "does not exist", EXIT_IO
    except FormatError as e:
        return "refused", e.reason, EXIT_FORMAT
    want = entry.get("digest")
    if not want:
        return "unverifiable", "exported with --no-verify: no digest recorded", EXIT_VERIFY
    try:
        algorithm_of(want)
    except FormatError as e:
        return "unverifiable", str(e), EXIT_VERIFY
    # The disk's own size: a converted image of a disk that is not whole sectors is up to a sector longer.
    size = entry.get("size")
    try:
        got = content_digest(out, str(entry.get("format", "raw")), str(want), workers,
                             size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else None)
    except RefusedImage as e:
        return "refused", e.reason, EXIT_FORMAT
    except Interrupted:
        raise
    except Euca2kvmError as e:
        return "unreadable", str(e), e.exit_code
    if got != want:
        return "mismatch", f"digest {got} != recorded {want}", EXIT_VERIFY
    return "ok", want, EXIT_OK


def do_verify(args: argparse.Namespace) -> int:
    if not 1 <= args.workers <= MAX_WORKERS:
        raise UsageError(f"--workers must be between 1 and {MAX_WORKERS}")
    if args.manifest.startswith("s3://"):
        from .s3_cmd import verify_s3

        return report(args, *verify_s3(args))
    path = Path(args.manifest)
    outdir = path if path.is_dir() else path.parent
    name = manifest.MANIFEST if path.is_dir() else path.name
    if not name.endswith(".json"):
        raise FormatError("expected a manifest (.json: OUTDIR/manifest.json, a merged one) or an output directory",
                          str(path))
    if not (outdir / name).exists():
        raise IOFailure(f"no {name} in {outdir}")
    data = manifest.load(outdir, name)
    seen: dict[str, frozenset[str] | None] = {}
    return report(args, data["volumes"], lambda entry: check_entry(outdir, entry, args.workers, seen))


def report(args: argparse.Namespace, entries: list[dict[str, Any]],
           check: Callable[[dict[str, Any]], tuple[str, str, int]]) -> int:
    """Check and print each entry as it comes (``check`` gives status, detail, exit status); the
    exit status of them all."""
    results = []
    id_w, out_w = (min(MAX_COLUMN, max((len(visible(str(e[k]))) for e in entries), default=0))
                   for k in ("id", "output"))
    for entry in entries:
        status, detail, code = check(entry)
        results.append({"id": entry["id"], "output": entry["output"], "status": status, "detail": detail,
                        "exit_code": code})
        if not args.json:
            colour = "green" if status == "ok" else "red"
            console.print(f"[{colour}]{status:{STATUS_WIDTH}}[/]  {padded(entry['id'], id_w)}  "
                          f"{padded(entry['output'], out_w)}  {esc(one_line(detail))}",
                          highlight=False, soft_wrap=True)
    if args.json:
        print_json(results)
    bad = [r for r in results if r["status"] != "ok"]
    if not bad:
        return EXIT_OK
    worst = min((r["exit_code"] for r in bad), key=lambda c: SEVERITY.index(c) if c in SEVERITY else len(SEVERITY))
    counts = ", ".join(f"{sum(r['status'] == s for r in bad)} {s}" for s in dict.fromkeys(r["status"] for r in bad))
    console_err.print(f"{len(bad)} of {len(results)} image(s) failed verification ({esc(counts)})")
    error = _ERROR_FOR.get(worst, Euca2kvmError)(
        f"{len(bad)} of {len(results)} image(s) did not verify: "
        + ", ".join(str(r["id"])[:80] for r in bad[:20]) + (" ..." if len(bad) > 20 else ""))
    error.exit_code = worst
    raise error
