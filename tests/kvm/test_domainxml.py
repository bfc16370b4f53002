# SPDX-License-Identifier: Apache-2.0
"""Domain XML reader and its QEMU mapping: what ``euca2kvm libvirt`` writes, a hand-made faithful domain
(cdrom seed, MAC, NIC model, direct kernel boot), hostile files (DTDs, entity bombs, oversize, symlinks,
bad values), and the overlay rule: no image the domain names is ever written."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from _env import need_tools
from euca2kvm.errors import FormatError, UsageError
from euca2kvm.kvm.domainqemu import free_port, qemu_args
from euca2kvm.kvm.domainxml import MAX_XML_BYTES, parse_domain

MiB = 1 << 20
TOOL_TIMEOUT = 120


def run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=TOOL_TIMEOUT)


def euca2kvm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "euca2kvm", *args], capture_output=True, text=True,
                          timeout=TOOL_TIMEOUT, check=False)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def images(tmp: Path) -> tuple[Path, Path, Path]:
    need_tools("qemu-img")
    raw = tmp / "root disk.raw"
    with open(raw, "wb") as f:
        f.write(os.urandom(MiB))
        f.truncate(8 * MiB)
    q = tmp / "data.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", str(q), "16M")
    seed = tmp / "seed.iso"
    seed.write_bytes(os.urandom(64 << 10))  # any raw file serves as a read-only cdrom here
    return raw, q, seed


def faithful(tmp: Path, raw: Path, q: Path, seed: Path, extra: str = "") -> Path:
    x = tmp / "i-3f2a91c0.xml"
    x.write_text(f"""<domain type='kvm'>
  <name>i-3f2a91c0</name>
  <memory unit='KiB'>1048576</memory>
  <vcpu placement='static'>2</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw' cache='none'/>
      <source file='{raw}'/><target dev='vda' bus='virtio'/><serial>vol-1a2b3c4d-dev-sda</serial>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/><source file='data.qcow2'/><target dev='sdb' bus='sata'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/><source file='{seed}'/><target dev='hdc' bus='ide'/><readonly/>
    </disk>
    <interface type='network'><mac address='D0:0D:0A:00:00:05'/><source network='default'/>
      <model type='e1000'/></interface>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
    {extra}
  </devices>
</domain>
""")
    return x


def arg_values(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == flag]


def test_faithful_domain_maps_to_qemu(tmp_path: Path) -> None:
    raw, q, seed = images(tmp_path)
    before = [sha(p) for p in (raw, q, seed)]
    spec = parse_domain(faithful(tmp_path, raw, q, seed))
    assert (spec.memory_mib, spec.vcpus, spec.rng) == (1024, 2, True)
    assert [(d.device, d.bus, d.format, d.readonly) for d in spec.disks] == [
        ("disk", "virtio", "raw", False), ("disk", "sata", "qcow2", False), ("cdrom", "ide", "raw", True)]
    assert spec.disks[1].path == q  # relative to the XML's directory
    assert spec.nics[0].mac == "d0:0d:0a:00:00:05" and spec.nics[0].model == "e1000"
    work = tmp_path / "work"
    work.mkdir()
    port = free_port()  # a fixed port may be some connection's ephemeral port at this moment (it was once)
    args = qemu_args(spec, "tcg", work, work / "serial.log", port)
    blockdevs = [json.loads(b) for b in arg_values(args, "-blockdev")]
    # writable disks: a fresh qcow2 overlay in the work dir over the read-only image; the seed as is
    for bd, image in zip(blockdevs[:2], (raw, q), strict=True):
        assert Path(bd["file"]["filename"]).parent == work
        assert bd["backing"]["read-only"] and bd["backing"]["file"]["filename"] == str(image)
    assert blockdevs[1]["backing"]["backing"] is None  # a backing file named inside an image is never opened
    assert blockdevs[2]["read-only"] and blockdevs[2]["file"]["filename"] == str(seed)
    devices = arg_values(args, "-device")
    assert any(d.startswith("virtio-blk-pci,drive=d0,serial=vol-1a2b3c4d-dev-sda") for d in devices)
    assert "ahci,id=ahci0" in devices and any(d.startswith("ide-hd,drive=d1,bus=ahci0.1") for d in devices)
    assert any(d.startswith("ide-cd,drive=d2,bus=ide.1,unit=0") for d in devices)
    assert "e1000,netdev=n0,mac=d0:0d:0a:00:00:05" in devices and "virtio-rng-pci" in devices
    assert arg_values(args, "-netdev") == [f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22"]
    assert arg_values(args, "-smp") == ["2"] and arg_values(args, "-m") == ["1024"]
    # QEMU itself accepts the command line and runs the guest (no image is written meanwhile)
    need_tools("qemu-system-x86_64")
    p = subprocess.run(["timeout", "3", "qemu-system-x86_64", *args], capture_output=True, text=True,
                       timeout=TOOL_TIMEOUT, check=False)
    assert p.returncode == 124, p.stderr  # still running when timeout stopped it: the arguments are valid
    assert [sha(p) for p in (raw, q, seed)] == before


def test_generic_domain_from_euca2kvm_libvirt(tmp_path: Path) -> None:
    raw, q, _ = images(tmp_path)
    p = euca2kvm("libvirt", str(raw), str(q), "--memory", "768", "--vcpus", "1", "-o", str(tmp_path / "g.xml"))
    assert p.returncode == 0, p.stderr
    spec = parse_domain(tmp_path / "g.xml")
    assert [(d.target, d.bus, d.format) for d in spec.disks] == [("vda", "virtio", "raw"), ("vdb", "virtio", "qcow2")]
    assert spec.memory_mib == 768 and not spec.seeds
    assert spec.nics and spec.nics[0].mac is None  # a generic domain: QEMU's default MAC, not the cloud's


def test_direct_kernel_boot(tmp_path: Path) -> None:
    raw, q, seed = images(tmp_path)
    (tmp_path / "vmlinuz").write_bytes(b"k")
    (tmp_path / "initrd").write_bytes(b"i")
    x = faithful(tmp_path, raw, q, seed)
    x.write_text(x.read_text().replace("<boot dev='hd'/>", "<kernel>vmlinuz</kernel><initrd>initrd</initrd>"
                                       "<cmdline>root=/dev/vda1 console=ttyS0</cmdline>"))
    args = qemu_args(parse_domain(x), "tcg", tmp_path, tmp_path / "s.log", 40023)
    assert arg_values(args, "-kernel") == [str(tmp_path / "vmlinuz")]
    assert arg_values(args, "-append") == ["root=/dev/vda1 console=ttyS0"]


HOSTILE = {
    "billion-laughs": ('<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
                       "<domain><name>&b;</name></domain>"),
    "external-entity": '<!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/shadow">]><domain><name>&x;</name></domain>',
    "undeclared-entity": "<domain><name>&x;</name></domain>",
    "not-xml": "<domain><name>x</name>",
    "not-a-domain": "<network><name>x</name></network>",
    "no-disk": "<domain><name>x</name><memory>1048576</memory><vcpu>1</vcpu><devices/></domain>",
    "vcpus": "<domain><name>x</name><memory>1048576</memory><vcpu>100000</vcpu><devices/></domain>",
    "memory-unit": "<domain><name>x</name><memory unit='parsecs'>1</memory><vcpu>1</vcpu><devices/></domain>",
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_xml_is_a_format_error(tmp_path: Path, case: str) -> None:
    x = tmp_path / "d.xml"
    x.write_text(HOSTILE[case])
    with pytest.raises(FormatError) as e:
        parse_domain(x)
    assert e.value.path == str(x)


@pytest.mark.parametrize("edit", [
    ("D0:0D:0A:00:00:05", "01:00:5e:00:00:01"),  # multicast MAC
    ("D0:0D:0A:00:00:05", "d0:0d:0a:00:00"),  # short MAC
    ("bus='sata'", "bus='usb'"),
    ("type='qcow2'", "type='vmdk'"),  # a format that can name further host files
    ("<vcpu placement='static'>2</vcpu>", "<vcpu>two</vcpu>"),
    ("<name>i-3f2a91c0</name>", "<name>a\x1b[2Jb</name>"),  # control character (not even XML)
    ("vol-1a2b3c4d-dev-sda", "x,drive=d1"),  # a serial that would inject QEMU device options
])
def test_bad_values_are_refused(tmp_path: Path, edit: tuple[str, str]) -> None:
    raw, q, seed = images(tmp_path)
    x = faithful(tmp_path, raw, q, seed)
    x.write_text(x.read_text().replace(*edit))
    with pytest.raises(FormatError):
        parse_domain(x)


def test_oversize_and_symlinked_files(tmp_path: Path) -> None:
    big = tmp_path / "big.xml"
    big.write_text("<domain>" + " " * MAX_XML_BYTES + "</domain>")
    with pytest.raises(FormatError):
        parse_domain(big)
    link = tmp_path / "link.xml"
    link.symlink_to(big)
    with pytest.raises(Exception) as e:
        parse_domain(link)
    assert isinstance(e.value, (UsageError, FormatError)) or e.value.__class__.__name__ == "IOFailure"


def test_disk_files_are_checked(tmp_path: Path) -> None:
    raw, q, seed = images(tmp_path)
    x = faithful(tmp_path, raw, q, seed)
    # the XML says raw but the file is qcow2: QEMU must not be told the wrong format
    x.write_text(x.read_text().replace(f"<source file='{raw}'/>", f"<source file='{q}'/>"))
    with pytest.raises(FormatError):
        qemu_args(parse_domain(x), "tcg", tmp_path, tmp_path / "s.log", 40024)
    # a qcow2 with a backing file (which could name any host file) is refused
    run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(raw), str(tmp_path / "data.qcow2"))
    with pytest.raises(FormatError):
        qemu_args(parse_domain(faithful(tmp_path, raw, q, seed)), "tcg", tmp_path, tmp_path / "s.log", 40024)
    # a symlinked image is not followed
    os.replace(q, tmp_path / "real.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", str(tmp_path / "real.qcow2"), "16M")
    q.symlink_to(tmp_path / "real.qcow2")
    with pytest.raises(UsageError):
        qemu_args(parse_domain(faithful(tmp_path, raw, q, seed)), "tcg", tmp_path, tmp_path / "s.log", 40024)


def test_cli_hostile_domain_exit_codes(tmp_path: Path) -> None:
    raw, q, seed = images(tmp_path)
    key = tmp_path / "key"
    key.write_text("not a key")
    bomb = tmp_path / "bomb.xml"
    bomb.write_text(HOSTILE["billion-laughs"])
    p = euca2kvm("boot-test", str(bomb), "--ssh-key", str(key))
    assert p.returncode == 3 and "Traceback" not in p.stderr
    p = euca2kvm("boot-test", str(faithful(tmp_path, raw, q, seed)))  # no --ssh-key
    assert p.returncode == 2 and "Traceback" not in p.stderr
    p = euca2kvm("boot-test", str(faithful(tmp_path, raw, q, seed)), "--ssh-key", str(key))  # not a key
    assert p.returncode == 2 and "Traceback" not in p.stderr
    p = euca2kvm("boot-test", str(raw), "--ssh-key", str(key))  # an image: SSH options need a domain
    assert p.returncode == 2 and "Traceback" not in p.stderr
