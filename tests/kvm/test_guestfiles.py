# SPDX-License-Identifier: Apache-2.0
"""Guest files read without mounting: real ext4 (``mke2fs -d``) and XFS (``mkfs.xfs -p`` protofile)
filesystems in an MBR-partitioned raw image, in a qcow2, and on LVs of the guest's own LVM inside a
Eucalyptus container made with the real lvm2. Properties: what is read equals what was written,
the image is unchanged, symlinks are never followed to the host, oversize files are not loaded,
hostile XFS metadata raises only the project's errors; ``inspect --json`` carries the warnings."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tests.kvm.guestimg as gi

import lvmfix
from _env import need_root, need_tools
from euca2kvm.cli.common import discover_sources
from euca2kvm.errors import Euca2kvmError, ToolError
from euca2kvm.kvm import extfiles, guestfiles
from euca2kvm.kvm.guest import inspect_disk
from euca2kvm.kvm.imagefile import RawReader, Window, open_image
from euca2kvm.kvm.xfsfiles import XfsView

MiB = 1 << 20
MAC = "d0:0d:4a:1b:2c:3d"
MARKER = b"HOST-FILE-MUST-NOT-BE-READ"
# mkfs.xfs refuses filesystems smaller than 300 MiB; the image stays sparse.
XFS_SIZE = 300 * MiB
EXT_SIZE = 32 * MiB

GUEST: dict[str, bytes] = {
    "etc/fstab": b"# fstab\n/dev/xvda1 / ext4 defaults 0 1\nUUID=0c3b5d9e /data ext4 defaults 0 2\n",
    "etc/sysconfig/network-scripts/ifcfg-eth0": f'DEVICE=eth0\nBOOTPROTO=dhcp\nHWADDR="{MAC.upper()}"\n'.encode(),
    "etc/udev/rules.d/70-persistent-net.rules":
        f'SUBSYSTEM=="net", ACTION=="add", ATTR{{address}}=="{MAC}", NAME="eth0"\n'.encode(),
    "etc/netplan/50-cloud-init.yaml": b"network:\n  version: 2\n  ethernets:\n    eth0:\n      dhcp4: true\n",
    "etc/network/interfaces": b"auto lo\niface lo inet loopback\nauto eth0\niface eth0 inet dhcp\n",
    "etc/cloud/cloud.cfg": b"datasource_list: [ NoCloud, Ec2 ]\n",
    "usr/bin/cloud-init": b"#!/usr/bin/python3\n",
    "home/alice/.ssh/authorized_keys": b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 alice\n",
    # Binary bytes around a kernel line: content must come back byte for byte.
    "boot/grub/grub.cfg": random.Random(7).randbytes(3000) + b"\nlinux /vmlinuz root=/dev/sda1 ro\n",
}
BIG = "etc/network/interfaces.d/big"  # a wanted name, larger than MAX_FILE: never loaded


def make_tree(base: Path, host: Path) -> Path:
    tree = base / "tree"
    for rel, data in GUEST.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(data)
    (tree / BIG).parent.mkdir(parents=True, exist_ok=True)
    (tree / BIG).write_bytes(b"#" * (guestfiles.MAX_FILE + 1))
    # Symlinks to host files: absolute targets resolve inside the guest (where they do not exist), never on the host.
    os.symlink("/etc/shadow", tree / "etc/sysconfig/network-scripts/ifcfg-evil")
    (tree / "root").mkdir()
    os.symlink(str(host / "ssh"), tree / "root/.ssh")
    os.symlink(str(host / "ssh" / "authorized_keys"), tree / "home/alice/.ssh/authorized_keys2")
    return tree


def protofile(tree: Path) -> str:
    """An xfs_mkfs(8) protofile for ``tree`` (files, directories, symlinks)."""
    lines = ["/dev/null", "0 0", "d--755 0 0"]

    def walk(d: Path) -> None:
        for p in sorted(d.iterdir()):
            if p.is_symlink():
                lines.append(f"{p.name} l--777 0 0 {os.readlink(p)}")
            elif p.is_dir():
                lines.append(f"{p.name} d--755 0 0")
                walk(p)
                lines.append("$")
            else:
                lines.append(f"{p.name} ---644 0 0 {p}")

    walk(tree)
    return "\n".join([*lines, "$", ""])


def make_fs(kind: str, path: Path, tree: Path) -> Path:
    if kind == "ext4":
        return gi.mkfs(path, EXT_SIZE, "mke2fs", "-q", "-F", "-t", "ext4", "-d", str(tree))
    proto = path.with_suffix(".proto")
    proto.write_text(protofile(tree))
    return gi.mkfs(path, XFS_SIZE, "mkfs.xfs", "-q", "-f", "-p", str(proto))


@pytest.fixture(scope="module")
def host_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    host = tmp_path_factory.mktemp("host")
    (host / "ssh").mkdir()
    (host / "ssh" / "authorized_keys").write_bytes(MARKER + b"\n")
    return host


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory, host_files: Path) -> tuple[Path, list[tuple[int, int, str]]]:
    """MBR raw disk: p1 ext4, p2 XFS, both holding the same guest tree."""
    need_tools("mke2fs", "mkfs.xfs", "sfdisk", "debugfs")
    d = tmp_path_factory.mktemp("disk")
    tree = make_tree(d, host_files)
    img = gi.sparse(d / "disk.img", 2 * MiB + EXT_SIZE + XFS_SIZE)
    parts = gi.sfdisk(img, f"label: dos\nstart=2048, size={EXT_SIZE // 512}, type=83\nstart={2048 + EXT_SIZE // 512}, "
                           "type=83\n")
    out = []
    for p, kind in zip(parts, ("ext4", "xfs"), strict=True):
        fs = make_fs(kind, d / f"{kind}.img", tree)
        gi.place(img, p["start"] * 512, fs)
        out.append((p["start"] * 512, p["size"] * 512, kind))
        fs.unlink()
    return img, out


def sha(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def expected(prefix: str = "") -> dict[str, bytes]:
    return {prefix + "/" + rel: data for rel, data in GUEST.items()}


@pytest.mark.parametrize("index", [0, 1], ids=["ext4", "xfs"])
def test_files_read_back_unchanged_image(disk: tuple[Path, list[tuple[int, int, str]]], index: int) -> None:
    img, parts = disk
    before = (sha(img), os.stat(img).st_mtime_ns)
    start, size, kind = parts[index]
    with RawReader(str(img)) as r:
        got = guestfiles.read_filesystem(r, f"partition {index + 1}", start, size, kind)
    assert got.mount == "/" and not got.unread
    assert got.files == expected()
    assert (sha(img), os.stat(img).st_mtime_ns) == before


@pytest.mark.parametrize("index", [0, 1], ids=["ext4", "xfs"])
def test_symlinks_never_followed_oversize_not_loaded(disk: tuple[Path, list[tuple[int, int, str]]], index: int,
                                                     host_files: Path) -> None:
    img, parts = disk
    start, size, kind = parts[index]
    with RawReader(str(img)) as r:
        got = guestfiles.read_filesystem(r, "p", start, size, kind)
    shadow = Path("/etc/shadow").read_bytes() if os.access("/etc/shadow", os.R_OK) else b"\0never"
    for data in got.files.values():
        assert MARKER not in data and (len(shadow) < 16 or shadow not in data)
    assert "/etc/sysconfig/network-scripts/ifcfg-evil" in got.present
    assert "/etc/sysconfig/network-scripts/ifcfg-evil" not in got.files
    assert "/home/alice/.ssh/authorized_keys2" not in got.files
    assert not any(p.startswith("/root/.ssh/") for p in got.files)  # /root/.ssh is a symlink: not entered
    assert "/" + BIG in got.present and "/" + BIG not in got.files


def test_disk_setup_and_qcow2(disk: tuple[Path, list[tuple[int, int, str]]], tmp_path: Path) -> None:
    img, _ = disk
    with RawReader(str(img)) as r:
        setup = guestfiles.guest_setup(r)
    assert [(s["where"], s["mount"]) for s in setup.sources] == [("partition 1", "/"), ("partition 2", "/")]
    kinds = sorted((w.kind, w.file, w.line) for w in setup.warnings("virtio", MAC))
    grub_line = GUEST["boot/grub/grub.cfg"].count(b"\n")  # the kernel line is the last one
    assert kinds == [("device-name", "/boot/grub/grub.cfg", grub_line), ("device-name", "/etc/fstab", 2)]
    assert setup.config.cloud_init and setup.config.keys == {"/home/alice/.ssh/authorized_keys": 1}
    other = {(w.kind, w.file) for w in setup.warnings("virtio", "52:54:00:00:00:01")}
    assert ("mac-pin", "/etc/udev/rules.d/70-persistent-net.rules") in other
    assert guestfiles.guest_warnings(str(img), "virtio", MAC, fmt="raw") == setup.warnings("virtio", MAC)
    assert len(guestfiles.warning_lines(str(img), "virtio", MAC)) == 2
    (missing,) = guestfiles.warning_lines(str(tmp_path / "absent.img"), "virtio", MAC)
    assert "not checked" in missing
    need_tools("qemu-img")
    q = tmp_path / "disk.qcow2"
    gi.run("qemu-img", "convert", "-O", "qcow2", str(img), str(q))
    r2 = open_image(str(q))
    try:
        qs = guestfiles.guest_setup(r2)
    finally:
        r2.close()
    # ext4 through debugfs needs a raw byte range: reported unchecked, not silently fine; XFS is read.
    assert [s["where"] for s in qs.sources] == ["partition 2"]
    assert [w.kind for w in qs.warnings("virtio", MAC) if w.kind == "unchecked"] == ["unchecked"]
    assert {w.file for w in qs.warnings("virtio", MAC) if w.kind == "device-name"} == {"/etc/fstab",
                                                                                     "/boot/grub/grub.cfg"}


class Mutated:
    """A reader over ``base`` with some bytes replaced (hostile metadata without copying 300 MiB)."""

    def __init__(self, base: RawReader, patches: dict[int, int]) -> None:
        self.base, self.patches, self.size = base, patches, base.size

    def pread(self, offset: int, length: int) -> bytes:
        data = bytearray(self.base.pread(offset, length))
        for at, value in self.patches.items():
            if offset <= at < offset + len(data):
                data[at - offset] = value
        return bytes(data)


def test_hostile_xfs_metadata_only_project_errors(disk: tuple[Path, list[tuple[int, int, str]]]) -> None:
    img, parts = disk
    start, size, _ = parts[1]
    rng = random.Random(11)
    with RawReader(str(img)) as r:
        meta = [i for i in range(0, 256 * 1024, 4096) if r.pread(start + i, 4096).strip(b"\0")]
        for _ in range(150):
            patches = {start + rng.choice(meta) + rng.randrange(4096): rng.randrange(256) for _ in range(24)}
            try:
                got = guestfiles.collect(XfsView(Window(Mutated(r, patches), start, size), "p2"), "p2", "xfs")
            except Euca2kvmError:
                continue
            assert all(len(v) <= guestfiles.MAX_FILE for v in got.files.values())


def write_at(dst: Path, offset: int, src: Path) -> None:
    gi.place(dst, offset, src)


def centos_disk(d: Path, host: Path) -> Path:
    """p1 ext4 /boot (grub2/grub.cfg at its top), p2 an LVM PV, VG centos: LV root XFS (the guest tree
    without boot/), LV alt ext4 (the same tree, a second root: read, then ignored)."""
    tree = make_tree(d, host)
    boot = d / "boottree"
    (boot / "grub2").mkdir(parents=True)
    (boot / "grub2" / "grub.cfg").write_bytes(b"linux16 /vmlinuz root=/dev/sda1 ro\n")
    gi.run("rm", "-rf", str(tree / "boot"))
    img = gi.sparse(d / "centos.img", 720 * MiB)
    parts = gi.sfdisk(img, "label: dos\nstart=2048, size=32768, type=83, bootable\nstart=34816, type=8e\n")
    gi.place(img, parts[0]["start"] * 512, gi.mkfs(d / "boot.img", 16 * MiB, "mke2fs", "-q", "-F", "-t", "ext4",
                                                   "-d", str(boot)))
    pv_off = parts[1]["start"] * 512
    dev = lvmfix.sh("losetup", "-f", "--show", "-o", str(pv_off), str(img)).stdout.strip()
    try:
        lvm = lvmfix.Lvm([dev])
        lvm("pvcreate", dev)
        lvm("vgcreate", "-s", "4M", "centos", dev)
        lvm("lvcreate", "-n", "root", "-L", "304M", "centos")
        lvm("lvcreate", "-n", "alt", "-L", "32M", "centos")
        pe_start = int(lvm.report("pvs", "pe_start")[0]["pe_start"])
        segs = {row["lv_name"]: row["seg_pe_ranges"] for row in lvm.report("lvs", "lv_name,seg_pe_ranges")}
    finally:
        lvmfix.sh("losetup", "-d", dev, check=False)
    for lv, kind in (("root", "xfs"), ("alt", "ext4")):
        first = int(segs[lv].split(":")[1].split("-")[0])
        fs = make_fs(kind, d / f"{lv}.img", tree)
        write_at(img, pv_off + pe_start + first * 4 * MiB, fs)
        fs.unlink()
    return img


def test_guest_lvm_root_in_a_container(tmp_path: Path, host_files: Path) -> None:
    need_root()
    need_tools("lvm", "losetup", "sfdisk", "mke2fs", "mkfs.xfs", "debugfs")
    img = centos_disk(tmp_path, host_files)
    with RawReader(str(img)) as r:
        rep = inspect_disk(r, "centos")
        fss = guestfiles._filesystems(r, rep)
        assert [(w, t) for w, _, _, _, t in fss] == [("partition 1", "ext4"), ("LV centos/root", "xfs"),
                                                     ("LV centos/alt", "ext4")]
        for where, reader, off, size, fstype in fss[1:]:
            got = guestfiles.read_filesystem(reader, where, off, size, fstype)
            assert got.files == {k: v for k, v in expected().items() if not k.startswith("/boot/")}
    vols = tmp_path / "volumes"
    vols.mkdir()
    lvmfix.euca_container(vols, "vol-6e500002", img)
    p = subprocess.run([sys.executable, "-m", "euca2kvm", "inspect", "vol-6e500002", "-s", str(vols), "--json"],
                       capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 0 and "Traceback" not in p.stderr
    cfg = json.loads(p.stdout)["guest"]["config"]
    assert [s["mount"] for s in cfg["sources"]] == ["/boot", "/", "/"]
    warned = sorted((w["kind"], w["file"], w["line"]) for w in cfg["warnings"])
    assert ("device-name", "/boot/grub2/grub.cfg", 1) in warned and ("device-name", "/etc/fstab", 2) in warned
    assert not any(w[0] == "unchecked" for w in warned)  # ext4 on a guest LV in a container: debugfs reached it
    text = subprocess.run([sys.executable, "-m", "euca2kvm", "inspect", "vol-6e500002", "-s", str(vols)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert text.returncode == 0 and "Traceback" not in text.stderr and "/etc/fstab:2" in text.stdout
    vol = discover_sources([str(vols)], quiet=True).find("vol-6e500002")
    api = guestfiles.guest_warnings(vol.extent_map(), "scsi", "52:54:00:00:00:01")
    assert sorted((w.kind, w.file, w.line) for w in api) == [
        ("device-name", "/etc/fstab", 2), ("mac-pin", "/etc/sysconfig/network-scripts/ifcfg-eth0", 3),
        ("mac-pin", "/etc/udev/rules.d/70-persistent-net.rules", 1)]  # sda1 is right on scsi


def test_inspect_json_warns_about_xvda(disk: tuple[Path, list[tuple[int, int, str]]]) -> None:
    img, _ = disk
    p = subprocess.run([sys.executable, "-m", "euca2kvm", "inspect", str(img), "--json"],
                       capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 0 and "Traceback" not in p.stderr
    cfg = json.loads(p.stdout)["guest"]["config"]
    assert {"kind": "device-name", "file": "/etc/fstab", "line": 2} in [
        {k: w[k] for k in ("kind", "file", "line")} for w in cfg["warnings"]]
    assert cfg["disk_bus"] == "virtio"


def test_ext_file_that_cannot_be_read_costs_only_itself(tmp_path: Path, host_files: Path) -> None:
    need_tools("mke2fs", "debugfs")
    fs = make_fs("ext4", tmp_path / "fs.img", make_tree(tmp_path, host_files))
    # Break /etc/fstab's extent header (debugfs -w on our own scratch copy): its cat fails, the rest is read.
    gi.run("debugfs", "-w", "-R", "sif /etc/fstab block[0] 0", str(fs))
    with RawReader(str(fs)) as r:
        got = guestfiles.read_filesystem(r, "disk", 0, r.size, "ext4")
    assert got.files == {k: v for k, v in expected().items() if k != "/etc/fstab"}
    assert any("/etc/fstab" in n for n in got.notes)


def test_tool_runs_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Output beyond the cap and a hung tool both end as ToolError, the process killed, quickly."""
    need_tools("yes", "sleep")
    with pytest.raises(ToolError):
        extfiles._run(["yes"], (), "yes", b"")
    monkeypatch.setattr(extfiles, "DEBUGFS_TIMEOUT", 0.5)
    t0 = time.monotonic()
    with pytest.raises(ToolError):
        extfiles._run(["sleep", "60"], (), "sleep", b"")
    assert time.monotonic() - t0 < 10


def test_plan_warns_for_the_chosen_hardware(disk: tuple[Path, list[tuple[int, int, str]]], tmp_path: Path) -> None:
    """plan checks the boot volume's guest config against the disk bus and MAC it chose (nothing written)."""
    need_root()
    need_tools("lvm", "losetup", "debugfs")
    img, _ = disk
    vols = tmp_path / "volumes"
    vols.mkdir()
    lvmfix.euca_container(vols, "vol-6e500003", img)
    inv = tmp_path / "inventory.json"

    def plan(mac: str, *extra: str) -> list[str]:
        inv.write_text(json.dumps({
            "format": "euca2kvm-inventory", "version": 1, "source": "test", "captured_at": "2024-05-01T10:00:00Z",
            "volumes_dir": str(vols), "storage_volumes": [],
            "instances": [{"id": "i-6e500003", "state": "stopped", "root_device": "/dev/sda", "mac": mac,
                           "vm_type": {"name": "m1.small", "cpus": 1, "memory_mib": 512},
                           "attachments": [{"volume_id": "vol-6e500003", "device": "/dev/sda", "is_root": True,
                                            "kind": "boot"}]}]}))
        p = subprocess.run([sys.executable, "-m", "euca2kvm", "plan", "i-6e500003", "-o", str(tmp_path / "out"),
                            "--inventory", str(inv), "--json", *extra],
                           capture_output=True, text=True, timeout=120, check=False)
        assert "Traceback" not in p.stderr and not (tmp_path / "out").exists()
        (only,) = json.loads(p.stdout)["instances"]
        return [w for w in only["warnings"] if "guest" in w]

    grub = GUEST["boot/grub/grub.cfg"].count(b"\n")
    virtio = plan(MAC)
    assert sorted(w.split("guest ", 1)[1].split(": ")[0] for w in virtio) == ["/boot/grub/grub.cfg:" + str(grub),
                                                                              "/etc/fstab:2"]
    scsi = plan("52:54:00:00:00:01", "--disk-bus", "scsi")  # sda1 is right on scsi; the pinned MAC is not
    assert any("/etc/fstab:2" in w for w in scsi) and not any("grub.cfg" in w for w in scsi)
    assert any("70-persistent-net.rules:1" in w for w in scsi)
