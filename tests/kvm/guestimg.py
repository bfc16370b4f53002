# SPDX-License-Identifier: Apache-2.0
"""Guest disk images for the inspection tests, built with the real tools, and the tool oracles.

Every filesystem is made in its own sparse file and copied into the disk image at the partition
offset ``sfdisk --json`` reports; the oracles (``sfdisk --json``, ``blkid -p --offset``,
``dumpe2fs -h``) are then run on the finished image.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from _env import missing, need_root, need_tools

MiB = 1 << 20
# Every tool here finishes in well under a second; this bound only catches a hang.
TOOL_TIMEOUT = 120
DEB_CACHE = Path(os.environ.get("EUCA2KVM_DEBS", "/var/tmp/euca2kvm-debs"))
# Copy granularity when placing a filesystem file into a disk image (zero blocks are skipped).
COPY_BLOCK = MiB
SYSLINUX_MBR = "/usr/lib/syslinux/mbr/mbr.bin"
MBR_CODE = 440


def run(*argv: str, stdin: str | None = None) -> str:
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=TOOL_TIMEOUT,
                          check=False)
    if proc.returncode != 0:
        raise AssertionError(f"{argv} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def place(disk: Path, offset: int, src: Path) -> None:
    """Copy ``src`` into ``disk`` at ``offset``, leaving zero blocks as holes."""
    zero = bytes(COPY_BLOCK)
    with open(src, "rb") as s, open(disk, "r+b") as d:
        pos = 0
        while block := s.read(COPY_BLOCK):
            if block != zero[: len(block)]:
                d.seek(offset + pos)
                d.write(block)
            pos += len(block)


def write_at(disk: Path, offset: int, data: bytes) -> None:
    with open(disk, "r+b") as d:
        d.seek(offset)
        d.write(data)


def sfdisk(disk: Path, script: str) -> list[dict[str, Any]]:
    run("sfdisk", "-q", "--no-reread", "--no-tell-kernel", str(disk), stdin=script)
    return sfdisk_json(disk)["partitions"]


def sfdisk_json(disk: Path) -> dict[str, Any]:
    table: dict[str, Any] = json.loads(run("sfdisk", "--json", str(disk)))["partitiontable"]
    return table


def blkid(disk: Path, offset: int, size: int | None = None) -> dict[str, str]:
    argv = ["blkid", "-p", "-o", "export", "--offset", str(offset)]
    if size is not None:
        argv += ["--size", str(size)]
    proc = subprocess.run([*argv, str(disk)], capture_output=True, text=True, timeout=TOOL_TIMEOUT,
                          check=False)
    out = {}
    for line in proc.stdout.splitlines():
        k, _, v = line.partition("=")
        out[k] = v.replace("\\ ", " ")
    return out


def dumpe2fs(disk: Path, offset: int, size: int, workdir: Path) -> dict[str, str]:
    """``dumpe2fs -h`` of the ext filesystem at ``offset`` (copied out: dumpe2fs has no offset option)."""
    part = workdir / "dumpe2fs.img"
    with open(disk, "rb") as s, open(part, "wb") as d:
        s.seek(offset)
        d.write(s.read(size))  # small test filesystems only
    out = {}
    for line in run("dumpe2fs", "-h", str(part)).splitlines():
        k, sep, v = line.partition(":")
        if sep:
            out[k.strip()] = v.strip()
    part.unlink()
    return out


def mkfs(path: Path, size: int, *argv: str) -> Path:
    sparse(path, size)
    run(*argv, str(path))
    return path


@contextmanager
def loop(path: Path) -> Iterator[str]:
    """Our own loop device over ``path``, detached by exact name."""
    need_root()
    dev = run("losetup", "--find", "--show", str(path)).strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], timeout=TOOL_TIMEOUT, check=False)


def lvm_pv(path: Path, size: int, uuid: str) -> Path:
    """A real LVM2 PV (pvcreate on our own loop device, pinned with --devices)."""
    need_tools("pvcreate", "losetup")
    sparse(path, size)
    with loop(path) as dev:
        run("pvcreate", "-q", "--devices", dev, "--uuid", uuid, "--norestorefile", dev)
    return path


def luks(path: Path, size: int, version: int, label: str | None) -> Path:
    need_tools("cryptsetup")
    key = path.with_suffix(".key")
    key.write_text("not-a-secret")
    argv = ["cryptsetup", "luksFormat", "-q", "--type", f"luks{version}", "--pbkdf-force-iterations", "1000",
            "--key-file", str(key)]
    if version == 2:
        argv += ["--pbkdf", "pbkdf2", "--luks2-metadata-size", "16k", "--luks2-keyslots-size", "1m"]
    if label:
        argv += ["--label", label]
    sparse(path, size)
    run(*argv, str(path))
    return path


def deb_file(package: str, member: str) -> Path:
    """A file from a Debian package, fetched with ``apt-get download`` into the cache (no install)."""
    root = DEB_CACHE / f"{package}.x"
    target = root / member
    if target.exists():
        return target
    DEB_CACHE.mkdir(parents=True, exist_ok=True)
    debs = sorted(glob.glob(str(DEB_CACHE / f"{package}_*.deb")))
    if not debs:
        proc = subprocess.run(["apt-get", "download", package], cwd=DEB_CACHE, capture_output=True,
                              timeout=TOOL_TIMEOUT, check=False)
        debs = sorted(glob.glob(str(DEB_CACHE / f"{package}_*.deb")))
        if proc.returncode != 0 or not debs:
            missing(f"apt-get download {package} failed")
    tmp = DEB_CACHE / f"{package}.x.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    run("dpkg-deb", "-x", debs[-1], str(tmp))
    if root.exists():
        shutil.rmtree(tmp)
    else:
        os.rename(tmp, root)
    if not target.exists():
        missing(f"{package} has no {member}")
    return target
