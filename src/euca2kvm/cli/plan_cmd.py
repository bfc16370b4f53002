# SPDX-License-Identifier: Apache-2.0
"""``euca2kvm plan [INSTANCE_ID ...] -o OUTDIR``: what an export would do, what stops it; writes nothing."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from ..errors import UsageError
from ..eucalyptus.cloudinuse import HostState, host_state
from ..eucalyptus.discovery import Discovery
from ..eucalyptus.inventory import Inventory
from ..export import manifest
from ..export.formats import OutputFormat, output_format
from ..export.gzsource import gz_id, split_sources
from ..planning.instances import (
    Blocker,
    InstancePlan,
    PlannedDisk,
    check_volume,
    free_bytes,
    plan_instance,
)
from ..planning.san import check_plans
from ..units import human
from .common import (
    SSH_SCHEME,
    add_ceph_args,
    add_device_args,
    add_ssh_args,
    console,
    console_err,
    device_ids,
    discover_sources,
    esc,
    print_json,
    set_ceph_defaults,
)
from .inventory_cmd import add_inventory_sources, inventory_from_args

DOMAIN_FORMATS = ("raw", "qcow2")  # what the libvirt domain writer attaches


@dataclass
class Plan:
    outdir: Path
    fmt: OutputFormat
    sources: list[str]
    instances: list[InstancePlan] = field(default_factory=list)
    volumes: list[PlannedDisk] = field(default_factory=list)  # without an inventory: every volume found
    gz: list[tuple[str, Path]] = field(default_factory=list)  # (gzip object, output)
    host_blockers: list[Blocker] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def blockers(self) -> list[Blocker]:
        return [
            *self.host_blockers,
            *(b for p in self.instances for b in p.all_blockers),
            *(b for d in self.volumes for b in d.blockers),
        ]

    def estimated(self) -> int:
        disks = [*self.volumes, *(d for p in self.instances for d in p.disks)]
        return sum(d.estimated_bytes or 0 for d in disks)

    def to_json(self) -> dict[str, Any]:
        return {
            "outdir": str(self.outdir),
            "format": self.fmt.name,
            "sources": self.sources,
            "free_bytes": free_bytes(self.outdir),
            "estimated_bytes": self.estimated(),
            "instances": [p.to_json() for p in self.instances],
            "volumes": [d.to_json() for d in self.volumes],
            "gzip_objects": [
                {
                    "file": g,
                    "id": gz_id(g),
                    "output": str(o),
                    "compressed_bytes": os.stat(g).st_size,
                    "estimated_bytes": None,
                }
                for g, o in self.gz
            ],
            "host_blockers": [b.to_json() for b in self.host_blockers],
            "blockers": [b.to_json() for b in self.blockers()],
            "notes": self.notes,
        }


def add_plan_args(p: argparse.ArgumentParser) -> None:
    add_inventory_sources(p, with_file=True)
    p.add_argument(
        "--source",
        "-s",
        action="append",
        metavar="PATH",
        help="volumes directory, container file, DAS device or snap-*.gz object (repeatable; default: "
        "the volumes directory and DAS devices recorded in the inventory)",
    )
    add_ceph_args(p)
    add_ssh_args(p)
    add_device_args(p)
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output directory")
    p.add_argument("--format", "-f", default="raw", choices=DOMAIN_FORMATS, help="image format (default raw)")
    p.add_argument(
        "--kernel", metavar="FILE", help="kernel for a direct-kernel-boot domain (EKI-booted guests)"
    )
    p.add_argument("--ramdisk", metavar="FILE", help="initrd/ramdisk to go with --kernel")
    p.add_argument(
        "--cmdline", metavar="ARGS", help="kernel command line with --kernel (default root=/dev/vda...)"
    )
    h = p.add_argument_group("virtual hardware (default: what a Eucalyptus 4.x NC gives the instance)")
    h.add_argument("--nc-config", metavar="FILE",
                   help="the NC's eucalyptus.conf: USE_VIRTIO_ROOT/DISK/NET decide disk bus and NIC model "
                   "(parsed, never run; default: the packaged file, virtio everywhere)")
    h.add_argument("--disk-bus", choices=("virtio", "scsi", "ide", "sata"), help="override the disk bus")
    h.add_argument("--nic-model", choices=("virtio", "e1000", "rtl8139"), help="override the NIC model")


def resolve_sources(args: argparse.Namespace, inv: Inventory | None, notes: list[str]) -> list[str]:
    if args.source:
        return list(args.source)
    if inv is None and device_ids():
        return []  # only --device LUNs
    if inv is None:
        raise UsageError("without an inventory, name the sources with --source PATH")
    paths = [inv.volumes_dir] if inv.volumes_dir else []
    for dev in inv.das_devices:
        if dev.startswith("/"):
            paths.append(dev)
        else:
            notes.append(f"DAS device {dev!r} is a volume group name; pass its block device with --source")
    if inv.ceph_pools:  # the ceph-rbd backend: its pools, read as the inventory's cephx user unless --ceph-* say
        set_ceph_defaults(inv.ceph_user, inv.ceph_conf, inv.ceph_keyring)
        paths += [f"rbd:{pool}" for pool in inv.ceph_pools]
    if not paths and (inv.san_volumes or device_ids()):
        return paths  # a SAN backend: its LUNs come from --device, plan says what to attach
    if not paths:
        raise UsageError(
            f"the inventory from {inv.source} records no volumes directory; pass --source PATH "
            "(e.g. /var/lib/eucalyptus/volumes copied from the storage controller)"
        )
    gone = [p for p in paths if not p.startswith("rbd:") and not os.path.exists(p)]
    if gone:
        raise UsageError(
            f"{', '.join(gone)} (from the inventory) does not exist on this host; pass --source PATH"
        )
    return paths


def make_plan(
    args: argparse.Namespace, inv: Inventory | None, host: HostState | None = None, quiet: bool = False
) -> tuple[Plan, Discovery]:
    if args.ramdisk and not args.kernel:
        raise UsageError("--ramdisk needs --kernel")
    if args.cmdline and not args.kernel:
        raise UsageError("--cmdline needs --kernel")
    for f in (args.kernel, args.ramdisk):
        if f and not os.path.isfile(f):
            raise UsageError(f"{f}: no such file")
    fmt = output_format(args.format)
    outdir = Path(args.output)
    notes: list[str] = []
    sources = resolve_sources(args, inv, notes)
    gz, rest = split_sources(sources)
    d = discover_sources(rest, quiet=quiet) if rest or device_ids() else Discovery()
    if host is None and any(p.startswith(SSH_SCHEME) for p in rest):
        from ..remote.sources import host_state_for  # asyncssh is loaded for ssh:// sources only

        host = host_state_for(rest)
    host = host if host is not None else host_state()
    plan = Plan(outdir, fmt, sources, notes=notes + [str(n) for n in d.notes])
    plan.host_blockers = [Blocker("in-use", e.what) for e in host.host_evidence()]
    ids = list(dict.fromkeys(getattr(args, "ids", []) or []))
    if inv is not None:
        insts = (
            [inv.instance(i) for i in ids]
            if ids
            else [
                i for i in inv.instances if i.attachments and i.state not in ("terminated", "shutting-down")
            ]
        )
        if not insts:
            raise UsageError(f"no instance with EBS volumes in the inventory from {inv.source}")
        plan.instances = [plan_instance(i, inv, d, outdir, fmt, host, sources, args.kernel) for i in insts]
        check_plans(plan.instances, inv, force=getattr(args, "force", False))
        choose_instance_hardware(args, inv, plan.instances)
    else:
        if ids:
            raise UsageError("instance ids need an inventory (--inventory, --db or --api)")
        # A snap-*.gz in a directory is found both by discovery (a snapshot-gz volume) and by split_sources
        # (a gzip object): it is planned once, as the gzip object, or it would collide with itself.
        vols = [v for v in d.volumes if not (v.compressed and v.files and v.files[0] in gz)]
        for v in vols:
            disk = PlannedDisk(
                volume_id=v.id,
                device=None,
                attachment="none",
                is_root=False,
                name=v.id,
                output=manifest.output_path(outdir, v.id, fmt.ext),
                target_dev="",
            )
            check_volume(disk, d, None, host, fmt, rest)
            plan.volumes.append(disk)
        plan.gz = [(g, manifest.output_path(outdir, gz_id(g), fmt.ext)) for g in gz]
        try:  # what `export --all` refuses: two sources of one output name (the same id)
            from .export_cmd import volume_label

            manifest.check_distinct([*((volume_label(v), p.output) for v, p in zip(vols, plan.volumes,
                                                                                  strict=True)),
                                     *((f"{gz_id(g)} ({g})", o) for g, o in plan.gz)])
        except UsageError as e:
            plan.host_blockers.append(Blocker("name-collision", str(e)))
    return plan, d


def choose_instance_hardware(args: argparse.Namespace, inv: Inventory, plans: list[InstancePlan]) -> None:
    """Each instance's disk bus, target devices, serials, NIC model and MAC, as its NC had them."""
    from ..eucalyptus import identity
    from ..kvm.ncconf import DEFAULT, choose_hardware, read_nc_config

    nc_file = getattr(args, "nc_config", None)
    nc = read_nc_config(nc_file) if nc_file else DEFAULT
    origin = "database" if inv.source.startswith("postgresql") else "EC2 API" if inv.source.startswith(
        "ec2") else "inventory"
    for p in plans:
        inst = p.instance
        mac = identity.mac(inst.mac)
        if inst.mac is not None and mac is None:
            p.warnings.append(f"{inst.id}: recorded MAC {inst.mac!r} is not a MAC address; libvirt picks one")
        p.hardware = choose_hardware([(d.volume_id, d.device) for d in p.disks], inst.platform, nc,
                                     nc_given=bool(nc_file), disk_bus=getattr(args, "disk_bus", None),
                                     nic_model=getattr(args, "nic_model", None), mac=mac, mac_origin=origin)
        for disk, chosen in zip(p.disks, p.hardware.disks, strict=True):
            disk.target_dev = chosen.target_dev
        boot = p.disks[0] if p.disks else None
        if boot is not None and boot.volume is not None and p.boot_verdict is not None:
            from ..kvm.guestfiles import warning_lines  # the boot disk's guest config against this hardware

            vol, bus, hw_mac = boot.volume, p.hardware.disks[0].bus, p.hardware.mac
            if vol.blocks_factory is None:
                lines = warning_lines(vol.extent_map, bus, hw_mac)
            else:  # a backend's volume (RBD) has no extent map: read through its block source
                from ..blocks import BlockReader
                from ..errors import Euca2kvmError

                try:
                    with BlockReader(vol.block_source()) as reader:
                        lines = warning_lines(reader, bus, hw_mac)
                except Euca2kvmError as e:
                    lines = [f"guest configuration not checked: {e}"]
            p.warnings += [f"{inst.id}: {w}" for w in lines]


def build_parser(sub: Any) -> None:
    p = sub.add_parser(
        "plan",
        help="show what export-instance would export, the sizes, and every blocker (writes nothing)",
        description="For each instance (default: every instance of the inventory with EBS volumes; "
        "without an "
        "inventory: every volume and gzip'd snapshot in the sources): the disks in boot order, their "
        "source files, bytes to read, estimated output sizes against the free space of OUTDIR, and "
        "every blocker (in use, missing file, missing PV, unsupported LV type, no boot loader without "
        "--kernel). Nothing is created, not even OUTDIR. Exit 0 when nothing blocks, else the exit "
        "code the export would fail with.",
    )
    p.add_argument("ids", nargs="*", metavar="INSTANCE_ID",
                   help="instances to plan (default: every instance with attached volumes that is not terminated)")
    add_plan_args(p)
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--cutover", action="store_true",
                   help="estimate the final pass (export --sync) of every warm image in OUTDIR from its manifest: "
                        "blocks changed since the last --warm pass (at the rate measured between the last two "
                        "passes) and that pass's read rate; reads nothing else")
    p.set_defaults(func=do_plan)


def _disk_row(t: Table, who: str, d: PlannedDisk) -> None:
    v = d.volume
    src = ", ".join(os.path.basename(f) for f in v.files) if v else "-"
    state = "; ".join(b.kind for b in d.blockers) or "ok"
    t.add_row(
        esc(who),
        esc(d.device or "-"),
        esc(d.target_dev or "-"),
        esc(d.volume_id),
        esc(src),
        human(d.size) if d.size is not None else "?",
        human(d.bytes_to_read) if d.bytes_to_read is not None else "?",
        human(d.estimated_bytes) if d.estimated_bytes is not None else "?",
        esc(d.output.name),
        state if state == "ok" else f"[red]{esc(state)}[/]",
    )


def print_plan(plan: Plan) -> None:
    t = Table(title=f"export plan for {plan.outdir} ({plan.fmt.name})")
    for col in (
        "INSTANCE",
        "DEVICE",
        "KVM",
        "VOLUME",
        "FROM",
        "SIZE",
        "TO READ",
        "ESTIMATED",
        "OUTPUT",
        "STATE",
    ):
        t.add_column(col, overflow="fold")
    for p in plan.instances:
        label = f"{p.instance.id} ({p.vcpus} vCPU, {p.memory_mib} MiB)"
        for d in p.disks:
            _disk_row(t, label, d)
            label = ""
    for d in plan.volumes:
        _disk_row(t, "-", d)
    for g, out in plan.gz:
        t.add_row(
            "-",
            "-",
            "-",
            esc(gz_id(g)),
            esc(os.path.basename(g)),
            "?",
            human(os.stat(g).st_size),
            "? (gzip)",
            esc(out.name),
            "ok",
        )
    console.print(t)
    for p in plan.instances:
        if p.boot_verdict:
            console.print(f"{esc(p.instance.id)} boot disk: {esc(p.boot_verdict)}")
        for line in p.hardware.lines() if p.hardware else []:
            console.print(f"{esc(p.instance.id)} hardware: {esc(line)}")
        for w in [*p.warnings, *(w for d in p.disks for w in d.warnings)]:
            console_err.print(f"[yellow]warning:[/] {esc(w)}")
    for n in plan.notes:
        console_err.print(f"note: {esc(n)}")
    free = free_bytes(plan.outdir)
    need = plan.estimated()
    console.print(
        f"estimated output {human(need)} ({need} bytes); free in {esc(str(plan.outdir))}: "
        f"{human(free)} ({free} bytes)"
    )
    blockers = plan.blockers()
    if not blockers:
        console.print("[green]nothing blocks the export[/]")
    for b in blockers:
        force = " (--force overrides)" if b.forceable else ""
        console.print(f"[red]blocker[/] {b.kind}: {esc(b.message)}{force}")


def exit_code(plan: Plan) -> int:
    blockers = plan.blockers()
    hard = [b for b in blockers if not b.forceable]
    return (hard or blockers)[0].exit_code if blockers else 0


def do_cutover(args: argparse.Namespace) -> int:
    """plan --cutover: the final pass of each warm image, estimated from OUTDIR's manifest."""
    import time

    from ..export.warm import cutover

    rows = [cutover(v, time.time()) for v in manifest.load(Path(args.output))["volumes"] if "blocks" in v]
    if args.json:
        print_json({"outdir": args.output, "cutover": rows})
        return 0
    for r in rows:
        est = "unknown (run export --warm once more to measure the change rate)" if r["estimated_seconds"] is None \
            else f"~{r['expected_changed_blocks']} of {r['blocks']} blocks changed, ~{r['estimated_seconds']} s"
        console.print(f"{esc(str(r['id']))}: {'consistent' if r['consistent'] else 'warm'}, {r['passes']} pass(es), "
                      f"final pass {est}")
    return 0


def do_plan(args: argparse.Namespace) -> int:
    if args.cutover:
        return do_cutover(args)
    inv = inventory_from_args(args, required=False)
    plan, _ = make_plan(args, inv, quiet=args.json)
    need = plan.estimated()
    if need > free_bytes(plan.outdir):
        plan.host_blockers.append(
            Blocker(
                "no-space",
                f"the images need about {need} bytes, {plan.outdir} has {free_bytes(plan.outdir)} bytes free",
            )
        )
    if args.json:
        print_json(plan.to_json())
    else:
        print_plan(plan)
    return exit_code(plan)
