# SPDX-License-Identifier: Apache-2.0
"""``euca2kvm libvirt IMAGE...`` and ``euca2kvm boot-test IMAGE``: make an export runnable, and prove it boots."""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path
from typing import Any

from ..errors import Euca2kvmError, UsageError, VerifyError
from ..export import qemu_img
from ..kvm.boottest import DEFAULT_MEMORY_MIB, DEFAULT_TIMEOUT, BootResult, boot_test
from ..kvm.libvirt import Disk, Domain, write_domain_files
from ..outdir import write_atomic
from ..safefs import private_tmp, read_bounded
from .common import DEFAULT_DOMAIN_MEMORY_MIB, DEFAULT_VCPUS, console, esc, output_dir, print_json

DISK_TARGETS = [f"vd{chr(ord('a') + i)}" for i in range(26)]
# A VGA screendump PNG is a few hundred KiB; one larger than this is not ours to copy.
MAX_SCREENSHOT = 16 << 20
BOOT_PREFIX = "euca2kvm-boot-"  # boot-test's work directory in the system temporary directory
# Default --timeout of the SSH proof (kept here so the help text needs no paramiko/QEMU import).
SSH_TIMEOUT = 600.0


def build_parser(sub: Any) -> None:
    p = sub.add_parser("libvirt", help="write a libvirt domain (and the virt-install line) for disk images",
                       description="Write NAME.xml next to the first image: virtio disks in the order given, "
                                   "serial console, VNC graphics on 127.0.0.1, the default network; and "
                                   "NAME.virt-install.sh with the equivalent virt-install --import command.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="disk images, boot disk first")
    p.add_argument("--name", help="domain name (default: the first image's name)")
    p.add_argument("--memory", type=int, default=DEFAULT_DOMAIN_MEMORY_MIB, metavar="MIB", help="guest memory in MiB")
    p.add_argument("--vcpus", type=int, default=DEFAULT_VCPUS, metavar="N", help="virtual CPUs")
    p.add_argument("-o", "--output", metavar="XML", help="where to write the domain XML")
    p.set_defaults(func=do_libvirt)

    b = sub.add_parser("boot-test", help="boot an image in QEMU (read-only, no network) and report how far it got",
                       description="Boot IMAGE in qemu-system-x86_64 with the disk read-only and no network, "
                                   "capture the serial console and the VGA text screen, and report the stage "
                                   "reached (firmware, boot loader, kernel, login prompt or --expect TEXT) with "
                                   "a screenshot. KVM is used only when a probe shows it runs guests; "
                                   "EUCA2KVM_ACCEL=tcg|kvm overrides. Exits 6 when the goal is not reached.")
    b.add_argument("image", metavar="IMAGE|DOMAIN.xml",
                   help="a disk image, or a libvirt domain XML for the usable-boot proof over SSH")
    b.add_argument("--format", help="image format (default: detected by qemu-img)")
    b.add_argument("--timeout", type=float, metavar="S",
                   help=f"give up after S seconds (default {DEFAULT_TIMEOUT:g}; {SSH_TIMEOUT:g} with a domain)")
    b.add_argument("--expect", metavar="TEXT", help="text that proves the boot (default: a login prompt)")
    b.add_argument("--memory", type=int, default=DEFAULT_MEMORY_MIB, metavar="MIB", help="guest memory in MiB")
    b.add_argument("--artifacts", metavar="DIR",
                   help="write IMAGE.boot.png (screenshot) and IMAGE.boot.log (serial console) into DIR, created "
                        "when missing (default: the current directory; nothing is written next to the image unless "
                        "DIR is its directory)")
    b.add_argument("--workdir", metavar="DIR", help="keep QEMU's whole work directory (serial log, VGA text, "
                   "screenshot) here instead of a temporary one")
    b.add_argument("--json", action="store_true", help="print the result as JSON")
    ssh = b.add_argument_group("usable-boot proof (a libvirt domain XML: its disks behind throwaway overlays, "
                               "its seed read-only, user-mode network with only SSH forwarded to 127.0.0.1)")
    ssh.add_argument("--domain", action="store_true", help="the argument is a domain XML (implied by .xml)")
    ssh.add_argument("--ssh-key", metavar="KEY", help="private key to log in with (the instance's key)")
    ssh.add_argument("--ssh-user", default="root", metavar="USER", help="default: root")
    ssh.add_argument("--command", metavar="CMD", help="also run CMD in the guest; its exit status must be 0")
    ssh.add_argument("--expect-host-key", metavar="FILE",
                     help="public host keys the guest must present (.pub or known_hosts lines)")
    b.set_defaults(func=do_boot_test)


def image_format(path: Path, given: str | None = None) -> str:
    if given:
        return given
    return str(qemu_img.info(str(path)).get("format", "raw"))


def domain_for(images: list[Path], name: str, memory_mib: int, vcpus: int, formats: list[str] | None = None,
               kernel: str | None = None, initrd: str | None = None, cmdline: str | None = None) -> Domain:
    if len(images) > len(DISK_TARGETS):
        raise UsageError(f"at most {len(DISK_TARGETS)} disks")
    fmts = formats or [image_format(p) for p in images]
    disks = [Disk(p, f, DISK_TARGETS[i]) for i, (p, f) in enumerate(zip(images, fmts, strict=True))]
    return Domain(name, memory_mib, vcpus, disks, kernel=kernel, initrd=initrd, cmdline=cmdline)


def do_libvirt(args: argparse.Namespace) -> int:
    images = [Path(i).resolve() for i in args.images]
    for i in images:
        if not i.exists():
            raise UsageError(f"{i} does not exist")
    name = args.name or images[0].name.split(".")[0]
    domain = domain_for(images, name, args.memory, args.vcpus)
    xml_path = Path(args.output) if args.output else images[0].with_name(f"{domain.name}.xml")
    xml_path, script = write_domain_files(domain, xml_path)
    console.print(f"wrote {esc(str(xml_path))}")
    console.print(f"virt-install line: {esc(str(script))}")
    console.print(f"  define with: virsh define {shlex.quote(str(xml_path))}")
    return 0


def run_boot_test(image: Path, fmt: str, timeout: float, expect: str | None, memory: int,
                  workdir: Path) -> BootResult:
    return boot_test(image, fmt, timeout=timeout, expect=expect, workdir=workdir, memory_mib=memory)


def keep_beside(image: Path, r: BootResult, strict: bool = False, where: Path | None = None) -> Path | None:
    """Keep the screenshot and serial log as ``IMAGE.boot.png``/``.boot.log`` next to the image (``export
    --boot-test``, where ``report`` finds them), or in the directory ``where``, when it is writable (else
    IOFailure with ``strict``); the boot's work directory is temporary. Returns the screenshot's path.
    Neither file is written through a symlink at its name."""
    base = (where if where is not None else image.parent) / image.name
    try:
        write_atomic(base.with_name(base.name + ".boot.log"), r.serial)
        if r.screenshot is not None and r.screenshot.exists():
            return write_atomic(base.with_name(base.name + ".boot.png"), read_bounded(r.screenshot, MAX_SCREENSHOT))
    except Euca2kvmError:
        if strict:
            raise
    return None


def result_json(r: BootResult) -> dict[str, Any]:
    return {"image": str(r.image), "format": r.fmt, "accel": r.accel, "ok": r.ok, "stage": r.stage.name.lower(),
            "reason": r.reason, "failure": r.failure, "elapsed": round(r.elapsed, 2),
            "milestones": {s.name.lower(): round(t, 2) for s, t in r.milestones.items()},
            "screenshot": str(r.screenshot) if r.screenshot else None, "serial": r.serial, "vga_text": r.vga_text}


def do_boot_test(args: argparse.Namespace) -> int:
    if args.domain or args.image.endswith(".xml"):
        return do_ssh_proof(args)
    if args.ssh_key or args.expect_host_key or args.command:
        raise UsageError("--ssh-key, --command and --expect-host-key need a domain XML (DOMAIN.xml or --domain)")
    if args.timeout is None:
        args.timeout = DEFAULT_TIMEOUT
    image = Path(args.image).resolve()
    if not image.exists():
        raise UsageError(f"{image} does not exist")
    fmt = image_format(image, args.format)
    if args.workdir:
        work = Path(args.workdir)
        work.mkdir(parents=True, exist_ok=True)
        result = run_boot_test(image, fmt, args.timeout, args.expect, args.memory, work)
    else:
        artifacts = output_dir(args.artifacts or ".")  # checked before QEMU runs: a file there is exit 2
        with private_tmp(BOOT_PREFIX) as tmp:  # a killed run's is removed by the next one
            result = run_boot_test(image, fmt, args.timeout, args.expect, args.memory, tmp)
            result.screenshot = keep_beside(image, result, strict=True, where=artifacts)
    if args.json:
        print_json(result_json(result))
    else:
        console.print(("[green]BOOTED[/] " if result.ok else "[red]NOT BOOTED[/] ") + esc(result.summary()))
        tail = "\n".join(result.serial.strip().splitlines()[-15:])
        if tail:
            console.print("[bold]serial console (last lines):[/]\n" + esc(tail))
        if result.vga_text.strip():
            console.print("[bold]screen:[/]\n" + esc(result.vga_text.rstrip()))
        if result.screenshot:
            console.print(f"screenshot: {esc(str(result.screenshot))}")
    if not result.ok:
        raise VerifyError(f"{image.name} did not reach {'the expected text' if args.expect else 'a login prompt'}: "
                          f"{result.stage.name.lower()} stage ({result.reason})" + (
                              f"; {json.dumps(result.failure)}" if result.failure else ""))
    return 0


def do_ssh_proof(args: argparse.Namespace) -> int:
    """``boot-test DOMAIN.xml --ssh-key KEY``: boot the domain and prove an SSH login (exit 6 if not)."""
    from ..kvm import sshproof
    from ..kvm.domainxml import parse_domain

    if not args.ssh_key:
        raise UsageError("boot-test with a domain XML needs --ssh-key KEY (the instance's private key)")
    spec = parse_domain(Path(args.image))
    expected = sshproof.read_expected_host_keys(Path(args.expect_host_key)) if args.expect_host_key else None
    work = Path(args.workdir) if args.workdir else None
    r = sshproof.ssh_proof(spec, Path(args.ssh_key), user=args.ssh_user,
                           timeout=args.timeout if args.timeout is not None else SSH_TIMEOUT,
                           command=args.command, expect_host_keys=expected, workdir=work)
    if args.json:
        print_json(r.as_json())
    else:
        times = ", ".join(f"{k} {v:.1f}s" for k, v in sorted(r.milestones.items(), key=lambda kv: kv[1]))
        console.print(("[green]SSH OK[/] " if r.ok else "[red]NO SSH[/] ")
                      + esc(f"{r.user}@{spec.name} ({r.accel}): {r.reason} after {r.elapsed:.1f}s"))
        console.print(f"stages: {esc(times or 'none seen')}"
                      + (f"; kernel to SSH {r.kernel_to_ssh:.1f}s" if r.kernel_to_ssh is not None else ""))
        if r.host_key:
            match = {True: " (expected)", False: " (NOT the expected key)", None: ""}[r.host_key_expected]
            console.print(f"host key: {esc(r.host_key['type'])} {esc(r.host_key['fingerprint'])}{match}")
        if r.facts:
            f = r.facts
            console.print(f"hostname: {esc(f.hostname or '?')}")
            for i in f.interfaces:
                console.print(f"interface: {esc(' '.join(i.values()))}")
            console.print(f"cloud-init: {esc(f.cloud_init_status or '?')}"
                          + (f" ({esc(f.cloud_init_detail)})" if f.cloud_init_detail else ""))
            console.print(f"instance id: {esc(f.instance_id or '?')}; datasource: {esc(f.datasource or '?')}")
        if r.command is not None and r.command_status is not None:
            console.print(f"command exit status {r.command_status}:\n{esc(r.command_output.rstrip())}")
        if not r.ok and r.serial.strip():
            console.print("[bold]serial console (last lines):[/]\n" + esc(r.console_tail()))
    if not r.ok:
        why = r.reason + (f"; last SSH error: {r.last_ssh_error}" if r.last_ssh_error and not r.milestones.get("ssh")
                          else "")
        raise VerifyError(f"{spec.name}: no usable SSH login: {why}")
    return 0
