# SPDX-License-Identifier: Apache-2.0
"""``euca2kvm libvirt IMAGE...`` and ``euca2kvm boot-test IMAGE``: make an export runnable, and prove it boots."""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..errors import UsageError, VerifyError
from ..export import qemu_img
from ..kvm.boottest import DEFAULT_MEMORY_MIB, DEFAULT_TIMEOUT, BootResult, boot_test
from ..kvm.libvirt import Disk, Domain, virt_install_command, write_domain
from .common import DEFAULT_DOMAIN_MEMORY_MIB, DEFAULT_VCPUS, console, esc, print_json

DISK_TARGETS = [f"vd{chr(ord('a') + i)}" for i in range(26)]


def build_parser(sub: Any) -> None:
    p = sub.add_parser("libvirt", help="write a libvirt domain (and the virt-install line) for disk images",
                       description="Write NAME.xml next to the first image: virtio disks in the order given, "
                                   "serial console, VNC graphics on 127.0.0.1, the default network; and "
                                   "NAME.virt-install.sh with the equivalent virt-install --import command.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="disk images, boot disk first")
    p.add_argument("--name", help="domain name (default: the first image's name)")
    p.add_argument("--memory", type=int, default=DEFAULT_DOMAIN_MEMORY_MIB, metavar="MIB")
    p.add_argument("--vcpus", type=int, default=DEFAULT_VCPUS)
    p.add_argument("-o", "--output", metavar="XML", help="where to write the domain XML")
    p.set_defaults(func=do_libvirt)

    b = sub.add_parser("boot-test", help="boot an image in QEMU (read-only, no network) and report how far it got",
                       description="Boot IMAGE in qemu-system-x86_64 with the disk read-only and no network, "
                                   "capture the serial console and the VGA text screen, and report the stage "
                                   "reached (firmware, boot loader, kernel, login prompt or --expect TEXT) with "
                                   "a screenshot. KVM is used only when a probe shows it runs guests; "
                                   "EUCA2KVM_ACCEL=tcg|kvm overrides. Exits 6 when the goal is not reached.")
    b.add_argument("image", metavar="IMAGE")
    b.add_argument("--format", help="image format (default: detected by qemu-img)")
    b.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="S")
    b.add_argument("--expect", metavar="TEXT", help="text that proves the boot (default: a login prompt)")
    b.add_argument("--memory", type=int, default=DEFAULT_MEMORY_MIB, metavar="MIB")
    b.add_argument("--workdir", metavar="DIR", help="keep serial log, VGA text and screenshot here")
    b.add_argument("--json", action="store_true")
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


def write_with_install_script(domain: Domain, xml_path: Path) -> tuple[Path, Path]:
    write_domain(domain, xml_path)
    script = xml_path.with_name(xml_path.name.removesuffix(".xml") + ".virt-install.sh")
    script.write_text("#!/bin/sh\n# Equivalent of the domain XML beside this file\nexec "
                      + shlex.join(virt_install_command(domain)) + "\n")
    script.chmod(0o755)
    return xml_path, script


def do_libvirt(args: argparse.Namespace) -> int:
    images = [Path(i).resolve() for i in args.images]
    for i in images:
        if not i.exists():
            raise UsageError(f"{i} does not exist")
    name = args.name or images[0].name.split(".")[0]
    domain = domain_for(images, name, args.memory, args.vcpus)
    xml_path = Path(args.output) if args.output else images[0].with_name(f"{domain.name}.xml")
    xml_path, script = write_with_install_script(domain, xml_path)
    console.print(f"wrote {esc(str(xml_path))}")
    console.print(f"virt-install line: {esc(str(script))}")
    console.print(f"  define with: virsh define {shlex.quote(str(xml_path))}")
    return 0


def run_boot_test(image: Path, fmt: str, timeout: float, expect: str | None, memory: int,
                  workdir: Path) -> BootResult:
    return boot_test(image, fmt, timeout=timeout, expect=expect, workdir=workdir, memory_mib=memory)


def keep_beside(image: Path, r: BootResult) -> Path | None:
    """Keep the screenshot and serial log next to the image (``IMAGE.boot.png``/``.boot.log``) when
    that directory is writable; the boot's work directory is temporary."""
    try:
        image.with_name(image.name + ".boot.log").write_text(r.serial)
        if r.screenshot is not None and r.screenshot.exists():
            shot = image.with_name(image.name + ".boot.png")
            shutil.copyfile(r.screenshot, shot)
            return shot
    except OSError:
        pass
    return None


def result_json(r: BootResult) -> dict[str, Any]:
    return {"image": str(r.image), "format": r.fmt, "accel": r.accel, "ok": r.ok, "stage": r.stage.name.lower(),
            "reason": r.reason, "failure": r.failure, "elapsed": round(r.elapsed, 2),
            "milestones": {s.name.lower(): round(t, 2) for s, t in r.milestones.items()},
            "screenshot": str(r.screenshot) if r.screenshot else None, "serial": r.serial, "vga_text": r.vga_text}


def do_boot_test(args: argparse.Namespace) -> int:
    image = Path(args.image).resolve()
    if not image.exists():
        raise UsageError(f"{image} does not exist")
    fmt = image_format(image, args.format)
    if args.workdir:
        work = Path(args.workdir)
        work.mkdir(parents=True, exist_ok=True)
        result = run_boot_test(image, fmt, args.timeout, args.expect, args.memory, work)
    else:
        with tempfile.TemporaryDirectory(prefix="euca2kvm-boot-") as tmp:
            result = run_boot_test(image, fmt, args.timeout, args.expect, args.memory, Path(tmp))
            result.screenshot = keep_beside(image, result)
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
