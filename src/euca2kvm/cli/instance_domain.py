# SPDX-License-Identifier: Apache-2.0
"""The domain and NoCloud seed ``export-instance`` writes for an instance: its options and their checks.

Everything here is computed before any disk is exported (bad options and unusable inventory values
fail first); :mod:`.instance_cmd` writes the files once the disks are done.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import UsageError
from ..eucalyptus import identity
from ..kvm.libvirt import BRIDGE_RE, Disk, Domain, sanitize_name
from ..kvm.seed import Seed, StaticNetwork, build_seed
from ..planning.instances import InstancePlan, default_cmdline

# What the database gives for --static-network is the address alone (no netmask or gateway: those
# live in the cloud's network configuration, not per instance). /24 is Eucalyptus's sample subnet.
DEFAULT_STATIC_PREFIX = 24


def add_domain_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("domain and NoCloud seed")
    g.add_argument("--network", default="default", metavar="NAME",
                   help="libvirt network of the NIC (default 'default'; 'none': no NIC)")
    g.add_argument("--bridge", metavar="BR", help="attach the NIC to this host bridge instead of a network")
    g.add_argument("--image-dir", metavar="DIR",
                   help="absolute directory the images (and seed) will be in on the KVM host; the domain's "
                   "disk paths point there (default: OUTDIR)")
    g.add_argument("--no-seed", action="store_true",
                   help="no OUTDIR/<instance>.seed.iso (cloud-init then finds no datasource and stays disabled; "
                   "a guest pinned to its old MAC keeps its network only if the domain has that MAC)")
    g.add_argument("--replay-user-data", action="store_true",
                   help="put the instance's original user-data into the seed (it already ran once in the cloud)")
    g.add_argument("--static-network", action="store_true",
                   help="the seed configures the recorded private address instead of DHCP")
    g.add_argument("--static-prefix", type=int, metavar="N",
                   help=f"prefix length with --static-network (the cloud does not record it; default "
                   f"{DEFAULT_STATIC_PREFIX})")
    g.add_argument("--static-gateway", metavar="IP", help="default gateway with --static-network")


def check_domain_args(args: argparse.Namespace) -> None:
    if args.bridge is not None:
        if args.network not in ("default", None):
            raise UsageError("give --network or --bridge, not both")
        if not BRIDGE_RE.match(args.bridge):
            raise UsageError(f"invalid bridge name {args.bridge!r}")
    if args.image_dir is not None and not os.path.isabs(args.image_dir):
        raise UsageError(f"--image-dir must be an absolute path on the KVM host, not {args.image_dir!r}")
    if args.no_seed and (args.replay_user_data or args.static_network):
        raise UsageError("--replay-user-data and --static-network go into the seed; drop --no-seed")
    if (args.static_prefix is not None or args.static_gateway) and not args.static_network:
        raise UsageError("--static-prefix/--static-gateway need --static-network")


def file_names(plan: InstancePlan, with_seed: bool) -> tuple[str, str, str | None]:
    """OUTDIR names of the domain XML, the virt-install script and the seed of ``plan``'s instance."""
    base = sanitize_name(plan.instance.id)
    return f"{base}.xml", f"{base}.virt-install.sh", f"{base}.seed.iso" if with_seed else None


def seed_for(plan: InstancePlan, args: argparse.Namespace, warn: list[str]) -> bytes | None:
    """The seed image of ``plan``'s instance (None with --no-seed); notes what it could not include."""
    if args.no_seed:
        return None
    inst = plan.instance
    keys = [k] if (k := identity.public_key(inst.public_key)) else []
    if not keys:
        why = "the API does not give key material" if "public_key" in inst.unavailable else "none recorded"
        warn.append(f"{inst.id}: the seed carries no SSH public key ({why}); the guest keeps the keys it has")
    user_data: bytes | None = None
    if args.replay_user_data:
        if inst.user_data is None:
            warn.append(f"{inst.id}: --replay-user-data, but no user-data is recorded")
        else:
            try:
                user_data = identity.decode_user_data(inst.user_data)
            except ValueError:
                raise UsageError(f"{inst.id}: the inventory's user_data is not base64") from None
    static = None
    if args.static_network:
        address = identity.address(inst.private_ip)
        if address is None:
            raise UsageError(f"{inst.id}: --static-network, but no private address is recorded")
        prefix = args.static_prefix if args.static_prefix is not None else DEFAULT_STATIC_PREFIX
        if args.static_prefix is None or not args.static_gateway:
            warn.append(f"{inst.id}: the cloud records no netmask or gateway: {address}/{prefix}"
                        + ("" if args.static_gateway else ", no default route")
                        + " (--static-prefix/--static-gateway)")
        static = StaticNetwork(address, prefix, args.static_gateway)
    mac = plan.hardware.mac if plan.hardware else None
    if mac is None:
        warn.append(f"{inst.id}: no MAC recorded: the seed's network config matches any e* interface")
    seed = Seed(instance_id=inst.id, hostname=identity.hostname(identity.dns_name(inst.private_dns), inst.id),
                public_keys=keys, mac=mac, user_data=user_data, static=static)
    return build_seed(seed)


def build_domain(plan: InstancePlan, outdir: Path, fmt: str, args: argparse.Namespace,
                 seed_name: str | None) -> Domain:
    """The libvirt domain: the NC's hardware (plan.hardware), paths under --image-dir or OUTDIR."""
    inst, hw = plan.instance, plan.hardware
    where = Path(args.image_dir) if args.image_dir else outdir
    kernel = args.kernel
    if hw is None:  # pragma: no cover - make_plan always chooses the hardware of an instance
        raise UsageError(f"{inst.id}: no hardware chosen")
    disks = [Disk(path=where / d.output.name, format=fmt, target_dev=c.target_dev, bus_name=c.bus,
                  serial=c.serial, cache="none") for d, c in zip(plan.disks, hw.disks, strict=True)]
    if seed_name is not None:
        disks.append(Disk(path=where / seed_name, format="raw", target_dev=hw.cdrom_dev, bus_name=hw.cdrom_bus,
                          cdrom=True))
    network = None if args.bridge or args.network == "none" else args.network
    return Domain(
        name=inst.id,
        memory_mib=plan.memory_mib,
        vcpus=plan.vcpus,
        disks=disks,
        kernel=os.path.abspath(kernel) if kernel else None,
        initrd=os.path.abspath(args.ramdisk) if kernel and args.ramdisk else None,
        cmdline=(args.cmdline or default_cmdline(plan)) if kernel else None,
        network=network,
        bridge=args.bridge,
        mac=hw.mac if network is not None or args.bridge else None,
        nic_model=hw.nic_model,
        nic_pci_slot=hw.nic_pci_slot,
        boot_dev=kernel is None,
        cpu_topology=True,
        rng=True,
        clock="localtime",
        description=f"Eucalyptus instance {inst.id}",
    )
