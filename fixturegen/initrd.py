# SPDX-License-Identifier: Apache-2.0
"""Kernel download (never installed) and the oracle initrd.

The Debian cloud kernel is fetched with ``apt-get download`` into a cache directory and unpacked
with ``dpkg-deb -x``. The initrd holds busybox-static, the host's lvm and dmsetup with their
libraries, the device-mapper / md modules in dependency order (read from each module's
``depends=`` modinfo string, since the package ships no modules.dep), the guest job scripts and
the write patterns.
"""

from __future__ import annotations

import gzip
import os
import re
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from . import patterns

CACHE = Path("/var/tmp/euca2kvm-debs")
META_PACKAGE = "linux-image-cloud-amd64"
# apt and dpkg-deb on a local cache: generous, but a stuck lock must not hang the generator.
APT_TIMEOUT = 900
TOOL_TIMEOUT = 120
GUEST_DIR = Path(__file__).with_name("guest")
# Modules the guest loads; their dependencies are added automatically.
WANTED_MODULES = [
    "virtio_pci", "virtio_blk",
    "dm-mod", "dm-zero", "dm-thin-pool", "dm-snapshot", "dm-mirror",
    "raid1", "dm-raid",
]
HOST_BINARIES = ["/bin/busybox", "/sbin/lvm", "/sbin/dmsetup"]


def run(cmd: list[str], timeout: float = TOOL_TIMEOUT, cwd: Path | None = None) -> str:
    """Run a command with a timeout; raise with its stderr on failure."""
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (rc {p.returncode}): {p.stderr.strip()[-2000:]}")
    return p.stdout


@dataclass
class Kernel:
    package: str
    version: str
    root: Path
    vmlinuz: Path
    modules: Path  # lib/modules/<kver>/kernel


def fetch_kernel(unpack_to: Path) -> Kernel:
    deps = run(["apt-cache", "depends", META_PACKAGE])
    m = re.search(r"Depends: (linux-image-\d\S*)", deps)
    if not m:
        raise RuntimeError(f"cannot resolve {META_PACKAGE} to a kernel package")
    pkg = m[1]
    CACHE.mkdir(parents=True, exist_ok=True)
    debs = sorted(CACHE.glob(f"{pkg}_*.deb"))
    if not debs:
        run(["apt-get", "-o", "DPkg::Lock::Timeout=600", "download", pkg], timeout=APT_TIMEOUT, cwd=CACHE)
        debs = sorted(CACHE.glob(f"{pkg}_*.deb"))
    if not debs:
        raise RuntimeError(f"apt-get download {pkg} produced no .deb in {CACHE}")
    deb = debs[-1]
    version = run(["dpkg-deb", "-f", str(deb), "Version"]).strip()
    run(["dpkg-deb", "-x", str(deb), str(unpack_to)])
    vmlinuz = sorted((unpack_to / "boot").glob("vmlinuz-*"))[-1]
    kver = vmlinuz.name.removeprefix("vmlinuz-")
    return Kernel(pkg, version, unpack_to, vmlinuz, unpack_to / "lib/modules" / kver / "kernel")


def module_order(moddir: Path, wanted: list[str]) -> list[Path]:
    """Modules in load order (dependencies first), from their ``depends=`` strings."""
    index = {p.name.removesuffix(".ko").replace("_", "-"): p for p in moddir.rglob("*.ko")}

    def find(name: str) -> Path:
        p = index.get(name.replace("_", "-"))
        if p is None:
            raise RuntimeError(f"module {name} not in the kernel package")
        return p

    order: list[Path] = []
    seen: set[Path] = set()

    def visit(name: str, depth: int) -> None:
        if depth > 32:  # dependency chains are short; a loop means a broken package
            raise RuntimeError(f"module dependency loop at {name}")
        p = find(name)
        if p in seen:
            return
        m = re.search(rb"depends=([^\0]*)\0", p.read_bytes())
        for dep in (m[1].decode().split(",") if m and m[1] else []):
            visit(dep, depth + 1)
        seen.add(p)
        order.append(p)

    for w in wanted:
        visit(w, 0)
    return order


def host_libs(binary: str) -> list[str]:
    out = run(["ldd", binary])
    return sorted({m for m in re.findall(r"(/\S+)", out) if not m.startswith("/dev")})


class Cpio:
    """Minimal newc archive writer (what the kernel unpacks as initramfs)."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.ino = 1
        self.dirs: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes) -> None:
        nm = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, 2 if stat.S_ISDIR(mode) else 1, 0, len(data), 0, 0, 0, 0, len(nm), 0]
        self.ino += 1
        self.buf += b"070701" + b"".join(b"%08X" % f for f in fields) + nm
        self.buf += b"\0" * (-len(self.buf) % 4) + data
        self.buf += b"\0" * (-len(self.buf) % 4)

    def mkdir(self, path: str) -> None:
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d and d not in self.dirs:
                self.dirs.add(d)
                self._entry(d, stat.S_IFDIR | 0o755, b"")

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self.mkdir(os.path.dirname(path.strip("/")))
        self._entry(path.strip("/"), stat.S_IFREG | mode, data)

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0, b"")
        return bytes(self.buf)


def build_initrd(kernel: Kernel, out: Path, workdir: Path) -> list[str]:
    """Write the gzip initrd; returns the module load order."""
    c = Cpio()
    for d in ("dev", "proc", "sys", "tmp", "run/lvm", "run/lock/lvm", "etc/lvm", "mods"):
        c.mkdir(d)
    added: set[str] = set()
    for b in HOST_BINARIES:
        for f in [b] + (host_libs(b) if b != "/bin/busybox" else []):
            if f not in added:
                added.add(f)
                c.file(f, Path(f).read_bytes(), 0o755)
    mods = module_order(kernel.modules, WANTED_MODULES)
    for p in mods:
        c.file(f"/mods/{p.name}", p.read_bytes())
    names = [p.name.removesuffix(".ko") for p in mods]
    c.file("/mods/order", ("\n".join(names) + "\n").encode())
    c.file("/init", (GUEST_DIR / "init.sh").read_bytes(), 0o755)
    for job in ("common.sh", "create.sh", "verify.sh"):
        c.file(f"/jobs/{job}", (GUEST_DIR / job).read_bytes(), 0o755)
    pat = workdir / "pat"
    patterns.write_patterns((GUEST_DIR / "create.sh").read_text(), pat)
    for pf in sorted(pat.iterdir()):
        c.file(f"/pat/{pf.name}", pf.read_bytes())
    out.write_bytes(gzip.compress(c.finish(), compresslevel=1))
    return names
