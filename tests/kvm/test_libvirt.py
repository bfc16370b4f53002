# SPDX-License-Identifier: Apache-2.0
"""Domain XML: golden files, libvirt RelaxNG validation, libvirt's own parser (test:/// driver), sanitising.

Set EUCA2KVM_REGENERATE=1 to rewrite the golden files under tests/kvm/data/ from the current output.
"""

from __future__ import annotations

import difflib
import os
import shlex
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from _env import missing
from euca2kvm.errors import IOFailure, UsageError
from euca2kvm.kvm.libvirt import (
    Disk,
    Domain,
    domain_xml,
    sanitize_name,
    virt_install_command,
    write_domain,
    write_domain_files,
)

DATA = Path(__file__).resolve().parent / "data"
REGENERATE = os.environ.get("EUCA2KVM_REGENERATE", "") == "1"
DOMAIN_RNG = Path("/usr/share/libvirt/schemas/domain.rng")
# Validators and virsh with the built-in test driver answer in well under a second.
TOOL_TIMEOUT = 60

CASES: dict[str, Domain] = {
    "minimal": Domain("vol-1A2B3C4D", 512, 1, [Disk("/var/lib/euca2kvm/vol-1A2B3C4D.raw")]),
    "qcow2-direct-kernel": Domain(
        "i-0123abcd", 2048, 2,
        [Disk("/srv/images/i-0123abcd.qcow2", "qcow2", "vda"), Disk("/srv/images/data.raw", "raw", "vdb")],
        kernel="/srv/boot/vmlinuz-6.1", initrd="/srv/boot/initrd.img-6.1",
        cmdline="root=/dev/vda1 console=ttyS0 ro quiet",
    ),
    # What export-instance writes for an EBS instance: the hardware tools/libvirt.xsl gives it on the NC.
    "eucalyptus": Domain(
        "i-1a2b3c4d", 256, 2,
        [Disk("/srv/images/i-1a2b3c4d-sda.raw", "raw", "vda", "virtio", "vol-4708bf47-dev-sda", "none"),
         Disk("/srv/images/i-1a2b3c4d-vdf.raw", "raw", "vdf", "virtio", "vol-0000da7a-dev-vdf", "none"),
         Disk("/srv/images/i-1a2b3c4d.seed.iso", "raw", "hdc", "ide", cdrom=True)],
        mac="d0:0d:1a:2b:3c:4d", nic_model="e1000", nic_pci_slot=2, boot_dev=True, cpu_topology=True,
        rng=True, clock="localtime", description="Eucalyptus instance i-1a2b3c4d",
    ),
    "eucalyptus-scsi-bridge": Domain(
        "i-5e6f7a8b", 512, 1,
        [Disk("/srv/images/i-5e6f7a8b-sda.qcow2", "qcow2", "sda", "scsi", "vol-77778888-dev-sda", "none"),
         Disk("/srv/images/i-5e6f7a8b.seed.iso", "raw", "hdc", "ide", cdrom=True)],
        network=None, bridge="br0", mac="d0:0d:5e:6f:7a:8b", nic_model="virtio", nic_pci_slot=2, boot_dev=True,
        cpu_topology=True, rng=True, clock="localtime",
    ),
    "hostile": Domain(
        "../etc/passwd <&> 'x'", 256, 1,
        [Disk("/srv/a&b/<img> \"q\" ',x.raw", "raw", "sda"), Disk("/srv/ide disk.qcow2", "qcow2", "hdb")],
        network=None,
    ),
}


def golden(name: str, text: str) -> None:
    path = DATA / f"domain-{name}.xml"
    if REGENERATE:
        path.write_text(text)
        return
    if not path.exists():
        pytest.fail(f"{path} missing: run with EUCA2KVM_REGENERATE=1 to create it")
    expected = path.read_text()
    if text != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True), str(path), "actual"))
        pytest.fail(f"output differs from {path}:\n{diff}")


def validate(path: Path) -> None:
    """Validate against libvirt's RelaxNG schema with a real validator."""
    if shutil.which("virt-xml-validate"):
        argv = ["virt-xml-validate", str(path), "domain"]
    elif shutil.which("xmllint") and DOMAIN_RNG.exists():
        argv = ["xmllint", "--noout", "--relaxng", str(DOMAIN_RNG), str(path)]
    else:
        missing("no libvirt schema validator (Debian libvirt-clients, or libxml2-utils + libvirt0)")
        return
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_and_schema(name: str, tmp_path: Path) -> None:
    dom = CASES[name]
    text = domain_xml(dom)
    golden(name, text)
    out = write_domain(dom, tmp_path / f"{name}.xml")
    assert out.read_text() == text
    validate(out)
    if shutil.which("xmllint") and DOMAIN_RNG.exists():  # the second validator too, when present
        proc = subprocess.run(["xmllint", "--noout", "--relaxng", str(DOMAIN_RNG), str(out)],
                              capture_output=True, text=True, timeout=TOOL_TIMEOUT)
        assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("name", sorted(CASES))
def test_libvirt_parses_it(name: str, tmp_path: Path) -> None:
    """libvirt's own parser (the in-process test:/// driver) accepts the XML and keeps names and paths."""
    if shutil.which("virsh") is None:
        missing("virsh not installed (Debian libvirt-clients)")
    dom = CASES[name]
    path = write_domain(dom, tmp_path / "d.xml")
    proc = subprocess.run(["virsh", "-c", "test:///default", f"define {path}; dumpxml {dom.name}"],
                          capture_output=True, text=True, timeout=TOOL_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    back = ET.fromstring(proc.stdout[proc.stdout.index("<domain") :])
    assert back.findtext("name") == dom.name
    assert [s.get("file") for s in back.iter("source") if s.get("file")] == [str(d.path) for d in dom.disks]
    assert back.find("./os/type").get("machine") == "pc"  # type: ignore[union-attr]
    if dom.boot_dev:
        assert back.find("./os/boot").get("dev") == "hd"  # type: ignore[union-attr]
    else:
        assert back.find("./devices/disk/boot").get("order") == "1"  # type: ignore[union-attr]
    if dom.mac is not None:
        assert back.find("./devices/interface/mac").get("address") == dom.mac  # type: ignore[union-attr]
        assert back.find("./devices/interface/model").get("type") == dom.nic_model  # type: ignore[union-attr]
    assert back.find("./sysinfo") is None and back.find("./os/smbios") is None  # never the ec2 identity
    if dom.kernel is not None:
        assert back.findtext("./os/kernel") == str(dom.kernel)
        assert back.findtext("./os/cmdline") == dom.cmdline


def test_escaping_round_trips() -> None:
    dom = CASES["hostile"]
    text = domain_xml(dom)
    assert "<img>" not in text and "a&b" not in text  # escaped, not raw
    root = ET.fromstring(text)
    assert root.find("./devices/disk/source").get("file") == "/srv/a&b/<img> \"q\" ',x.raw"  # type: ignore[union-attr]
    assert root.findtext("name") == dom.name == "etc-passwd-x"
    assert [t.get("bus") for t in root.iter("target") if t.get("dev")] == ["sata", "ide"]
    assert root.find("./devices/interface") is None


def test_element_order_fixed() -> None:
    root = ET.fromstring(domain_xml(CASES["qcow2-direct-kernel"]))
    assert [c.tag for c in root] == ["name", "memory", "currentMemory", "vcpu", "os", "features", "clock",
                                     "on_poweroff", "on_reboot", "on_crash", "devices"]
    assert [c.tag for c in root.find("devices")] == [  # type: ignore[union-attr]
        "disk", "disk", "interface", "serial", "console", "graphics", "video"]
    graphics = root.find("./devices/graphics")
    assert graphics is not None and graphics.get("type") == "vnc" and graphics.get("listen") == "127.0.0.1"


@pytest.mark.parametrize(("raw", "clean"), [
    ("vol-ABC123", "vol-ABC123"),
    ("i-1234.5678_x+y", "i-1234.5678_x+y"),
    ("a/b\\c d", "a-b-c-d"),
    ("12345", "vm-12345"),
    ("-rf", "rf"),
    ("..hidden..", "hidden"),
    ("ünïcödé-vm", "n-c-d--vm"),
    ("x" * 100, "x" * 64),
])
def test_sanitize_name(raw: str, clean: str) -> None:
    assert sanitize_name(raw) == clean


@pytest.mark.parametrize("bad", ["", "///", "\n"])
def test_sanitize_name_refuses_empty(bad: str) -> None:
    with pytest.raises(UsageError):
        sanitize_name(bad)


def test_relative_paths_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    disk = Disk("images/x.qcow2", "qcow2")
    assert disk.path == str(tmp_path / "images/x.qcow2")


@pytest.mark.parametrize("kwargs", [
    {"memory_mib": 0}, {"vcpus": 0}, {"disks": []}, {"initrd": "/x"}, {"cmdline": "a\nb"},
    {"disks": [Disk("/a"), Disk("/b")]}, {"network": "bad name"}, {"domain_type": "xen"},
])
def test_domain_refuses_bad_input(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"name": "t", "memory_mib": 256, "vcpus": 1, "disks": [Disk("/a")]}
    args.update(kwargs)
    with pytest.raises(UsageError):
        Domain(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize("kwargs", [{"format": "bogus"}, {"target_dev": "xvda"}, {"path": "/a\x00b"},
                                    {"path": "/a\nb"}])
def test_disk_refuses_bad_input(kwargs: dict[str, str]) -> None:
    args = {"path": "/a", **kwargs}
    with pytest.raises(UsageError):
        Disk(**args)  # type: ignore[arg-type]


def test_virt_install_command() -> None:
    cmd = virt_install_command(CASES["qcow2-direct-kernel"])
    assert cmd[:3] == ["virt-install", "--import", "--noautoconsole"]
    pairs = dict(zip(cmd[3::2], cmd[4::2], strict=False))
    assert pairs["--name"] == "i-0123abcd" and pairs["--memory"] == "2048" and pairs["--vcpus"] == "2"
    assert pairs["--machine"] == "pc" and pairs["--arch"] == "x86_64"
    disks = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--disk"]
    assert disks == [
        "path=/srv/images/i-0123abcd.qcow2,format=qcow2,bus=virtio,target.dev=vda,boot.order=1",
        "path=/srv/images/data.raw,format=raw,bus=virtio,target.dev=vdb",
    ]
    assert pairs["--boot"] == ("kernel=/srv/boot/vmlinuz-6.1,initrd=/srv/boot/initrd.img-6.1,"
                               "kernel_args=root=/dev/vda1 console=ttyS0 ro quiet")
    assert pairs["--network"] == "network=default,model=virtio"
    assert pairs["--graphics"] == "vnc,listen=127.0.0.1"
    hostile = virt_install_command(CASES["hostile"])
    assert "path=/srv/a&b/<img> \"q\" ',,x.raw,format=raw,bus=sata,target.dev=sda,boot.order=1" in hostile
    assert hostile[hostile.index("--network") + 1] == "none"


def test_eucalyptus_hardware() -> None:
    """The parts of the NC's domain that matter to the guest, as libvirt.xsl renders them."""
    root = ET.fromstring(domain_xml(CASES["eucalyptus"]))
    assert root.find("./os/boot").get("dev") == "hd"  # type: ignore[union-attr]
    assert root.findtext("vcpu") == "2"
    assert root.find("./cpu/topology").attrib == {"sockets": "1", "cores": "2", "threads": "1"}  # type: ignore[union-attr]
    assert root.find("clock").get("offset") == "localtime"  # type: ignore[union-attr]
    disks = root.findall("./devices/disk")
    assert [(d.get("device"), d.find("target").get("dev"), d.find("target").get("bus")) for d in disks] == [  # type: ignore[union-attr]
        ("disk", "vda", "virtio"), ("disk", "vdf", "virtio"), ("cdrom", "hdc", "ide")]
    assert [d.findtext("serial") for d in disks] == ["vol-4708bf47-dev-sda", "vol-0000da7a-dev-vdf", None]
    assert [d.find("driver").get("cache") for d in disks] == ["none", "none", None]  # type: ignore[union-attr]
    assert disks[2].find("readonly") is not None and disks[0].find("readonly") is None
    assert all(d.find("boot") is None for d in disks)
    assert root.find("./devices/interface/mac").get("address") == "d0:0d:1a:2b:3c:4d"  # type: ignore[union-attr]
    assert root.find("./devices/interface/address").get("slot") == "0x02"  # type: ignore[union-attr]
    rng = root.find("./devices/rng")
    assert rng is not None and rng.get("model") == "virtio" and rng.findtext("backend") == "/dev/urandom"
    cmd = virt_install_command(CASES["eucalyptus"])
    assert "d0:0d:1a:2b:3c:4d" in cmd[cmd.index("--network") + 1]
    assert "device=cdrom,readonly=on" in [c for c in cmd if "seed.iso" in c][0]
    bridge = ET.fromstring(domain_xml(CASES["eucalyptus-scsi-bridge"]))
    assert bridge.find("./devices/interface").get("type") == "bridge"  # type: ignore[union-attr]
    assert bridge.find("./devices/interface/source").get("bridge") == "br0"  # type: ignore[union-attr]


@pytest.mark.parametrize("kwargs", [
    {"mac": "D0:0D:1A:2B:3C:4D"}, {"mac": "01:00:5e:00:00:01"}, {"mac": "d0:0d"}, {"nic_model": "ne2k"},
    {"bridge": "br0"}, {"network": None, "bridge": "br 0"}, {"clock": "variable"}, {"nic_pci_slot": 0},
    {"nic_pci_slot": 32},
    {"disks": [Disk("/a.iso", "raw", "hdc", "ide", cdrom=True)]},
])
def test_eucalyptus_options_refuse_bad_input(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"name": "t", "memory_mib": 256, "vcpus": 1, "disks": [Disk("/a")]}
    args.update(kwargs)
    with pytest.raises(UsageError):
        Domain(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize("kwargs", [{"target_dev": "vda", "bus_name": "scsi"}, {"serial": "a b"},
                                    {"cache": "fast"}, {"target_dev": "vdb", "cdrom": True}])
def test_disk_options_refuse_bad_input(kwargs: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        Disk("/a", **kwargs)  # type: ignore[arg-type]


def test_domain_files_replace_garbage_and_never_follow_a_symlink(tmp_path: Path) -> None:
    """The one writer of a guest's files (libvirt and export-instance): seed, XML and script replaced
    atomically, the script executable; a symlink at one name refuses all of them, its victim untouched."""
    dom = CASES["minimal"]
    victim = tmp_path / "victim"
    victim.write_bytes(b"do not touch")
    xml = tmp_path / "g.xml"
    garbage = b"\xff" * 9000
    xml.write_bytes(garbage)  # replaced, never appended to
    script = tmp_path / "g.virt-install.sh"
    script.symlink_to(victim)
    with pytest.raises(IOFailure):
        write_domain_files(dom, xml, seed=("g.seed.iso", b"seed bytes"))
    assert victim.read_bytes() == b"do not touch" and xml.read_bytes() == garbage
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.virt-install.sh", "g.xml", "victim"]
    script.unlink()
    assert write_domain_files(dom, xml, seed=("g.seed.iso", b"seed bytes")) == (xml, script)
    assert xml.read_text() == domain_xml(dom) and (tmp_path / "g.seed.iso").read_bytes() == b"seed bytes"
    assert os.access(script, os.X_OK) and script.read_text().splitlines()[-1] == "exec " + shlex.join(
        virt_install_command(dom))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.seed.iso", "g.virt-install.sh", "g.xml", "victim"]
