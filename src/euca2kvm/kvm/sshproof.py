# SPDX-License-Identifier: Apache-2.0
"""Usable-boot proof: boot a libvirt domain's disks under QEMU and log in over SSH with the instance's key.

:func:`ssh_proof` maps a parsed domain (:mod:`euca2kvm.kvm.domainxml`) to a ``qemu-system-x86_64`` command
line: every writable disk behind a throwaway qcow2 overlay in a private temporary directory (the image is
the overlay's read-only backing node, named in the ``-blockdev`` JSON, so no file name is ever parsed by
QEMU and no image is written), CD-ROMs (the NoCloud seed) and ``<readonly/>`` disks read-only, the disk
buses, NIC models and MACs of the XML, its vCPUs and memory, and user-mode networking with
``restrict=on`` whose only opening is ``hostfwd=tcp:127.0.0.1:PORT-:22``. The serial console goes to a
file; a thread records when each boot stage first appears in it. SSH is tried (paramiko) until the key is
accepted; the guest's host key is recorded (and compared with ``expect_host_keys``), then a fixed
read-only fact-gathering script runs (hostname, interface MACs, ``cloud-init status --wait --long``,
instance id, datasource, host keys), then the caller's command. QEMU is always stopped; the whole run never
outlives ``timeout`` plus a few seconds of clean-up.

Everything the guest sends back is bounded (:data:`OUTPUT_LIMIT`) and treated as text to display, never
as a path or markup.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import socket
import string
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from euca2kvm.errors import FormatError, ToolError, UsageError
from euca2kvm.export import qemu_img
from euca2kvm.kvm.boottest import STAGE_PATTERNS, _read_serial
from euca2kvm.kvm.domainxml import DiskSpec, DomainSpec
from euca2kvm.kvm.qemu import QemuProcess, accelerator

log = logging.getLogger(__name__)

# A full Debian boot under TCG reaches SSH in about a minute (55-115 s measured on a 2-core host); a loaded
# machine needs several times that. The boot test gives up after this.
DEFAULT_TIMEOUT = 600.0
DEFAULT_USER = "root"
SSH_PORT = 22
# TCP connect to QEMU's hostfwd listener is local: 3 s means QEMU is stuck.
CONNECT_TIMEOUT = 3.0
# Banner and key exchange under TCG: sshd starting, RSA host key generation can take 10-30 s at first boot,
# but the banner itself comes within a second once sshd listens.
HANDSHAKE_TIMEOUT = 15.0
# Pause between SSH attempts while the guest boots (each attempt costs the guest a fork of sshd).
RETRY_INTERVAL = 2.0
# Polling period while waiting for an exit status that follows the end of a command's output.
POLL = 0.05
# Serial log polling period: stage timings are reported to this precision.
SERIAL_POLL = 0.25
# Bytes of a command's stdout/stderr kept (the fact script prints about 2 KiB).
OUTPUT_LIMIT = 64 << 10
# Lines of the console log shown when the guest does not get there.
CONSOLE_TAIL_LINES = 40
# QEMU binds the forwarded port at start-up: a port taken in between makes it exit at once; try again.
PORT_ATTEMPTS = 3
# QEMU exits within a second when it cannot set up the command line (bad port, bad device).
STARTUP_CHECK = 1.0
# A key file is a few KiB at most; refuse anything larger before handing it to paramiko.
MAX_KEY_BYTES = 64 << 10
# Hosts keys in an --expect-host-key file; a few per guest (rsa, ecdsa, ed25519...).
MAX_EXPECTED_KEYS = 64
# Markers between the fact script's sections.
SECTION = "@@euca2kvm:"
# Longest the fact script's `cloud-init status --wait` may take before it is cut short (cloud-init finishes
# 25-30 s after SSH under TCG in the recipe's measurements).
CLOUD_INIT_WAIT_MAX = 300

# Evidence that the guest's network is up, seen on its console: systemd's online target, or cloud-init's
# "Net device info" table with an interface up and an IPv4 address.
NETWORK_PATTERN = re.compile(r"Reached target [^\n]*[Nn]etwork is Online|"
                             r"ci-info: \|\s+\S+\s+\|\s+True\s+\|\s+\d+\.\d+\.\d+\.\d+")

DEVICE_BY_BUS = {"virtio": "virtio-blk-pci", "ide": "ide-hd", "sata": "ide-hd", "scsi": "scsi-hd"}
CDROM_BY_BUS = {"ide": "ide-cd", "sata": "ide-cd", "scsi": "scsi-cd"}
NIC_DEVICE = {"virtio": "virtio-net-pci", "e1000": "e1000", "e1000e": "e1000e", "rtl8139": "rtl8139"}
# The pc machine's IDE has two channels of two units; QEMU's AHCI controller six ports.
IDE_SLOTS = 4
SATA_SLOTS = 6
SCSI_SLOTS = 16
# QEMU refuses an IDE/SATA drive serial longer than ATA's 20-character field.
ATA_SERIAL_MAX = 20


def _fact_script(wait: int) -> str:
    return f"""
echo {SECTION}hostname; hostname
echo {SECTION}interfaces
for d in /sys/class/net/*; do n=${{d##*/}}; [ "$n" = lo ] && continue
  echo "$n $(cat "$d/address" 2>/dev/null) $(cat "$d/operstate" 2>/dev/null)"; done
echo {SECTION}cloud-init
if command -v cloud-init >/dev/null; then timeout {wait} cloud-init status --wait --long 2>&1; else echo absent; fi
echo {SECTION}instance-id; cat /var/lib/cloud/data/instance-id 2>/dev/null
echo {SECTION}result; head -c 4096 /run/cloud-init/result.json 2>/dev/null
echo {SECTION}host-keys; cat /etc/ssh/ssh_host_*_key.pub 2>/dev/null
echo {SECTION}end
"""


# --- text from the guest -------------------------------------------------------------------------------

_CTRL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` with control characters (escape sequences included) shown as ``\\xNN``; newlines and tabs kept."""
    return _CTRL.sub(lambda m: f"\\x{ord(m.group(0)):02x}", text)


def fingerprint(key_b64: str) -> str:
    """OpenSSH's ``SHA256:`` fingerprint of a public key blob given in base64."""
    blob = base64.b64decode(key_b64, validate=True)
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


_B64 = set(string.ascii_letters + string.digits + "+/=")


def parse_public_keys(text: str) -> list[tuple[str, str]]:
    """(type, base64) of each public key line (``.pub`` files or known_hosts lines), others ignored."""
    keys = []
    for line in text.splitlines():
        words = line.split()
        for i, w in enumerate(words[:-1]):
            b64 = words[i + 1]
            if (w.startswith(("ssh-", "ecdsa-")) and len(b64) > 16 and set(b64) <= _B64):
                try:
                    base64.b64decode(b64, validate=True)
                except ValueError:
                    continue
                keys.append((w, b64))
                break
    return keys


@dataclass
class GuestFacts:
    """What the fact script found in the guest."""

    hostname: str | None = None
    interfaces: list[dict[str, str]] = field(default_factory=list)
    cloud_init_status: str | None = None
    cloud_init_detail: str | None = None
    cloud_init_long: str = ""
    instance_id: str | None = None
    datasource: str | None = None
    host_keys: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def parse(cls, output: str) -> GuestFacts:
        sections: dict[str, list[str]] = {}
        current: list[str] | None = None
        for line in output.splitlines():
            if line.startswith(SECTION):
                current = sections.setdefault(line[len(SECTION):].strip(), [])
            elif current is not None:
                current.append(line)
        f = cls()
        f.hostname = next((ln.strip() for ln in sections.get("hostname", []) if ln.strip()), None)
        for ln in sections.get("interfaces", []):
            words = ln.split()
            if len(words) >= 2:
                f.interfaces.append({"name": words[0], "mac": words[1].lower(),
                                     "state": words[2] if len(words) > 2 else ""})
        ci = sections.get("cloud-init", [])
        f.cloud_init_long = "\n".join(ci).strip()
        for i, ln in enumerate(ci):
            key, _, value = ln.partition(":")
            if key.strip() == "status" and f.cloud_init_status is None:
                f.cloud_init_status = value.strip()
            elif key.strip() == "detail" and f.cloud_init_detail is None:
                # cloud-init 22.4 prints the detail on the line after "detail:"
                f.cloud_init_detail = value.strip() or (ci[i + 1].strip() if i + 1 < len(ci) else "") or None
        if f.cloud_init_status is None and ci and ci[0].strip() == "absent":
            f.cloud_init_status = "not installed"
        f.instance_id = next((ln.strip() for ln in sections.get("instance-id", []) if ln.strip()), None)
        try:
            result = json.loads("\n".join(sections.get("result", [])) or "null")
        except ValueError:
            result = None
        ds = None
        if isinstance(result, dict) and isinstance(result.get("v1"), dict):
            ds = result["v1"].get("datasource")
        if not isinstance(ds, str):
            ds = f.cloud_init_detail or ""
        m = re.search(r"DataSource(\w+)", ds)
        f.datasource = m.group(1) if m else None
        f.host_keys = [{"type": t, "fingerprint": fingerprint(b)}
                       for t, b in parse_public_keys("\n".join(sections.get("host-keys", [])))]
        return f

    def as_json(self) -> dict[str, Any]:
        return {"hostname": self.hostname, "interfaces": self.interfaces, "cloud_init_status": self.cloud_init_status,
                "cloud_init_detail": self.cloud_init_detail, "instance_id": self.instance_id,
                "datasource": self.datasource, "host_keys": self.host_keys}


@dataclass
class SshProof:
    """The outcome of :func:`ssh_proof`. Times are seconds since QEMU started."""

    domain: Path
    accel: str
    user: str
    ok: bool = False
    reason: str = ""
    elapsed: float = 0.0
    milestones: dict[str, float] = field(default_factory=dict)
    host_key: dict[str, str] | None = None
    host_key_expected: bool | None = None
    facts: GuestFacts | None = None
    command: str | None = None
    command_status: int | None = None
    command_output: str = ""
    last_ssh_error: str | None = None
    serial: str = ""
    qemu_args: list[str] = field(default_factory=list)

    @property
    def kernel_to_ssh(self) -> float | None:
        k, s = self.milestones.get("kernel"), self.milestones.get("ssh")
        return None if k is None or s is None else round(s - k, 2)

    def console_tail(self, lines: int = CONSOLE_TAIL_LINES) -> str:
        return printable("\n".join(self.serial.strip().splitlines()[-lines:]))

    def as_json(self) -> dict[str, Any]:
        return {
            "domain": str(self.domain), "accel": self.accel, "user": self.user, "ok": self.ok, "reason": self.reason,
            "elapsed": round(self.elapsed, 2), "milestones": {k: round(v, 2) for k, v in self.milestones.items()},
            "kernel_to_ssh": self.kernel_to_ssh, "host_key": self.host_key,
            "host_key_expected": self.host_key_expected,
            "guest": self.facts.as_json() if self.facts else None,
            "command": self.command, "command_status": self.command_status, "command_output": self.command_output,
            "last_ssh_error": self.last_ssh_error, "console_tail": None if self.ok else self.console_tail(),
        }


# --- QEMU command line ---------------------------------------------------------------------------------

def _slot(target: str) -> int:
    """0 for hda/sda/vda, 1 for ...b, 26 for ...aa."""
    letters = re.sub(r"^(xvd|vd|sd|hd)", "", target)
    n = 0
    for ch in letters:
        n = n * 26 + (ord(ch) - ord("a") + 1)
    return n - 1


def _check_image(disk: DiskSpec) -> int:
    """Validate a disk file; its virtual size. Symlinks and backing chains are refused."""
    try:
        st = os.lstat(disk.path)
    except OSError as e:
        raise UsageError(f"disk {disk.target}: {disk.path}: {e.strerror}") from e
    if not (st.st_mode & 0o170000) == 0o100000:
        raise UsageError(f"disk {disk.target}: {disk.path} is not a regular file (symlinks are not followed)")
    info = qemu_img.info(str(disk.path))
    found = info.get("format")
    if found != disk.format:
        raise FormatError(f"the domain declares {disk.format} for {disk.target} but the file is {found}",
                          str(disk.path))
    if info.get("backing-filename") or info.get("full-backing-filename"):
        raise FormatError("images with a backing file are not booted (the chain could name any host file)",
                          str(disk.path))
    size = info.get("virtual-size")
    if not isinstance(size, int) or size <= 0:
        raise FormatError(f"qemu-img reports no virtual size ({size!r})", str(disk.path))
    return size


def _image_node(disk: DiskSpec) -> dict[str, Any]:
    node: dict[str, Any] = {"driver": disk.format, "read-only": True,
                            "file": {"driver": "file", "filename": str(disk.path), "read-only": True}}
    if disk.format == "qcow2":
        node["backing"] = None  # never follow a backing file named inside the image
    return node


def qemu_args(spec: DomainSpec, accel: str, workdir: Path, serial: Path, port: int) -> list[str]:
    """The QEMU arguments for ``spec``; creates the overlays in ``workdir``."""
    if not spec.nics:
        raise UsageError(f"{spec.source}: the domain has no network interface, so nothing can log in over SSH")
    args = ["-accel", accel, "-machine", "pc", "-cpu", "host" if accel == "kvm" else "max",
            "-smp", str(spec.vcpus), "-m", str(spec.memory_mib), "-nodefaults", "-display", "none",
            "-monitor", "none", "-serial", f"file:{serial}"]
    if spec.kernel is not None:
        for what, p in (("kernel", spec.kernel), ("initrd", spec.initrd)):
            if p is not None and not p.is_file():
                raise UsageError(f"{what} {p} is not a file")
        args += ["-kernel", str(spec.kernel)]
        if spec.initrd is not None:
            args += ["-initrd", str(spec.initrd)]
        if spec.cmdline is not None:
            args += ["-append", spec.cmdline]
    controllers: set[str] = set()
    has_order = any(d.boot_order is not None for d in spec.disks)
    first_disk = next(d for d in spec.disks if d.device == "disk")
    for i, disk in enumerate(spec.disks):
        node = f"d{i}"
        size = _check_image(disk)
        if disk.readonly:
            blockdev = {**_image_node(disk), "node-name": node}
        else:
            overlay = workdir / f"overlay{i}.qcow2"
            qemu_img.create(str(overlay), "qcow2", size)
            blockdev = {"driver": "qcow2", "node-name": node,
                        "file": {"driver": "file", "filename": str(overlay)}, "backing": _image_node(disk)}
        args += ["-blockdev", json.dumps(blockdev)]
        slot = _slot(disk.target)
        table = CDROM_BY_BUS if disk.device == "cdrom" else DEVICE_BY_BUS
        dev = f"{table[disk.bus]},drive={node}"
        if disk.bus == "ide":
            if slot >= IDE_SLOTS:
                raise FormatError(f"IDE disk {disk.target}: the pc machine has {IDE_SLOTS} IDE slots",
                                  str(spec.source))
            dev += f",bus=ide.{slot // 2},unit={slot % 2}"
        elif disk.bus == "sata":
            if slot >= SATA_SLOTS:
                raise FormatError(f"SATA disk {disk.target}: one AHCI controller has {SATA_SLOTS} ports",
                                  str(spec.source))
            if "ahci" not in controllers:
                args += ["-device", "ahci,id=ahci0"]
                controllers.add("ahci")
            dev += f",bus=ahci0.{slot}"
        elif disk.bus == "scsi":
            if slot >= SCSI_SLOTS:
                raise FormatError(f"SCSI disk {disk.target}: at most {SCSI_SLOTS} targets", str(spec.source))
            if "scsi" not in controllers:
                args += ["-device", "virtio-scsi-pci,id=scsi0"]
                controllers.add("scsi")
            dev += f",bus=scsi0.0,channel=0,scsi-id={slot},lun=0"
        if disk.serial and (disk.bus in ("virtio", "scsi") or len(disk.serial) <= ATA_SERIAL_MAX):
            dev += f",serial={disk.serial}"
        if has_order and disk.boot_order is not None:
            dev += f",bootindex={disk.boot_order}"
        elif not has_order and disk is first_disk:
            dev += ",bootindex=1"
        args += ["-device", dev]
    for i, nic in enumerate(spec.nics):
        netdev = f"user,id=n{i},restrict=on"
        if i == 0:
            netdev += f",hostfwd=tcp:127.0.0.1:{port}-:{SSH_PORT}"
        args += ["-netdev", netdev, "-device", f"{NIC_DEVICE[nic.model]},netdev=n{i}"
                 + (f",mac={nic.mac}" if nic.mac else "")]
    if spec.rng:
        args += ["-device", "virtio-rng-pci"]
    return args


def free_port() -> int:
    """A TCP port on 127.0.0.1 the kernel just handed out as free (QEMU binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --- SSH -----------------------------------------------------------------------------------------------

def load_private_key(path: Path) -> Any:
    """The paramiko key in ``path`` (ed25519, ECDSA or RSA, OpenSSH or PEM format, no passphrase)."""
    import paramiko

    try:
        st = os.stat(path)
    except OSError as e:
        raise UsageError(f"SSH key {path}: {e.strerror}") from e
    if not (st.st_mode & 0o170000) == 0o100000 or st.st_size > MAX_KEY_BYTES:
        raise UsageError(f"SSH key {path} is not a regular file of at most {MAX_KEY_BYTES} bytes")
    errors = []
    for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return cls.from_private_key_file(str(path))
        except paramiko.PasswordRequiredException as e:
            raise UsageError(f"SSH key {path} is encrypted; give an unencrypted key") from e
        except (paramiko.SSHException, ValueError, OSError) as e:
            errors.append(f"{cls.__name__}: {e}")
    raise UsageError(f"SSH key {path} is not an ed25519, ECDSA or RSA private key")


def read_expected_host_keys(path: Path) -> list[tuple[str, str]]:
    from euca2kvm.kvm.domainxml import read_bounded

    keys = parse_public_keys(read_bounded(path, MAX_KEY_BYTES * 4).decode("utf-8", "replace"))
    if not keys:
        raise FormatError("no public key lines (TYPE BASE64 [comment])", str(path))
    return keys[:MAX_EXPECTED_KEYS]


# Host key algorithms paramiko may negotiate for each key type of an expected-keys file.
HOSTKEY_ALGORITHMS = {
    "ssh-ed25519": ["ssh-ed25519"],
    "ecdsa-sha2-nistp256": ["ecdsa-sha2-nistp256"], "ecdsa-sha2-nistp384": ["ecdsa-sha2-nistp384"],
    "ecdsa-sha2-nistp521": ["ecdsa-sha2-nistp521"], "ssh-rsa": ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"],
}


class SshSession:
    """One authenticated SSH connection to the guest."""

    def __init__(self, port: int, user: str, pkey: Any, key_types: list[str] | None,
                 deadline: float | None = None) -> None:
        import paramiko

        self.transport: Any = None
        # QEMU's hostfwd accepts at once and then waits for the guest: never wait past the caller's deadline
        limit = HANDSHAKE_TIMEOUT if deadline is None else max(0.5, min(HANDSHAKE_TIMEOUT, deadline - time.monotonic()))
        sock = socket.create_connection(("127.0.0.1", port), timeout=min(CONNECT_TIMEOUT, limit))
        try:
            t = paramiko.Transport(sock)
            t.banner_timeout = limit
            t.handshake_timeout = limit
            t.auth_timeout = limit
            if key_types:
                opts = t.get_security_options()
                wanted = [a for a in key_types if a in opts.key_types]
                if wanted:
                    opts.key_types = wanted
            self.transport = t
            t.start_client(timeout=limit)
            key = t.get_remote_server_key()
            self.host_key = (key.get_name(), key.get_base64())
            t.auth_publickey(user, pkey)
        except BaseException:
            self.close()
            sock.close()
            raise

    def run(self, command: str, timeout: float) -> tuple[int | None, str]:
        """(exit status or None on timeout, stdout+stderr bounded to OUTPUT_LIMIT)."""
        chan = self.transport.open_session(timeout=HANDSHAKE_TIMEOUT)
        try:
            chan.set_combine_stderr(True)
            chan.exec_command(command)
            deadline = time.monotonic() + timeout
            out = bytearray()
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None, out.decode("utf-8", "replace")
                chan.settimeout(min(remaining, 1.0))
                try:
                    chunk = chan.recv(65536)
                except TimeoutError:
                    continue
                if not chunk:
                    break
                if len(out) < OUTPUT_LIMIT:
                    out += chunk[: OUTPUT_LIMIT - len(out)]
            # the exit status follows the end of output at once; wait for it within the same deadline
            while not chan.exit_status_ready():
                if time.monotonic() >= deadline:
                    return None, out.decode("utf-8", "replace")
                time.sleep(POLL)
            return chan.recv_exit_status(), out.decode("utf-8", "replace")
        finally:
            chan.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None


class _SerialWatcher(threading.Thread):
    """Records the first time each stage's evidence appears in the serial log."""

    def __init__(self, path: Path, start: float, milestones: dict[str, float]) -> None:
        super().__init__(name="serial-watch", daemon=True)
        self.path, self.t0, self.milestones = path, start, milestones
        self.stopping = threading.Event()
        self.text = ""

    def scan(self) -> None:
        self.text = _read_serial(self.path)
        now = round(time.monotonic() - self.t0, 2)
        for stage, pattern in STAGE_PATTERNS.items():
            name = stage.name.lower()
            if name not in self.milestones and pattern.search(self.text):
                self.milestones[name] = now
        if "network" not in self.milestones and NETWORK_PATTERN.search(self.text):
            self.milestones["network"] = now

    def run(self) -> None:
        while not self.stopping.wait(SERIAL_POLL):
            try:
                self.scan()
            except ToolError as e:
                log.debug("serial log: %s", e)


def _quiet_paramiko() -> None:
    # paramiko logs every refused attempt at ERROR with a traceback; while the guest boots that is expected.
    if not log.isEnabledFor(logging.DEBUG):
        logging.getLogger("paramiko").setLevel(logging.CRITICAL)


def ssh_proof(spec: DomainSpec, key_path: Path, *, user: str = DEFAULT_USER, timeout: float = DEFAULT_TIMEOUT,
              command: str | None = None, expect_host_keys: list[tuple[str, str]] | None = None,
              workdir: Path | None = None, accel: str | None = None) -> SshProof:
    """Boot ``spec`` and prove an SSH login; see the module docstring. Serial log: ``workdir/serial.log``."""
    if not timeout > 0:
        raise UsageError(f"timeout must be positive, not {timeout}")
    if not re.fullmatch(r"[a-z_][a-z0-9_.-]{0,31}", user):
        raise UsageError(f"invalid SSH user name {user!r}")
    try:
        import paramiko
    except ImportError as e:
        raise ToolError(f"the SSH proof needs the Python package paramiko: {e}") from e

    _quiet_paramiko()
    pkey = load_private_key(key_path)
    chosen = accel or accelerator()
    key_types = None
    if expect_host_keys:
        key_types = [a for t, _ in expect_host_keys for a in HOSTKEY_ALGORITHMS.get(t, [])]
    with tempfile.TemporaryDirectory(prefix="euca2kvm-sshproof-") as tmp:
        private = Path(tmp)
        logdir = Path(workdir).absolute() if workdir else private
        logdir.mkdir(parents=True, exist_ok=True)
        serial = logdir / "serial.log"
        result = SshProof(domain=spec.source, accel=chosen, user=user, command=command)
        for attempt in range(PORT_ATTEMPTS):
            port = free_port()
            args = qemu_args(spec, chosen, private, serial, port)
            result.qemu_args = args
            serial.unlink(missing_ok=True)
            with QemuProcess(args, logdir / "qemu.log", cwd=private) as proc:
                start = time.monotonic()
                if proc.wait(STARTUP_CHECK) is not None:
                    tail = proc.output_tail()
                    if ("hostfwd" in tail or "forwarding" in tail) and attempt + 1 < PORT_ATTEMPTS:
                        log.info("port %d was taken, trying another", port)
                        continue
                    raise ToolError(f"QEMU exited at start (status {proc.returncode}): {tail.strip()}")
                watcher = _SerialWatcher(serial, start, result.milestones)
                watcher.start()
                try:
                    _drive(result, proc, port, pkey, paramiko, key_types, expect_host_keys, start + timeout,
                           start)
                finally:
                    watcher.stopping.set()
                    watcher.join()
                    watcher.scan()
                    result.serial = watcher.text
                    result.elapsed = time.monotonic() - start
            break
    log.info("ssh proof %s: %s in %.1f s", spec.name, result.reason, result.elapsed)
    return result


def _drive(result: SshProof, proc: QemuProcess, port: int, pkey: Any, paramiko: Any, key_types: list[str] | None,
           expected: list[tuple[str, str]] | None, deadline: float, start: float) -> None:
    """Wait for an SSH login, then gather facts and run the command, all before ``deadline``.

    A connection lost after the login (cloud-init restarts sshd at first boot) is opened again."""
    result.reason = "timeout"
    while time.monotonic() < deadline:
        if not proc.alive():
            result.reason = f"QEMU exited with status {proc.returncode}"
            return
        conn: SshSession | None = None
        try:
            conn = SshSession(port, result.user, pkey, key_types, deadline)
            result.milestones.setdefault("ssh", round(time.monotonic() - start, 2))
            if result.host_key is None:
                ktype, b64 = conn.host_key
                result.host_key = {"type": ktype, "fingerprint": fingerprint(b64), "key": b64}
                if expected is not None:
                    result.host_key_expected = (ktype, b64) in expected
            if result.facts is None:
                wait = int(max(1, min(CLOUD_INIT_WAIT_MAX, deadline - time.monotonic() - 5)))
                status, out = conn.run(_fact_script(wait), deadline - time.monotonic())
                if status is None:
                    result.reason = "timeout while gathering guest facts"
                    return
                result.facts = GuestFacts.parse(out)
                result.milestones["cloud_init_done"] = round(time.monotonic() - start, 2)
            if result.command is not None:
                status, out = conn.run(result.command, deadline - time.monotonic())
                result.command_status, result.command_output = status, out
                if status is None:
                    result.reason = "timeout while running the command"
                    return
            _conclude(result)
            return
        except paramiko.AuthenticationException as e:
            result.last_ssh_error = f"key refused: {e}"[:200]
        except (OSError, EOFError, paramiko.SSHException) as e:
            result.last_ssh_error = f"{type(e).__name__}: {e}"[:200]
        finally:
            if conn is not None:
                conn.close()
        time.sleep(max(0.0, min(RETRY_INTERVAL, deadline - time.monotonic())))


def _conclude(result: SshProof) -> None:
    if result.host_key_expected is False:
        result.reason = "logged in, but the host key is not the expected one"
    elif result.command_status not in (None, 0):
        result.reason = f"logged in, but the command exited with status {result.command_status}"
    else:
        result.ok = True
        result.reason = "logged in"
