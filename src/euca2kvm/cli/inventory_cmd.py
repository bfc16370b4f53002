# SPDX-License-Identifier: Apache-2.0
"""``euca2kvm inventory --db URL | --api URL``: capture the cloud's instances, volumes and storage rows.

Also the shared ``--inventory FILE | --db URL | --api URL`` options of the commands that need an
inventory (``export-instance``, ``plan``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from rich.table import Table

from ..errors import UsageError
from ..eucalyptus.inventory import Inventory, load_inventory, save_inventory
from .common import add_ssh_args, configure_ssh, console, console_err, esc, print_json


def add_inventory_sources(p: argparse.ArgumentParser, with_file: bool) -> None:
    """``--db``/``--api`` (and ``--inventory FILE``) plus the euca2ools-style credential flags."""
    g = p.add_argument_group("inventory source")
    if with_file:
        g.add_argument(
            "--inventory", metavar="FILE", help="an inventory file written by 'euca2kvm inventory -o'"
        )
    g.add_argument(
        "--db",
        metavar="URL",
        help="the CLC's PostgreSQL, e.g. postgresql://eucalyptus:PW@clc:8777/eucalyptus_shared "
        "(port 8777 by default; 4.0 and 4.1+ layouts)",
    )
    g.add_argument("--db-ssh", metavar="[USER@]HOST[:PORT]",
                   help="reach --db through an SSH tunnel to this host (the URL's host and port as that host "
                        "sees them, e.g. localhost:8777 on the CLC); host key and login as --ssh-*")
    g.add_argument(
        "--api",
        metavar="URL",
        nargs="?",
        const="",
        help="the EC2 API, e.g. http://clc:8773/services/compute (no value: EC2_URL from the "
        "eucarc or environment)",
    )
    c = p.add_argument_group("EC2 credentials (euca2ools style; default: --eucarc, then the environment)")
    c.add_argument("-I", "--access-key-id", metavar="KEY_ID", help="access key id (default: from the eucarc or "
                   "the environment)")
    c.add_argument("-S", "--secret-key", metavar="KEY", help="secret key (default: from the eucarc or the environment)")
    c.add_argument("--security-token", metavar="TOKEN", help="session token of temporary credentials, if any")
    c.add_argument("--region", metavar="REGION", help="signing region (default: eucalyptus)")
    c.add_argument(
        "--eucarc", metavar="FILE", help="read EC2_URL and keys from this eucarc (parsed, not run)"
    )
    c.add_argument("--signature-version", choices=("v2", "v4"), help="request signing (default v4)")
    c.add_argument(
        "--verbose-all",
        action="store_true",
        help="list every account's resources (the admin 'verbose' filter; needs cloud-admin keys)",
    )


def inventory_from_args(args: argparse.Namespace, required: bool = True) -> Inventory | None:
    chosen = [n for n in ("inventory", "db", "api") if getattr(args, n, None) is not None]
    if len(chosen) > 1:
        raise UsageError(f"give one inventory source, not {' and '.join('--' + n for n in chosen)}")
    if not chosen:
        if required:
            raise UsageError("an inventory is needed: --inventory FILE, --db URL or --api URL")
        return None
    if chosen[0] == "inventory":
        return load_inventory(args.inventory)
    if chosen[0] == "db":
        from ..eucalyptus.db import read_inventory_db

        if getattr(args, "db_ssh", None):
            from ..remote.tunnel import forward_db_url

            configure_ssh()
            url, reached = forward_db_url(args.db, args.db_ssh)
            inv = read_inventory_db(url)
            return dataclasses.replace(inv, source=f"{inv.source} ({reached})")
        return read_inventory_db(args.db)
    from ..eucalyptus.api import read_inventory_api
    from ..eucalyptus.credentials import resolve_credentials

    creds = resolve_credentials(
        url=args.api or None,
        access_key=args.access_key_id,
        secret_key=args.secret_key,
        security_token=args.security_token,
        region=args.region,
        eucarc=args.eucarc,
    )
    return read_inventory_api(
        args.api or None, creds, verbose=args.verbose_all, signature_version=args.signature_version
    )


def build_parser(sub: Any) -> None:
    p = sub.add_parser(
        "inventory",
        help="capture instances, volumes and storage rows from the cloud's database or API",
        description="Read the Eucalyptus database (instances, VM types, boot and runtime attachments, "
        "volumes, "
        "snapshots, the storage controller's per-volume rows and volumes directory) or the EC2 API, "
        "print a summary (or JSON) and optionally save a versioned inventory file that "
        "export-instance and plan accept after the cloud is gone. Read-only.",
    )
    add_inventory_sources(p, with_file=False)
    add_ssh_args(p)
    p.add_argument("-o", "--output", metavar="FILE", help="write the inventory file here (atomically)")
    p.add_argument("--json", action="store_true", help="print the inventory JSON instead of the summary")
    p.set_defaults(func=do_inventory)


def summary(inv: Inventory) -> Table:
    t = Table(title=f"{len(inv.instances)} instance(s) from {esc(inv.source)}")
    for col in ("INSTANCE", "STATE", "TYPE", "CPU", "MEM MiB", "KERNEL", "MAC", "PRIVATE", "KEY",
                "DISKS (boot first)"):
        t.add_column(col, overflow="fold")
    for inst in inv.instances:
        vt = inst.vm_type
        disks = ", ".join(f"{a.volume_id}@{a.device or '?'}" for a in inv.ordered_volumes(inst)) or "-"
        t.add_row(
            esc(inst.id),
            esc(inst.state or "?"),
            esc(vt.name if vt else "?"),
            str(vt.cpus) if vt and vt.cpus else "?",
            str(vt.memory_mib) if vt and vt.memory_mib else "?",
            esc(inst.kernel_id or "-"),
            esc(inst.mac or "-"),
            esc(" ".join(x for x in (inst.private_ip, inst.private_dns) if x) or "-"),
            esc(inst.key_name or "-"),
            esc(disks),
        )
    return t


def do_inventory(args: argparse.Namespace) -> int:
    if args.db is None and args.api is None:
        raise UsageError("give --db URL or --api URL")
    inv = inventory_from_args(args)
    assert inv is not None
    if args.output:
        save_inventory(inv, args.output)
    if args.json:
        print_json(json.loads(inv.to_json()))
        return 0
    console.print(summary(inv))
    exported = sum(1 for s in inv.storage_volumes if s.export_active or s.lodev_name)
    console.print(
        f"{len(inv.volumes)} volume(s), {len(inv.snapshots)} snapshot(s), "
        f"{len(inv.storage_volumes)} SC row(s) ({exported} exported or on a loop device); "
        f"volumes dir: {esc(inv.volumes_dir or 'unknown (pass --source when exporting)')}"
    )
    if inv.das_devices:
        console.print(f"DAS device(s): {esc(', '.join(inv.das_devices))}")
    missing = sorted({f for i in inv.instances for f in i.unavailable})
    if missing:
        console_err.print(f"not available from {esc(inv.source)}: {esc(', '.join(missing))}")
    if args.output:
        console_err.print(f"inventory written to {esc(args.output)}")
    return 0
