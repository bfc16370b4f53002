# SPDX-License-Identifier: Apache-2.0
"""A real OpenSSH server on 127.0.0.1 for tests, from a temporary directory of its own.

``start(tmpdir)`` writes a config, a host key and a client key into ``tmpdir``, starts
``/usr/sbin/sshd -D -f CONF -e`` on a free port and waits until it answers; nothing in /etc/ssh or
~/.ssh is read or touched (the client side gets its own ``known_hosts``). ``stop()`` ends it by its
pid. The login user is the one running the tests (sshd needs root to switch users; as root the
server logs in root with the test key only).
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from _env import missing

SSHD = "/usr/sbin/sshd"
# sshd opens its port within milliseconds; a loaded 2-core CI box may need a few seconds.
START_TIMEOUT = 15.0
# The privilege separation directory sshd insists on (the package creates it at boot only).
PRIVSEP_DIR = "/run/sshd"


@dataclass
class Sshd:
    host: str
    port: int
    user: str
    identity: Path  # private key the server accepts
    known_hosts: Path  # holds the server's host key for [host]:port
    config: Path
    proc: subprocess.Popen[bytes]
    log: Path
    bin_dir: Path  # first on the PATH of the server's sessions: tests put fake host tools there

    @property
    def pid(self) -> int:
        return self.proc.pid

    def url(self, path: str) -> str:
        return f"ssh://{self.user}@{self.host}:{self.port}{path}"

    def ssh_argv(self) -> list[str]:
        """The OpenSSH client's options to reach this server with the test key only."""
        return ["ssh", "-F", "/dev/null", "-i", str(self.identity), "-p", str(self.port),
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", f"{self.user}@{self.host}"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _keygen(path: Path, kind: str = "ed25519") -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "euca2kvm-test", "-f", str(path)],
                   check=True, timeout=30, capture_output=True)


def start(tmpdir: Path) -> Sshd:
    """A running sshd on 127.0.0.1:<free port> accepting ``identity`` for the current user."""
    if not os.path.exists(SSHD) or shutil.which("ssh-keygen") is None:
        missing("openssh-server not installed")
    if os.geteuid() != 0:
        missing("sshd needs root to log users in")
    tmpdir.mkdir(parents=True, exist_ok=True)
    os.makedirs(PRIVSEP_DIR, mode=0o755, exist_ok=True)
    host_key = tmpdir / "ssh_host_ed25519_key"
    identity = tmpdir / "id_ed25519"
    _keygen(host_key)
    _keygen(identity)
    auth = tmpdir / "authorized_keys"
    shutil.copy(f"{identity}.pub", auth)
    os.chmod(auth, 0o600)
    port = _free_port()
    bin_dir = tmpdir / "bin"
    bin_dir.mkdir(exist_ok=True)
    conf = tmpdir / "sshd_config"
    log = tmpdir / "sshd.log"
    conf.write_text("\n".join([
        "ListenAddress 127.0.0.1", f"Port {port}", f"HostKey {host_key}", f"AuthorizedKeysFile {auth}",
        f"PidFile {tmpdir / 'sshd.pid'}", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "PubkeyAuthentication yes", "PermitRootLogin prohibit-password", "StrictModes no", "UsePAM no",
        "Subsystem sftp internal-sftp", "LogLevel VERBOSE", "MaxSessions 64", "MaxStartups 64",
        "AcceptEnv none", f"SetEnv PATH={bin_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "",
    ]))
    host_pub = (tmpdir / "ssh_host_ed25519_key.pub").read_text().split()
    known = tmpdir / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    with open(log, "wb") as lf:
        proc = subprocess.Popen([SSHD, "-D", "-f", str(conf), "-e"], stdout=lf, stderr=lf,
                                stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(4).startswith(b"SSH-"):
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            os.kill(proc.pid, signal.SIGKILL)
            raise RuntimeError(f"sshd did not answer on port {port}: {log.read_text()[-2000:]}")
        time.sleep(0.05)
    return Sshd("127.0.0.1", port, getpass.getuser(), identity, known, conf, proc, log, bin_dir)


def cli(server: Sshd | None, *args: str, check: int | None = 0, known: Path | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    opts = [] if server is None else ["--ssh-known-hosts", str(known or server.known_hosts),
                                      "--ssh-identity", str(server.identity)]
    p = subprocess.run([sys.executable, "-m", "euca2kvm", *args, *opts], capture_output=True, text=True,
                       timeout=timeout)
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    if check is not None:
        assert p.returncode == check, (p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    return p
