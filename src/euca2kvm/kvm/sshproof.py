# SPDX-License-Identifier: Apache-2.0
"""Usable-boot proof: boot a libvirt domain's disks under QEMU and log in over SSH with the instance's key.

:func:`ssh_proof` maps a parsed domain (:mod:`euca2kvm.kvm.domainxml`) to a ``qemu-system-x86_64`` command
line (:mod:`euca2kvm.kvm.domainqemu`: throwaway overlays, the seed read-only, the domain's buses, NIC
models and MACs, user-mode networking whose only opening is SSH forwarded to 127.0.0.1). The serial console
goes to a file; a thread records when each boot stage first appears in it. SSH is tried (paramiko) until
the key is accepted; the guest's host key is recorded (and compared with ``expect_host_keys``), then a fixed
read-only fact script (:mod:`euca2kvm.kvm.guestfacts`) runs, then the caller's command. QEMU is always
stopped; the whole run never outlives ``timeout`` plus a few seconds of clean-up.

Everything the guest sends back is bounded (:data:`OUTPUT_LIMIT`) and treated as text to display, never
as a path or markup.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from euca2kvm.errors import FormatError, ToolError, UsageError
from euca2kvm.kvm.boottest import STAGE_PATTERNS, read_serial
from euca2kvm.kvm.domainqemu import free_port, qemu_args
from euca2kvm.kvm.domainxml import DomainSpec, read_bounded
from euca2kvm.kvm.guestfacts import GuestFacts, fact_script, fingerprint, parse_public_keys
from euca2kvm.kvm.qemu import QemuProcess, accelerator
from euca2kvm.safefs import private_tmp

__all__ = ["GuestFacts", "SshProof", "SshSession", "free_port", "parse_public_keys", "ssh_proof"]

log = logging.getLogger(__name__)

# A full Debian boot under TCG reaches SSH in about a minute (55-115 s measured on a 2-core host); a loaded
# machine needs several times that. The boot test gives up after this.
DEFAULT_TIMEOUT = 600.0
DEFAULT_USER = "root"
RUNTIME_PREFIX = "euca2kvm-sshproof-"  # the private directory of the overlays, in the system temporary dir
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
# Longest the fact script's `cloud-init status --wait` may take before it is cut short (cloud-init finishes
# 25-30 s after SSH under TCG in the recipe's measurements).
CLOUD_INIT_WAIT_MAX = 300

# Evidence that the guest's network is up, seen on its console: systemd's online target, or cloud-init's
# "Net device info" table with an interface up and an IPv4 address.
NETWORK_PATTERN = re.compile(r"Reached target [^\n]*[Nn]etwork is Online|"
                             r"ci-info: \|\s+\S+\s+\|\s+True\s+\|\s+\d+\.\d+\.\d+\.\d+")

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
        return "\n".join(self.serial.strip().splitlines()[-lines:])

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
        self.text = read_serial(self.path)
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
    with private_tmp(RUNTIME_PREFIX) as private:  # overlays; a killed run's are removed by the next run
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
                status, out = conn.run(fact_script(wait), deadline - time.monotonic())
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
