# SPDX-License-Identifier: Apache-2.0
"""A real Debian 12 cloud-init guest for the usable-boot tests, built from Debian packages and cached.

:func:`base_guest` builds a 1 GiB raw MBR disk (one ext4 partition, extlinux, systemd, cloud-init 22.4,
openssh-server, the Debian cloud kernel) with ``mmdebstrap`` from the host's apt sources. The build script
is a copy of the proven recipe in ``shared/reference/recipes/cloud-init-guest/build.sh`` (machine-recipes
§8, tested 2026-12-01), reduced to the defaults the tests need: console on ttyS0, SSH host keys removed
(cloud-init makes them per instance), empty machine-id, ``e2scrub_reap`` masked, C.UTF-8 locale, no apt
sources in the guest, and cloud-init's *default* datasource list (one entry would make a boot without a
seed a new instance).

The result lives in ``/var/tmp/euca2kvm-cloudguest-<key>/`` where ``<key>`` hashes the script text, the
package list and the settings; it is built in a temporary directory next to it and renamed into place, under
an exclusive lock, so parallel runs or a crash never leave a half-built cache. A clean build takes about
two minutes (bootstrap 96-140 s in the recipe's measurements).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from _env import missing, need_root, need_tools

CACHE_ROOT = Path(os.environ.get("EUCA2KVM_GUEST_CACHE", "/var/tmp"))
PREFIX = "euca2kvm-cloudguest-"
# mmdebstrap took 96-140 s in the recipe; a slow mirror or a loaded host may triple it.
BUILD_TIMEOUT = 900
DISK_MB = 1024  # apparent size; ~430 MiB used. Fits lvmfix.euca_container's 1 GiB overlay LV.
ROOT_UUID = "3d5f0e52-7b1c-4c1a-9a51-6c2b8f0e1a01"
LABEL_ID = "0x5eed0001"
PACKAGES = ("systemd-sysv,udev,dbus,linux-image-cloud-amd64,cloud-init,openssh-server,openssh-sftp-server,"
            "netplan.io,systemd-resolved,iproute2,sudo,cloud-guest-utils,fdisk,e2fsprogs,procps")
BUILD_TOOLS = ("mmdebstrap", "mke2fs", "sfdisk", "partx", "losetup", "mount", "extlinux", "dd")
SYSLINUX_MBR = Path("/usr/lib/syslinux/mbr/mbr.bin")

# Copied from the recipe's build.sh (steps 1-4; key and seed are made by the tests themselves).
BUILD_SCRIPT = r"""
set -euo pipefail
ROOTFS=$WORK/rootfs; MNT=$WORK/mnt; LOOP=""
cleanup() {
  if mountpoint -q "$MNT" 2>/dev/null; then umount "$MNT"; fi
  if [ -n "$LOOP" ]; then losetup -d "$LOOP" || true; fi
}
trap cleanup EXIT
export SOURCE_DATE_EPOCH=1735689600 E2FSPROGS_FAKE_TIME=1735689600
mmdebstrap --quiet --variant=minbase --include="$PKGS" \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  bookworm "$ROOTFS"
KVER=$(basename "$(ls -1 "$ROOTFS"/boot/vmlinuz-* | sort -V | tail -1)" | sed 's/^vmlinuz-//')
echo "UUID=$ROOT_UUID / ext4 errors=remount-ro 0 1" > "$ROOTFS/etc/fstab"
echo localhost > "$ROOTFS/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' > "$ROOTFS/etc/hosts"
rm -f "$ROOTFS"/etc/ssh/ssh_host_*
: > "$ROOTFS/etc/machine-id"
rm -f "$ROOTFS/var/lib/dbus/machine-id"
: > "$ROOTFS/etc/apt/sources.list"
echo 'LANG=C.UTF-8' > "$ROOTFS/etc/default/locale"
echo 'locale: C.UTF-8' > "$ROOTFS/etc/cloud/cloud.cfg.d/91-locale.cfg"
ln -sf /dev/null "$ROOTFS/etc/systemd/system/e2scrub_reap.service"
mkdir -p "$ROOTFS/boot/extlinux"
cat > "$ROOTFS/boot/extlinux/extlinux.conf" <<EOF
SERIAL 0 115200
DEFAULT debian
PROMPT 0
TIMEOUT 0
LABEL debian
  LINUX /boot/vmlinuz-$KVER
  INITRD /boot/initrd.img-$KVER
  APPEND root=UUID=$ROOT_UUID ro console=tty0 console=ttyS0,115200n8
EOF
PART_MB=$((DISK_MB - 1))
truncate -s "${PART_MB}M" "$WORK/part.img"
mke2fs -q -F -t ext4 -L debroot -U "$ROOT_UUID" -E "hash_seed=$ROOT_UUID,root_owner=0:0" \
  -d "$ROOTFS" "$WORK/part.img" "${PART_MB}M"
truncate -s "${DISK_MB}M" "$OUT/disk.raw"
printf 'label: dos\nlabel-id: %s\nstart=2048, type=83, bootable\n' "$LABEL_ID" | sfdisk -q "$OUT/disk.raw"
dd if="$WORK/part.img" of="$OUT/disk.raw" bs=1M seek=1 conv=notrunc,sparse status=none
rm -f "$WORK/part.img"
dd if="$SYSLINUX_MBR" of="$OUT/disk.raw" bs=440 count=1 conv=notrunc status=none
LOOP=$(losetup -f --show -P "$OUT/disk.raw")
PDEV=${LOOP}p1
[ -e "/sys/block/${LOOP#/dev/}/${PDEV#/dev/}" ] || partx -a "$LOOP"
for _ in $(seq 25); do [ -b "$PDEV" ] && break; sleep 0.2; done
if [ ! -b "$PDEV" ]; then
  mknod "$PDEV" b $(tr ':' ' ' < "/sys/block/${LOOP#/dev/}/${PDEV#/dev/}/dev")
fi
mkdir -p "$MNT"
mount "$PDEV" "$MNT"
extlinux --install "$MNT/boot/extlinux"
umount "$MNT"
losetup -d "$LOOP"; LOOP=""
# extlinux writes "hidden sectors" 0 on a loop device (no HDIO_GETGEO): patch BPB offset 0x1c to 2048
HID=$(od -An -tu4 -j $((2048 * 512 + 0x1c)) -N4 "$OUT/disk.raw" | tr -d ' ')
if [ "$HID" != 2048 ]; then
  printf '\x00\x08\x00\x00' | dd of="$OUT/disk.raw" bs=1 seek=$((2048 * 512 + 0x1c)) conv=notrunc status=none
fi
echo "$KVER" > "$OUT/kernel-version"
"""


@dataclass(frozen=True)
class CloudGuest:
    """A built guest: the raw disk and the directory that caches it."""

    dir: Path
    disk: Path
    kernel_version: str


def cache_key(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


@contextlib.contextmanager
def cache_lock(name: str) -> Iterator[None]:
    """An exclusive lock for building ``name`` (released when the holder exits, even on a crash)."""
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    fd = os.open(CACHE_ROOT / f".{name}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def remove_tree(path: Path) -> None:
    """``rm -rf path``, first unmounting anything mounted below it (a killed mmdebstrap may leave its
    /proc, /sys or /dev mounts in the root file system: deleting through them would reach the host's)."""
    prefix = str(path.absolute()) + "/"
    with open("/proc/self/mounts") as f:
        points = [line.split()[1].replace("\\040", " ") for line in f]
    for mnt in sorted((m for m in points if m.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", mnt], capture_output=True, timeout=60, check=False)
    with open("/proc/self/mounts") as f:
        if any(line.split()[1].startswith(prefix) for line in f):
            raise AssertionError(f"{path} still has mounts below it; not deleting it")
    shutil.rmtree(path, ignore_errors=True)


def cached_build(name: str, build: Callable[[Path], None]) -> Path:
    """``CACHE_ROOT/name``, made by ``build(tmpdir)`` in a temporary directory and renamed into place."""
    final = CACHE_ROOT / name
    if final.is_dir() and not final.is_symlink():
        return final
    with cache_lock(name):
        if final.is_dir() and not final.is_symlink():
            return final
        for stale in CACHE_ROOT.glob(f"{name}.tmp-*"):  # left by a crashed build (we hold the lock)
            remove_tree(stale)
        tmp = CACHE_ROOT / f"{name}.tmp-{os.getpid()}"
        tmp.mkdir(mode=0o700)
        try:
            build(tmp)
            os.rename(tmp, final)
        finally:
            if tmp.exists():
                remove_tree(tmp)
    return final


def base_guest() -> CloudGuest:
    """The pristine cloud-init guest (never booted), built once and cached."""
    need_root()
    need_tools(*BUILD_TOOLS)
    if not SYSLINUX_MBR.exists():
        missing(f"{SYSLINUX_MBR} missing (syslinux-common)")
    settings = f"DISK_MB={DISK_MB} ROOT_UUID={ROOT_UUID} LABEL_ID={LABEL_ID}"
    key = cache_key(BUILD_SCRIPT, PACKAGES, settings)

    def build(tmp: Path) -> None:
        work = tmp / "work"
        work.mkdir()
        env = {**os.environ, "OUT": str(tmp), "WORK": str(work), "PKGS": PACKAGES, "DISK_MB": str(DISK_MB),
               "ROOT_UUID": ROOT_UUID, "LABEL_ID": LABEL_ID, "SYSLINUX_MBR": str(SYSLINUX_MBR),
               "LC_ALL": "C"}
        t0 = time.monotonic()
        proc = subprocess.run(["bash", "-c", BUILD_SCRIPT], env=env, capture_output=True, text=True,
                              timeout=BUILD_TIMEOUT, stdin=subprocess.DEVNULL, check=False)
        (tmp / "build.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise AssertionError(f"cloud guest build failed ({proc.returncode}): {proc.stderr[-3000:]}")
        remove_tree(work)
        (tmp / "build-seconds").write_text(f"{time.monotonic() - t0:.0f}\n")

    d = cached_build(PREFIX + key, build)
    return CloudGuest(d, d / "disk.raw", (d / "kernel-version").read_text().strip())


# --- the instance as the cloud provisioned it ---------------------------------------------------------

# First boot under TCG: SSH in 55-115 s, cloud-init done 25-30 s later (recipe); a loaded CI host is slower.
PROVISION_TIMEOUT = 600.0
# A clean `systemctl poweroff` of this guest takes 5-15 s under TCG.
SHUTDOWN_TIMEOUT = 120.0
SEED_TOOLS = ("genisoimage", "ssh-keygen", "cp")
# The cloud's user-data: root may log in with the instance key (as the recipe's mkseed.sh sets it).
CLOUD_USER_DATA = "#cloud-config\ndisable_root: false\nssh_authorized_keys:\n  - {key}\n"
# Bumped when the provisioning steps below change (the cache key also covers the base image and inputs).
PROVISION_VERSION = "1"
QEMU_TIMEOUT_SLACK = 30.0


@dataclass(frozen=True)
class CloudInstance:
    """What the cloud's metadata service told the instance at its first boot."""

    instance_id: str
    hostname: str  # local-hostname: the private DNS name
    mac: str
    nic_model: str = "virtio-net-pci"
    memory_mib: int = 1024
    vcpus: int = 2


@dataclass(frozen=True)
class Provisioned:
    """The guest after its first boot in the "cloud": disk, instance key, host keys, first-boot timings."""

    dir: Path
    disk: Path
    key: Path
    public_key: str
    host_keys: Path
    first_boot: dict[str, object]


def make_seed(out: Path, inst: CloudInstance, public_key: str) -> Path:
    """A NoCloud seed (ISO 9660 labelled cidata) made with genisoimage, as the recipe's mkseed.sh does."""
    d = out.with_suffix(".d")
    d.mkdir()
    (d / "meta-data").write_text(f"instance-id: {inst.instance_id}\nlocal-hostname: {inst.hostname}\n"
                                 f"public-keys:\n  - {public_key}\n")
    (d / "user-data").write_text(CLOUD_USER_DATA.format(key=public_key))
    subprocess.run(["genisoimage", "-quiet", "-output", str(out), "-volid", "cidata", "-joliet", "-rock",
                    str(d / "user-data"), str(d / "meta-data")], check=True, capture_output=True, timeout=60)
    shutil.rmtree(d)
    return out


def _cloud_boot(work: Path, disk: Path, seed: Path, inst: CloudInstance, key: Path) -> dict[str, object]:
    """Boot ``disk`` writable with the seed, wait for SSH and cloud-init, record host keys, power off."""
    from euca2kvm.kvm import sshproof
    from euca2kvm.kvm.qemu import QemuProcess, accelerator

    accel = accelerator()
    port = sshproof.free_port()
    serial = work / "first-boot.serial.log"
    args = ["-accel", accel, "-machine", "pc", "-cpu", "host" if accel == "kvm" else "max",
            "-smp", str(inst.vcpus), "-m", str(inst.memory_mib), "-nodefaults", "-display", "none",
            "-monitor", "none", "-serial", f"file:{serial}",
            "-drive", f"file={disk},format=raw,if=none,id=d0,cache=unsafe",
            "-device", "virtio-blk-pci,drive=d0,bootindex=1",
            "-drive", f"file={seed},format=raw,if=none,id=cd0,readonly=on", "-device", "ide-cd,drive=cd0",
            "-netdev", f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22",
            "-device", f"{inst.nic_model},netdev=n0,mac={inst.mac}", "-device", "virtio-rng-pci"]
    pkey = sshproof.load_private_key(key)
    sshproof._quiet_paramiko()
    facts: dict[str, object] = {"accel": accel}
    with QemuProcess(args, work / "first-boot.qemu.log") as proc:
        t0 = time.monotonic()
        deadline = t0 + PROVISION_TIMEOUT
        conn = None
        while conn is None:
            if not proc.alive() or time.monotonic() > deadline:
                tail = serial.read_text(errors="replace")[-3000:] if serial.exists() else ""
                raise AssertionError(f"first boot: no SSH login (qemu alive {proc.alive()}):\n{tail}")
            try:
                conn = sshproof.SshSession(port, "root", pkey, None)
            except Exception:  # not up yet: refused, banner timeout, key not yet installed
                time.sleep(sshproof.RETRY_INTERVAL)
        facts["ssh_s"] = round(time.monotonic() - t0, 1)
        try:
            status, out = conn.run("cloud-init status --wait --long; cat /var/lib/cloud/data/instance-id",
                                   deadline - time.monotonic())
            facts["cloud_init_done_s"] = round(time.monotonic() - t0, 1)
            facts["cloud_init"] = out
            if status is None or inst.instance_id not in out:
                raise AssertionError(f"first boot: cloud-init did not provision {inst.instance_id}: {out}")
            status, keys = conn.run("cat /etc/ssh/ssh_host_*_key.pub", 60)
            if status != 0 or not sshproof.parse_public_keys(keys):
                raise AssertionError(f"first boot: no host keys ({status}): {keys}")
            (work / "host-keys.pub").write_text(keys)
            facts["host_key_presented"] = conn.host_key[0]
            status, _ = conn.run("sync; systemctl poweroff", 30)
        finally:
            conn.close()
        if proc.wait(SHUTDOWN_TIMEOUT) is None:
            raise AssertionError("first boot: the guest did not power off cleanly")
        facts["poweroff_s"] = round(time.monotonic() - t0, 1)
    kernel = next((ln for ln in serial.read_text(errors="replace").splitlines() if "Linux version" in ln), "")
    facts["kernel_line"] = kernel.strip()[:200]
    return facts


def provisioned_guest(inst: CloudInstance) -> Provisioned:
    """The base guest booted once "as the cloud did" (writable, NoCloud seed standing in for the metadata
    service), cached under its own key: base image, instance data, provisioning version."""
    need_tools(*SEED_TOOLS, "qemu-system-x86_64")
    base = base_guest()
    key = cache_key(base.dir.name, PROVISION_VERSION, repr(inst), CLOUD_USER_DATA)

    def build(tmp: Path) -> None:
        subprocess.run(["cp", "--sparse=always", str(base.disk), str(tmp / "disk.raw")], check=True,
                       timeout=BUILD_TIMEOUT)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"instance-key-{inst.instance_id}",
                        "-f", str(tmp / "id_ed25519")], check=True, capture_output=True, timeout=60)
        pub = (tmp / "id_ed25519.pub").read_text().strip()
        seed = make_seed(tmp / "cloud-seed.iso", inst, pub)
        facts = _cloud_boot(tmp, tmp / "disk.raw", seed, inst, tmp / "id_ed25519")
        (tmp / "first-boot.json").write_text(json.dumps(facts, indent=1) + "\n")

    d = cached_build(PREFIX + "prov-" + key, build)
    return Provisioned(d, d / "disk.raw", d / "id_ed25519", (d / "id_ed25519.pub").read_text().strip(),
                       d / "host-keys.pub", json.loads((d / "first-boot.json").read_text()))


if __name__ == "__main__":  # build the cache by hand: PYTHONPATH=tests .venv/bin/python tests/kvm/cloudguest.py
    g = base_guest()
    print(g, (g.dir / "build-seconds").read_text().strip(), "s")
