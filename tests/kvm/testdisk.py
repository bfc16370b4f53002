# SPDX-License-Identifier: Apache-2.0
"""Build a small BIOS-bootable Linux test disk from Debian packages, without mounting anything.

Layout of the 25 MiB raw image (MBR partition table, SYSLINUX ``mbr.bin`` boot code):

* p1, sectors 2048..34815, FAT16, active: ``ldlinux.sys`` (``syslinux --install --offset``), ``vmlinuz``
  (the Debian *cloud* kernel, unpacked from its ``.deb``, never installed), ``initrd.gz`` and ``syslinux.cfg``;
* p2, sectors 34816..51199, ext4 made with ``mkfs.ext4 -d -E offset=``: a 4 MiB deterministic ``payload.bin``,
  its ``payload.sha256`` and ``marker.txt``.

The initrd (busybox-static plus the virtio modules) loads ``virtio_blk``, mounts p2 read-only, checks the
payload's sha256 and prints ``BOOT-OK payload-<first 16 hex digits>`` (or ``BOOT-FAIL <why>``) on ttyS0,
then powers off. Seeing the marker proves BIOS -> MBR -> VBR -> SYSLINUX -> kernel -> initrd all read their
sectors from the right places and the guest kernel read the ext4 partition byte-exactly.

Only ``apt-get download`` touches the network; ``.deb`` files and unpacked members are cached in ``cache``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from euca2kvm import procs
from euca2kvm.errors import FormatError, ToolError, UsageError
from euca2kvm.kvm.qemu import write_syslinux_mbr
from euca2kvm.units import MiB

log = logging.getLogger(__name__)

DEFAULT_CACHE = Path("/var/tmp/euca2kvm-debs")
KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
# Debian package names: lowercase alphanumerics and + - . (Debian policy 5.6.1).
PACKAGE_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]{1,100}$")

# Partition layout in 512-byte sectors; 16 MiB is the smallest comfortable FAT16 for kernel + initrd.
SECTOR = 512
P1_START, P1_SECTORS = 2048, 32768
P2_START, P2_SECTORS = P1_START + P1_SECTORS, 16384
DISK_SECTORS = P2_START + P2_SECTORS
PAYLOAD_SIZE = 4 * MiB
PAYLOAD_SEED = b"euca2kvm test disk payload v1"
# Fixed identifiers and times so two builds differ as little as the tools allow.
FS_UUID = "6d1d3f5e-2c7b-4c59-9a54-0e1c2a7b5f10"
FIXED_EPOCH = 1700000000
BUSYBOX = Path("/bin/busybox")
# virtio modules in load order (no modules.dep in the package, so insmod in dependency order).
VIRTIO_MODULES = (
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_pci_legacy_dev.ko",
    "drivers/virtio/virtio_pci_modern_dev.ko",
    "drivers/virtio/virtio_pci.ko",
    "drivers/block/virtio_blk.ko",
)
# Largest member we accept from a kernel .deb (vmlinuz is ~8 MiB; modules are < 1 MiB).
MAX_MEMBER_SIZE = 64 * MiB
# apt-get download of a 27 MB kernel takes seconds; 300 s allows a slow mirror. Local tools get 120 s.
APT_TIMEOUT = 300.0
TOOL_TIMEOUT = 120.0
# loglevel=6 shows the kernel's "Linux version" notice (boot stage evidence) but not the info chatter.
KERNEL_CMDLINE = "console=ttyS0,115200 panic=-1 loglevel=6"

INIT_SCRIPT = """#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s /bin
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
exec >/dev/ttyS0 2>&1
echo "euca2kvm-testdisk: init started"
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk; do
  insmod /lib/modules/$m.ko || echo "euca2kvm-testdisk: insmod $m failed"
done
i=0
while [ ! -b /dev/vda2 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
if ! mount -t ext4 -o ro /dev/vda2 /mnt; then
  R="BOOT-FAIL cannot mount /dev/vda2"
elif (cd /mnt && sha256sum -c -s payload.sha256); then
  R="BOOT-OK $(cat /mnt/marker.txt)"
else
  R="BOOT-FAIL payload checksum mismatch"
fi
echo "$R"
umount /mnt 2>/dev/null
poweroff -f
"""

SYSLINUX_CFG = f"""SERIAL 0 115200
DEFAULT linux
PROMPT 0
TIMEOUT 0
LABEL linux
  KERNEL vmlinuz
  APPEND initrd=initrd.gz {KERNEL_CMDLINE}
"""


@dataclass(frozen=True)
class TestDisk:
    """A built test disk: ``marker`` is the exact line a good boot prints on the serial console."""

    __test__ = False  # not a pytest test class despite its name

    path: Path
    marker: str
    payload_sha256: str
    kernel_version: str
    size: int


@dataclass(frozen=True)
class KernelFiles:
    version: str
    vmlinuz: Path
    modules: tuple[Path, ...]


def _run(argv: list[str], *, timeout: float = TOOL_TIMEOUT, cwd: Path | None = None,
         stdin: bytes | None = None, env: dict[str, str] | None = None) -> str:
    return procs.run(argv, timeout=timeout, cwd=cwd, stdin=stdin, env=env).stdout.decode("utf-8", "replace")


def _check_package(name: str) -> str:
    if not PACKAGE_NAME.match(name):
        raise UsageError(f"invalid Debian package name {name!r}")
    return name


def _cached_debs(package: str, cache: Path) -> list[Path]:
    return sorted(p for p in cache.glob(f"{package}_*.deb") if p.is_file())


def fetch_deb(package: str, cache: Path = DEFAULT_CACHE) -> Path:
    """The ``.deb`` of ``package`` in ``cache``, downloaded with ``apt-get download`` if not there yet."""
    _check_package(package)
    cache.mkdir(parents=True, exist_ok=True)
    found = _cached_debs(package, cache)
    if found:
        return found[-1]
    # Download into a private directory, then rename: a concurrent reader never sees a partial file.
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as d:
        _run(["apt-get", "-o", "DPkg::Lock::Timeout=600", "-q", "download", package], cwd=Path(d),
             timeout=APT_TIMEOUT)
        got = sorted(Path(d).glob(f"{package}_*.deb"))
        if not got:
            raise ToolError(f"apt-get download {package} produced no .deb")
        for deb in got:
            os.replace(deb, cache / deb.name)
    return _cached_debs(package, cache)[-1]


def kernel_package() -> str:
    """The versioned package ``linux-image-cloud-amd64`` currently depends on (from local apt lists)."""
    out = _run(["apt-cache", "depends", KERNEL_META_PACKAGE])
    m = re.search(r"Depends: (linux-image-[0-9][a-z0-9.+-]*-cloud-amd64)\b", out)
    if not m:
        raise ToolError(f"cannot resolve {KERNEL_META_PACKAGE} with apt-cache")
    return m.group(1)


def _kernel_deb(cache: Path) -> Path:
    try:
        return fetch_deb(kernel_package(), cache)
    except ToolError:
        cached = sorted(cache.glob("linux-image-[0-9]*-cloud-amd64_*.deb"))
        if cached:
            log.info("apt unavailable, using cached %s", cached[-1].name)
            return cached[-1]
        raise


def _unpack_dir(deb: Path, cache: Path) -> Path:
    return cache / "unpacked" / deb.name.removesuffix(".deb")


def extract_members(deb: Path, wanted: dict[str, str], dest: Path) -> None:
    """Copy members of ``deb``'s data archive to ``dest``: ``wanted`` maps a member-name regex to a file name.

    Streams ``dpkg-deb --fsys-tarfile``; only regular files, each at most MAX_MEMBER_SIZE, are written, and
    only under the names the caller chose, so a hostile package cannot write anywhere else.
    """
    patterns = {re.compile(k): v for k, v in wanted.items()}
    dest.mkdir(parents=True, exist_ok=True)
    found: set[str] = set()
    # A streamed archive of up to a few hundred MiB: read as a pipe, not collected by procs.run.
    with subprocess.Popen(procs.die_with_parent(["dpkg-deb", "--fsys-tarfile", str(deb)]), stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL) as proc:
        assert proc.stdout is not None
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                for member in tar:
                    name = member.name.removeprefix("./")
                    target = next((v for p, v in patterns.items() if p.fullmatch(name)), None)
                    if target is None or not member.isfile():
                        continue
                    if member.size > MAX_MEMBER_SIZE:
                        raise FormatError(f"member {name} too large ({member.size} bytes)", str(deb))
                    src = tar.extractfile(member)
                    if src is None:
                        continue
                    with open(dest / target, "wb") as out:
                        shutil.copyfileobj(src, out)
                    found.add(target)
        except tarfile.TarError as e:
            raise FormatError(f"bad data archive: {e}", str(deb)) from e
        finally:
            try:
                proc.wait(timeout=TOOL_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    missing = set(wanted.values()) - found
    if missing:
        raise FormatError(f"package lacks {', '.join(sorted(missing))}", str(deb))


def kernel_files(cache: Path = DEFAULT_CACHE) -> KernelFiles:
    """vmlinuz and the virtio modules of the Debian cloud kernel, unpacked once into the cache."""
    deb = _kernel_deb(cache)
    m = re.match(r"linux-image-([0-9][a-z0-9.+-]*-cloud-amd64)_", deb.name)
    if not m:
        raise FormatError("unexpected kernel package file name", str(deb))
    version = m.group(1)
    names = ["vmlinuz", *(Path(mod).name for mod in VIRTIO_MODULES)]
    dest = _unpack_dir(deb, cache)
    if not (dest / ".complete").exists():
        wanted = {re.escape(f"boot/vmlinuz-{version}"): "vmlinuz"}
        for mod in VIRTIO_MODULES:
            wanted[re.escape(f"lib/modules/{version}/kernel/{mod}")] = Path(mod).name
        (cache / "unpacked").mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache / "unpacked", prefix=".unpack-") as d:
            extract_members(deb, wanted, Path(d) / "k")
            (Path(d) / "k" / ".complete").touch()
            try:
                os.rename(Path(d) / "k", dest)
            except OSError:
                if not (dest / ".complete").exists():  # lost a race to a concurrent unpack: fine if complete
                    raise
    return KernelFiles(version, dest / names[0], tuple(dest / n for n in names[1:]))


def fetch_package_file(package: str, member: str, cache: Path = DEFAULT_CACHE) -> Path:
    """One file (e.g. ``usr/lib/ipxe/ipxe.iso``) from a Debian package, downloaded and unpacked into the cache."""
    if member.startswith("/") or ".." in Path(member).parts:
        raise UsageError(f"invalid package member {member!r}")
    deb = fetch_deb(package, cache)
    dest = _unpack_dir(deb, cache)
    target = dest / Path(member).name
    if not target.is_file():
        (cache / "unpacked").mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache / "unpacked", prefix=".unpack-") as d:
            extract_members(deb, {re.escape(member): target.name}, Path(d))
            dest.mkdir(parents=True, exist_ok=True)
            os.replace(Path(d) / target.name, target)
    return target


# --- initrd -------------------------------------------------------------------------------------------

def _cpio_entry(name: str, mode: int, data: bytes = b"", ino: int = 0, rdev: tuple[int, int] = (0, 0)) -> bytes:
    """One newc cpio record with fixed owner and time, padded to 4 bytes."""
    fields = [ino, mode, 0, 0, 2 if mode & 0o040000 else 1, FIXED_EPOCH, len(data), 0, 0, rdev[0], rdev[1],
              len(name) + 1, 0]
    head = b"070701" + b"".join(b"%08X" % f for f in fields) + name.encode() + b"\0"
    head += b"\0" * (-len(head) % 4)
    return head + data + b"\0" * (-len(data) % 4)


def build_initrd(kernel: KernelFiles, busybox: Path = BUSYBOX) -> bytes:
    """The gzip'd newc initramfs: busybox-static, the virtio modules, /init; reproducible byte for byte."""
    try:
        entries: list[tuple[str, int, bytes]] = [("bin/busybox", 0o100755, busybox.read_bytes())]
        entries += [(f"lib/modules/{m.name}", 0o100644, m.read_bytes()) for m in kernel.modules]
    except OSError as e:
        raise ToolError(f"cannot read initrd input: {e} (busybox-static installed?)") from e
    entries.append(("init", 0o100755, INIT_SCRIPT.encode()))
    out = io.BytesIO()
    ino = 1
    for d in ("bin", "dev", "lib", "lib/modules", "mnt", "proc", "sys"):
        out.write(_cpio_entry(d, 0o040755, ino=ino))
        ino += 1
    out.write(_cpio_entry("dev/console", 0o020600, ino=ino, rdev=(5, 1)))
    for name, mode, data in entries:
        ino += 1
        out.write(_cpio_entry(name, mode, data, ino=ino))
    out.write(_cpio_entry("TRAILER!!!", 0))
    return gzip.compress(out.getvalue(), compresslevel=9, mtime=0)


def payload_bytes() -> bytes:
    """The deterministic 4 MiB payload (SHAKE-256 of a fixed seed: incompressible, reproducible)."""
    return hashlib.shake_256(PAYLOAD_SEED).digest(PAYLOAD_SIZE)


def expected_marker(payload: bytes | None = None) -> str:
    digest = hashlib.sha256(payload if payload is not None else payload_bytes()).hexdigest()
    return f"BOOT-OK payload-{digest[:16]}"


# --- disk ---------------------------------------------------------------------------------------------

def build_test_disk(out: Path, cache: Path = DEFAULT_CACHE) -> TestDisk:
    """Build the test disk at ``out`` (overwritten); see the module docstring. Needs root for nothing."""
    out = Path(out).absolute()
    kernel = kernel_files(cache)
    payload = payload_bytes()
    digest = hashlib.sha256(payload).hexdigest()
    marker = expected_marker(payload)
    env = {"SOURCE_DATE_EPOCH": str(FIXED_EPOCH), "E2FSPROGS_FAKE_TIME": str(FIXED_EPOCH), "TZ": "UTC"}
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".testdisk-") as d:
        work = Path(d)
        root, boot = work / "root", work / "boot"
        root.mkdir()
        boot.mkdir()
        (root / "payload.bin").write_bytes(payload)
        (root / "payload.sha256").write_text(f"{digest}  payload.bin\n")
        (root / "marker.txt").write_text(marker.removeprefix("BOOT-OK ") + "\n")
        shutil.copyfile(kernel.vmlinuz, boot / "vmlinuz")
        (boot / "initrd.gz").write_bytes(build_initrd(kernel))
        (boot / "syslinux.cfg").write_text(SYSLINUX_CFG)
        for p in (*root.iterdir(), *boot.iterdir(), root):
            os.utime(p, (FIXED_EPOCH, FIXED_EPOCH))
        img = work / "disk.img"
        with open(img, "wb") as f:
            f.truncate(DISK_SECTORS * SECTOR)
        table = (f"label: dos\nlabel-id: 0x65756361\nstart={P1_START}, size={P1_SECTORS}, type=6, bootable\n"
                 f"start={P2_START}, size={P2_SECTORS}, type=83\n")
        _run(["sfdisk", "-q", str(img)], stdin=table.encode(), env=env)
        write_syslinux_mbr(img)
        p1 = P1_START * SECTOR
        _run(["mkfs.fat", "-F", "16", "--invariant", "-n", "E2KBOOT", "--offset", str(P1_START), str(img),
              str(P1_SECTORS * SECTOR // 1024)], env=env)
        _run(["syslinux", "--install", "--offset", str(p1), str(img)], env=env)
        for name in ("vmlinuz", "initrd.gz", "syslinux.cfg"):
            _run(["mcopy", "-m", "-o", "-i", f"{img}@@{p1}", str(boot / name), f"::{name}"], env=env)
        _run(["mkfs.ext4", "-q", "-F", "-L", "e2kdata", "-U", FS_UUID, "-E",
              f"offset={P2_START * SECTOR},hash_seed={FS_UUID}", "-d", str(root), str(img),
              f"{P2_SECTORS * SECTOR // 1024}k"], env=env)
        os.replace(img, out)
    return TestDisk(out, marker, digest, kernel.version, DISK_SECTORS * SECTOR)
