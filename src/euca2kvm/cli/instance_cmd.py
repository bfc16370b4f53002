# SPDX-License-Identifier: Apache-2.0
"""``euca2kvm export-instance INSTANCE_ID ... -o OUTDIR``: an instance's EBS disks plus a libvirt domain."""

from __future__ import annotations

import argparse
import os
import shlex
import threading
from pathlib import Path
from typing import Any

from ..errors import InUseError, UsageError
from ..export import manifest
from ..export.copy import DEFAULT_WORKERS
from ..export.identity import source_identity
from ..export.pipeline import ExportOptions, Source, export_source
from ..outdir import OutDir
from ..planning.instances import InstancePlan, PlannedDisk
from .batch import Job, run_batch
from .common import add_digest_args, console_err, digest_algorithm, esc, output_dir
from .events import Reporter, VolumeProgress
from .instance_domain import add_domain_args, build_domain, check_domain_args, file_names, seed_for
from .plan_cmd import add_plan_args, make_plan

MAX_JOBS = 16  # disks in parallel; each also runs --workers I/O threads


def build_parser(sub: Any) -> None:
    p = sub.add_parser(
        "export-instance",
        help="export an instance's volumes in boot order plus a libvirt domain",
        description="Export the boot volume and then the attached volumes (in device order) of each instance "
        "to "
        "OUTDIR/<instance>-<device>.<ext>, verified and recorded in OUTDIR/manifest.json with the "
        "instance and device, and write OUTDIR/<instance>.xml (a libvirt domain with the VM type's "
        "vCPUs and memory and the virtual hardware the Eucalyptus NC gave it: disk bus and serials, MAC, NIC "
        "model, rng, CPU topology), OUTDIR/<instance>.virt-install.sh and OUTDIR/<instance>.seed.iso (a "
        "cloud-init NoCloud seed with the instance id, hostname, key and MAC, attached read-only). "
        "An instance started with a separate kernel (EKI/ERI) whose boot volume has no boot loader "
        "needs --kernel/--ramdisk: the domain then boots that kernel directly (exit 3 without them). "
        "Everything is checked before anything is written.",
    )
    p.add_argument("ids", nargs="+", metavar="INSTANCE_ID", help="instances to export (i-XXXXXXXX)")
    add_plan_args(p)
    p.add_argument(
        "--force",
        action="store_true",
        help="export even when a volume or instance is in use (the copy may be inconsistent)",
    )
    p.add_argument("--warm", action="store_true",
                   help="warm migration pass while the instance runs (see export --warm; in use is a warning)")
    p.add_argument("--sync", action="store_true",
                   help="final pass after the instance stopped: rewrite only the blocks changed since --warm")
    add_digest_args(p)
    p.add_argument("--overwrite", action="store_true", help="export again even when an output still verifies")
    p.add_argument("--jobs", "-j", type=int, default=1, metavar="N", help=f"disks in parallel (1-{MAX_JOBS})")
    p.add_argument(
        "--workers",
        type=int,
        default=DEFAULT_WORKERS,
        metavar="N",
        help=f"I/O and hashing threads per disk (1-16, default {DEFAULT_WORKERS})",
    )
    add_domain_args(p)
    p.add_argument("--json", action="store_true", help="print JSON event lines")
    p.set_defaults(func=do_export_instance)


def _refuse(plans: list[InstancePlan], host_blockers: list[Any], force: bool, rep_warn: Any) -> None:
    """Raise the first non-overridable blocker, or InUseError listing every in-use reason (unless --force)."""
    blockers = [*host_blockers, *(b for p in plans for b in p.all_blockers)]
    hard = [b for b in blockers if not b.forceable]
    if hard:
        for b in hard[1:]:
            console_err.print(f"[red]blocker[/] {b.kind}: {esc(b.message)}")
        raise hard[0].error()
    soft = [b for b in blockers if b.forceable]
    if soft and not force:
        raise InUseError(
            "refusing to export: "
            + "; ".join(b.message for b in soft)
            + ". Stop what holds them (or export snapshots); --force exports anyway"
        )
    for b in soft:
        rep_warn(f"in use, exporting because of --force: {b.message}")


def _seed_record(plan: InstancePlan, outdir: Path, seed: bytes | None) -> dict[str, Any] | None:
    """The manifest's record of the instance's seed image (known before it is written), or None."""
    from ..kvm.seed import sha256

    seed_name = file_names(plan, seed is not None)[2]
    if seed is None or seed_name is None:
        return None
    return {"output": str((outdir / seed_name).resolve()), "sha256": sha256(seed), "instance_id": plan.instance.id}


def _domain_fields(plan: InstancePlan, outdir: Path, seed: bytes | None) -> dict[str, Any]:
    """What each disk's manifest entry records of its instance's domain and seed, in its one record.
    The domain and seed are written when every disk of the instance is exported."""
    xml_name = file_names(plan, seed is not None)[0]
    return {"domain": str((outdir / xml_name).resolve()), "seed": _seed_record(plan, outdir, seed)}


def _domain(
    plan: InstancePlan, outdir: Path, fmt: str, args: argparse.Namespace, seed: bytes | None
) -> tuple[Path, Path]:
    """Write the seed (if any), the domain XML and the virt-install script; returns the domain's and script's paths."""
    from ..kvm.libvirt import write_domain_files

    xml_name, _, seed_name = file_names(plan, seed is not None)
    dom = build_domain(plan, outdir, fmt, args, seed_name)
    named_seed = None if seed is None or seed_name is None else (seed_name, seed)
    return write_domain_files(dom, outdir / xml_name, seed=named_seed)


def _source(plan: InstancePlan, d: PlannedDisk, domain: dict[str, Any]) -> Source:
    v = d.volume
    assert v is not None
    return Source(
        d.name,
        v.block_source(),
        {
            "kind": v.kind,
            "vg": v.vg,
            "lv": v.lv,
            "segment_types": v.segment_types,
            "volume_id": d.volume_id,
            "instance": plan.instance.id,
            "device": d.device,
            "attachment": d.attachment,
            "target_dev": d.target_dev,
            "boot": d.is_root,
            **domain,
        },
        **source_identity(v.group, v.lv),
        files=v.local_files(),
    )


def do_export_instance(args: argparse.Namespace) -> int:
    if not 1 <= args.workers <= 16:
        raise UsageError("--workers must be between 1 and 16")
    if not 1 <= args.jobs <= MAX_JOBS:
        raise UsageError(f"--jobs must be between 1 and {MAX_JOBS}")
    from .inventory_cmd import inventory_from_args

    check_domain_args(args)
    inv = inventory_from_args(args)
    plan, _ = make_plan(args, inv, quiet=args.json)
    outdir = plan.outdir
    cancel = threading.Event()
    with Reporter(args.json, sum(d.size or 0 for p in plan.instances for d in p.disks), cancel) as rep:
        if args.warm and args.sync:
            raise UsageError("--warm (while the instance runs) and --sync (after it stopped) are separate passes")
        _refuse(plan.instances, plan.host_blockers, args.force or args.warm, rep.warn)
        for p in plan.instances:
            for w in [*p.warnings, *(w for d in p.disks for w in d.warnings)]:
                rep.warn(w)
            if p.needs_kernel:
                rep.warn(
                    f"{p.instance.id}: its boot volume has no boot loader (it booted {p.instance.kernel_id}"
                    f"{' + ' + p.instance.ramdisk_id if p.instance.ramdisk_id else ''}); the domain boots "
                    f"{args.kernel} directly" + (f" with {args.ramdisk}" if args.ramdisk else "")
                )
                if p.instance.ramdisk_id and not args.ramdisk:
                    rep.warn(
                        f"{p.instance.id} used ramdisk {p.instance.ramdisk_id} but no --ramdisk was given"
                    )
        notes: list[str] = []
        seeds = {p.instance.id: seed_for(p, args, notes) for p in plan.instances}  # refused before any write
        for n in notes:
            rep.warn(n)
        for p in plan.instances:  # a domain that cannot be built fails now, not after the copy
            build_domain(p, outdir, plan.fmt.name, args, file_names(p, seeds[p.instance.id] is not None)[2])
        if outdir.is_dir():  # a link or directory planted at a domain file's name fails now, not after the copy
            with OutDir(outdir) as od:
                for p in plan.instances:
                    for name in file_names(p, seeds[p.instance.id] is not None):
                        if name is not None:
                            od.check_replaceable(name)
        output_dir(str(outdir))  # created now; a file at that name is a usage error (exit 2)
        opts = ExportOptions(
            fmt=plan.fmt, sha256=args.sha256, verify=True, workers=args.workers, overwrite=args.overwrite,
            algorithm=digest_algorithm(args), warm=args.warm or args.sync,
        )
        domains = {p.instance.id: _domain_fields(p, outdir, seeds[p.instance.id]) for p in plan.instances}

        def job(p: InstancePlan, d: PlannedDisk) -> Job:
            def run(advance: VolumeProgress) -> tuple[dict[str, Any], bool]:
                fields = domains[p.instance.id]
                if opts.warm:
                    from ..export.sync import export_pass

                    entry, reused = export_pass(_source(p, d, fields), outdir, opts, args.sync, advance,
                                                on_read=advance.read)
                else:
                    entry, reused = export_source(_source(p, d, fields), outdir, opts, advance, on_read=advance.read)
                if reused and any(entry.get(k) != v for k, v in fields.items()):
                    # an earlier run's output, still verified, of an instance whose seed changed since
                    entry = {**entry, **fields}
                    manifest.record(outdir, entry, fsync=opts.fsync)
                return entry, reused

            return Job(d.name, d.size or 0, run, label=f"{d.volume_id} ({d.device or '-'})")

        jobs = [(p, d) for p in plan.instances for d in p.disks]
        outcome = run_batch([job(p, d) for p, d in jobs], rep, args.jobs)
        if outcome.entries:  # recorded unflushed (manifest.record): flushed once, here
            manifest.flush(outdir)
        if outcome.errors:
            console_err.print(
                f"{len(outcome.errors)} of {len(jobs)} disk(s) failed; no domain written for their instances"
            )
        for p in plan.instances:
            if any(d.name not in outcome.entries for d in p.disks):
                continue
            xml, script = _domain(p, outdir, plan.fmt.name, args, seeds[p.instance.id])
            seed = domains[p.instance.id]["seed"]
            hw = p.hardware.to_json() if p.hardware else None
            if args.json:
                rep.event(
                    "domain",
                    id=p.instance.id,
                    xml=str(xml),
                    virt_install=str(script),
                    vcpus=p.vcpus,
                    memory_mib=p.memory_mib,
                    disks=[str(d.output) for d in p.disks],
                    kernel=os.path.abspath(args.kernel) if args.kernel else None,
                    hardware=hw,
                    seed=seed,
                )
            else:
                for line in p.hardware.lines() if p.hardware else []:
                    rep.say(f"{esc(p.instance.id)} hardware: {esc(line)}")
                if seed is not None:
                    rep.say(f"{esc(p.instance.id)}: NoCloud seed {esc(seed['output'])} sha256 {seed['sha256']}")
                rep.say(
                    f"{esc(p.instance.id)}: {p.vcpus} vCPU, {p.memory_mib} MiB, disks "
                    f"{', '.join(f'{d.target_dev}={d.output.name}' for d in p.disks)} -> {esc(str(xml))}; "
                    f"define it with: virsh define {esc(shlex.quote(str(xml)))} (or run {esc(str(script))})"
                )
    return outcome.exit_code
