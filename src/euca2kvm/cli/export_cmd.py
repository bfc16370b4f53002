# SPDX-License-Identifier: Apache-2.0
"""``euca2kvm export ID ... | --all  -o OUTDIR``: verified images of any format plus a manifest."""

from __future__ import annotations

import argparse
import threading
from pathlib import Path
from typing import Any

from ..errors import InUseError, UsageError, VerifyError
from ..eucalyptus.discovery import Volume
from ..export import manifest
from ..export.copy import DEFAULT_WORKERS
from ..export.formats import FORMATS, VMDK_SUBFORMATS, output_format
from ..export.identity import source_identity
from ..export.pipeline import ExportOptions, Source, export_source
from ..outdir import OutDir
from .common import (
    DEFAULT_BOOT_TIMEOUT,
    DEFAULT_DOMAIN_MEMORY_MIB,
    DEFAULT_VCPUS,
    add_digest_args,
    add_sources,
    console_err,
    digest_algorithm,
    esc,
    output_dir,
    resolve_volumes,
)
from .events import Reporter, VolumeProgress
from .s3_cmd import add_s3_args, run_s3_exports

MAX_JOBS = 16  # volumes in parallel; each also runs --workers I/O threads


def build_parser(sub: Any) -> None:
    p = sub.add_parser(
        "export", help="export volumes to verified disk images (raw, qcow2, vmdk, vhdx, vpc, vdi)",
        description="Export volumes to OUTDIR/<id>.<ext> and record them in OUTDIR/manifest.json. Sources are "
                    "only read. Outputs are written under a hidden temporary name and appear under their final "
                    "name only when complete and verified; a re-run skips outputs that still verify.")
    p.add_argument("ids", nargs="*", metavar="ID", help="volume id, VG/LV, or path of a container or snapshot file")
    p.add_argument("--all", action="store_true", help="export every volume found in the sources")
    add_sources(p)
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR",
                   help="output directory (created when missing), or s3://bucket/prefix (see --s3-*)")
    p.add_argument("--format", "-f", default="raw", choices=FORMATS, help="image format (default raw)")
    p.add_argument("--compress", action="store_true", help="compressed qcow2 (or streamOptimized vmdk)")
    p.add_argument("--vmdk-subformat", choices=VMDK_SUBFORMATS, help="vmdk subformat (default monolithicSparse)")
    p.add_argument("--force", action="store_true", help="export even when a source is in use")
    p.add_argument("--warm", action="store_true",
                   help="warm migration pass: read a volume while its instance runs (in use is a warning); the "
                        "image is recorded consistent=false with per-block digests in <image>.blocks; a re-run "
                        "rewrites only the blocks changed since")
    p.add_argument("--sync", action="store_true",
                   help="final pass after the instance is stopped: rewrite only the blocks changed since the last "
                        "--warm pass, verify the whole image (--no-verify: only the rewritten blocks), record "
                        "consistent=true")
    add_digest_args(p)
    add_s3_args(p)
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip verification: no block digest is computed (of the source, nor of a converted image "
                        "read back); the manifest records verified=false and no digest")
    p.add_argument("--overwrite", action="store_true", help="export again even when an output still verifies")
    p.add_argument("--fsync", action="store_true",
                   help="flush each image to stable storage before renaming it, and the manifest after recording "
                        "it (without: both are replaced atomically, a killed run leaves no half file; after a "
                        "power loss a re-run exports again what did not reach the disk)")
    cache = p.add_mutually_exclusive_group()
    cache.add_argument("--drop-behind", action="store_true",
                       help="drop every source byte read from the page cache behind the reader, also pages other "
                            "processes had cached (default: drop only what was not cached before the export read "
                            "it, where the kernel can tell — Linux 6.5 and later — else nothing)")
    cache.add_argument("--keep-cache", action="store_true",
                       help="drop nothing: the source stays in the page cache after the export")
    p.add_argument("--jobs", "-j", type=int, default=1, metavar="N",
                   help=f"volumes in parallel (1-{MAX_JOBS}, default 1)")
    p.add_argument("--workers", type=int, default=DEFAULT_WORKERS, metavar="N",
                   help=f"I/O and hashing threads per volume (1-16, default {DEFAULT_WORKERS})")
    p.add_argument("--check-mirrors", action="store_true",
                   help="before exporting a raid1/mirror LV, compare its legs and refuse (exit 6) if they differ")
    p.add_argument("--libvirt", action="store_true",
                   help="also write <id>.xml (libvirt domain) and <id>.virt-install.sh next to each image")
    p.add_argument("--memory", type=int, default=DEFAULT_DOMAIN_MEMORY_MIB, metavar="MIB",
                   help=f"memory of the --libvirt domain (default {DEFAULT_DOMAIN_MEMORY_MIB})")
    p.add_argument("--vcpus", type=int, default=DEFAULT_VCPUS, metavar="N",
                   help=f"vCPUs of the --libvirt domain (default {DEFAULT_VCPUS})")
    p.add_argument("--boot-test", action="store_true",
                   help="boot each image in QEMU (read-only, no network) and fail unless it reaches a login "
                        "prompt or --boot-expect TEXT")
    p.add_argument("--boot-expect", metavar="TEXT", help="text on the serial console or screen that proves the boot")
    p.add_argument("--boot-timeout", type=float, default=DEFAULT_BOOT_TIMEOUT, metavar="S",
                   help=f"seconds each --boot-test may take (default {DEFAULT_BOOT_TIMEOUT:g})")
    p.add_argument("--json", action="store_true", help="print JSON event lines (start, progress, done, error)")
    p.set_defaults(func=do_export)


def check_exportable(vol: Volume, force: bool, reporter: Reporter, warm: bool = False) -> None:
    if vol.problem_error is not None:
        raise vol.problem_error
    if vol.in_use:
        what = "; ".join(str(h) for h in vol.in_use)
        if warm:
            reporter.warn(f"{vol.id} is in use ({what}); reading it for a warm pass (consistent=false until --sync)")
            return
        if not force:
            raise InUseError(f"in use: {what}. Stop what holds it (or export a snapshot); "
                             "--force exports anyway and the copy may be inconsistent")
        reporter.warn(f"{vol.id} is in use ({what}); exporting because of --force")


def check_legs(vol: Volume, reporter: Reporter) -> None:
    """--check-mirrors: legs of a mirrored LV must hold the same bytes before one of them is exported."""
    if vol.group is None or vol.lv is None:
        return
    lv = vol.group.vg.lvs[vol.lv]
    if not any(s.type in ("raid1", "mirror") for s in lv.segments):
        return
    from ..lvm.mirrors import check_mirrors

    report = check_mirrors(vol.group, vol.lv)
    if not report.identical:
        raise VerifyError(f"mirror legs differ: {report.summary()}")
    if report.skipped:
        reporter.warn(f"{vol.id}: {report.summary()}")


def volume_source(vol: Volume) -> Source:
    return Source(vol.id, vol.block_source(),
                  {"kind": vol.kind, "vg": vol.vg, "lv": vol.lv, "segment_types": vol.segment_types},
                  **source_identity(vol.group, vol.lv), files=vol.local_files())


def volume_label(vol: Volume) -> str:
    """A volume as an error naming two of them tells them apart: id, VG/LV and files."""
    return f"{vol.id} ({vol.name} in {', '.join(vol.files)})"


def check_outputs(vols: list[Volume], outdir: Path, ext: str) -> None:
    """Two volumes of one run that would write the same output (the same id: two containers whose
    LVs carry the same tag) are refused before anything is written, naming both (exit 2)."""
    manifest.check_distinct((volume_label(v), manifest.output_path(outdir, v.id, ext)) for v in vols)


def do_export(args: argparse.Namespace) -> int:
    if not 1 <= args.workers <= 16:
        raise UsageError("--workers must be between 1 and 16")
    if not 1 <= args.jobs <= MAX_JOBS:
        raise UsageError(f"--jobs must be between 1 and {MAX_JOBS}")
    if bool(args.ids) == bool(args.all):
        raise UsageError("name volumes to export, or --all (not both)")
    fmt = output_format(args.format, compress=args.compress, vmdk_subformat=args.vmdk_subformat)
    if args.warm and args.sync:
        raise UsageError("--warm (while the instance runs) and --sync (after it stopped) are separate passes")
    if args.warm and not args.verify:
        raise UsageError("--warm needs block digests (no --no-verify)")
    opts = ExportOptions(fmt=fmt, sha256=args.sha256, verify=args.verify, workers=args.workers,
                         fsync=args.fsync, overwrite=args.overwrite, algorithm=digest_algorithm(args),
                         warm=args.warm or args.sync)
    if args.drop_behind or args.keep_cache:
        from ..readahead import DropBehind, set_drop_behind

        set_drop_behind(DropBehind.ALL if args.drop_behind else DropBehind.KEEP)
    # IDs first: an unknown ID or a file that is no volume leaves no output directory behind
    d, named = resolve_volumes(list(dict.fromkeys(args.ids)), args.source, quiet=args.json)
    if args.all:
        vols = [v for v in d.volumes]
        for v in vols:
            if v.problem:
                console_err.print(f"[yellow]skipping[/] {esc(v.id)}: {esc(v.problem)}")
        vols = [v for v in vols if not v.problem]
        if not vols:
            raise UsageError("no exportable volume found")
    else:
        # unknown ids failed above, before anything was written
        vols = list({id(v): v for v in named}.values())  # one volume named twice (id and path) is one export
    if args.output.startswith("s3://"):  # object storage: cli/s3_cmd.py
        return run_s3_exports(vols, opts, args)
    outdir = output_dir(args.output)
    check_outputs(vols, outdir, fmt.ext)
    if not args.verify and not args.json:
        console_err.print("note: --sync --no-verify: the image is not read back but for the blocks rewritten, "
                          "while nothing wrote it since the last pass; the blocks that changed are found by their "
                          "digests" if args.sync else
                          "note: --no-verify: no digest is computed and outputs are not verified")
    return run_exports(vols, outdir, opts, args.force, args.jobs, args.json, args)


def after_export(entry: dict[str, Any], outdir: Path, args: argparse.Namespace | None) -> None:
    """--libvirt and --boot-test for one exported image; results go into its manifest entry."""
    if args is None or not (args.libvirt or args.boot_test):
        return
    from ..kvm.libvirt import write_domain_files
    from .kvm_cmds import domain_for, keep_beside, result_json, run_boot_test

    image = Path(entry["output"])
    if args.libvirt:
        dom = domain_for([image], image.stem, args.memory, args.vcpus, [entry["format"]])  # the injective name
        xml, script = write_domain_files(dom, image.with_name(f"{dom.name}.xml"))
        entry["libvirt"] = {"domain": str(xml), "virt_install": str(script)}
    if args.boot_test:
        with OutDir(outdir) as od, od.work(f"{image.name}.boot") as work:  # private, removed afterwards
            res = run_boot_test(image, entry["format"], args.boot_timeout, args.boot_expect, 512, work.path)
            shot = keep_beside(image, res, strict=True)
        summary = result_json(res)
        summary.pop("serial")
        summary["screenshot"] = str(shot) if shot is not None else None
        entry["boot_test"] = summary
    manifest.record(outdir, entry, fsync=args.fsync)
    if args.boot_test and not entry["boot_test"]["ok"]:
        raise VerifyError(f"exported image did not boot: {res.summary()}")


def run_exports(vols: list[Volume], outdir: Path, opts: ExportOptions, force: bool, jobs: int,
                as_json: bool, args: argparse.Namespace | None = None) -> int:
    from .batch import Job, run_batch

    with Reporter(as_json, sum(v.size for v in vols), threading.Event()) as rep:

        def job(vol: Volume) -> Job:
            def check() -> None:
                check_exportable(vol, force, rep, warm=args is not None and args.warm)
                if args is not None and args.check_mirrors:
                    check_legs(vol, rep)

            def run(advance: VolumeProgress) -> tuple[dict[str, Any], bool]:
                if vol.compressed:
                    from ..export.gzsource import export_gz

                    entry, reused = export_gz(vol.files[0], outdir, opts, advance, name=vol.id)
                elif opts.warm:
                    from ..export.sync import export_pass

                    final = args is not None and args.sync
                    entry, reused = export_pass(volume_source(vol), outdir, opts, final, advance, on_read=advance.read)
                else:
                    entry, reused = export_source(volume_source(vol), outdir, opts, advance, on_read=advance.read)
                after_export(entry, outdir, args)
                return entry, reused

            return Job(vol.id, vol.size, run, check)

        outcome = run_batch([job(v) for v in vols], rep, jobs)
    if outcome.entries and not opts.fsync:  # recorded unflushed (manifest.record): flushed once, here
        manifest.flush(outdir)
    if outcome.errors and len(vols) > 1:
        console_err.print(f"{len(outcome.errors)} of {len(vols)} volume(s) failed")
    return outcome.exit_code
