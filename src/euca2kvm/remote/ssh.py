# SPDX-License-Identifier: Apache-2.0
"""One SSH connection per source host (asyncssh), host key checked, nothing written remotely.

* The server's host key must be in the known_hosts file (``--ssh-known-hosts``, default
  ``~/.ssh/known_hosts``) under ``host`` or ``[host]:port``: an unknown key is refused (exit 2) with
  its fingerprint and how to add it, a different key too; nothing is authenticated or run.
* Keys come from ``--ssh-identity FILE`` (only that key), else the SSH agent and the default
  ``~/.ssh/id_*`` keys, as ``ssh`` does; no password is asked and no ``~/.ssh/config`` is read.
* Only read-only commands run remotely (:meth:`Connection.run`), with a timeout and a bound on what
  they print; files are read through one SFTP session on the same connection.

asyncssh, not paramiko: on this machine's sshd, a 64 MiB file read 1.5-2x faster through asyncssh
(its SFTP reads are pipelined and its packet loop is cheaper) and about as fast as ``ssh cat``
(bench/bench_ssh.py). Its event loop runs on one daemon thread; the movers' worker threads submit
reads to it and wait, so several reads are in flight on the one connection.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import shlex
import threading
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import asyncssh

from ..errors import IOFailure, ToolError, UsageError

T = TypeVar("T")

SCHEME = "ssh://"
DEFAULT_PORT = 22
DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
# TCP connect and SSH handshake: a reachable storage controller answers in well under a second.
CONNECT_TIMEOUT = 20.0
# A remote read-only command (ls, losetup, a SEEK_DATA walk of a sparse 1 TiB file) finishes in
# seconds; a hung NFS mount must not hang the tool.
COMMAND_TIMEOUT = 120.0
# What a remote command may print before it is cut off and refused: a hostile host cannot make
# the tool buffer unbounded output. A data-range listing of 1M extents is ~30 MB.
MAX_OUTPUT = 64 << 20
# Channel window: large enough that several 4 MiB blocks stream without waiting for window
# updates (asyncssh's 2 MiB default stalls a reader on a latent link).
WINDOW_SIZE = 16 << 20
# AEAD ciphers first (no separate MAC per packet: cheaper for a Python client), then asyncssh's
# defaults; OpenSSH 7.4 of CentOS 7 offers both.
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com",
                     "aes128-ctr", "aes256-ctr")
# A read (an SFTP block, a remote command) that makes no progress for this long fails (exit 5).
READ_TIMEOUT = 120.0
# Bytes of a remote command's stderr kept for its error message.
MAX_STDERR = 4096
# Reader channels (.stream) open at once on one connection: OpenSSH's MaxSessions defaults to 10,
# one is the SFTP session, one or two the probes and listings; files beyond these read over SFTP.
MAX_READERS = 6


@dataclass(frozen=True)
class Target:
    user: str | None
    host: str
    port: int
    path: str

    @property
    def hostport(self) -> str:
        return self.host if self.port == DEFAULT_PORT else f"[{self.host}]:{self.port}"

    def url(self, path: str | None = None) -> str:
        who = f"{self.user}@" if self.user else ""
        port = "" if self.port == DEFAULT_PORT else f":{self.port}"
        return f"{SCHEME}{who}{self.host}{port}{self.path if path is None else path}"


def is_url(source: str) -> bool:
    return source.startswith(SCHEME)


def parse_url(source: str) -> Target:
    """``ssh://[user@]host[:port]/path`` (an absolute path on the host); UsageError otherwise."""
    u = urlsplit(source)
    try:
        port = u.port or DEFAULT_PORT
    except ValueError as e:
        raise UsageError(f"{source}: bad port") from e
    path = unquote(u.path)
    if u.scheme != "ssh" or not u.hostname or not path.startswith("/") or u.query or u.fragment or u.password:
        raise UsageError(f"{source}: expected ssh://[user@]host[:port]/absolute/path")
    if "\0" in path or any(ord(c) < 32 for c in path):
        raise UsageError(f"{source}: control characters in the path")
    return Target(unquote(u.username) if u.username else None, u.hostname, port, os.path.normpath(path))


@dataclass
class Options:
    known_hosts: str = DEFAULT_KNOWN_HOSTS
    identity: str | None = None
    connect_timeout: float = CONNECT_TIMEOUT


# Set from the command line (cli.common); every connection of the process uses it.
OPTIONS = Options()


class _Loop:
    """The event loop every connection of the process runs on, in one daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="ssh-loop", daemon=True)
        self.thread.start()

    def call(self, aw: Awaitable[T], timeout: float) -> T:
        async def bounded() -> T:
            return await asyncio.wait_for(aw, timeout)

        fut = asyncio.run_coroutine_threadsafe(bounded(), self.loop)
        try:
            return fut.result()
        except (TimeoutError, concurrent.futures.TimeoutError) as e:
            raise TimeoutError(f"no answer within {timeout:.0f}s") from e


_LOOP: _Loop | None = None
_LOOP_LOCK = threading.Lock()


def loop() -> _Loop:
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None:
            _LOOP = _Loop()
        return _LOOP


class _Client(asyncssh.SSHClient):
    """Keeps the host key the server showed, so a refusal can name its fingerprint."""

    def __init__(self) -> None:
        self.seen: asyncssh.SSHKey | None = None

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        self.seen = key
        return False  # keys in known_hosts were accepted before this is asked


def _host_key_error(target: Target, key: asyncssh.SSHKey | None, known_hosts: str) -> UsageError:
    fp = f"{key.get_algorithm()} {key.get_fingerprint('sha256')}" if key is not None else "unknown key"
    listed: list[Any] = []
    with contextlib.suppress(OSError, ValueError):
        listed = list(asyncssh.read_known_hosts(known_hosts).match(target.host, "", target.port)[0])
    if listed:
        return UsageError(f"host key of {target.hostport} ({fp}) differs from the one in {known_hosts}: refused "
                          "(the host was reinstalled, or this is not the host)")
    return UsageError(f"host key of {target.hostport} ({fp}) is not in {known_hosts}; check the fingerprint with "
                      f"the host's administrator, then add it: ssh-keyscan -p {target.port} {shlex.quote(target.host)}"
                      f" >> {shlex.quote(known_hosts)}")


class Connection:
    """An authenticated SSH connection to one host: read-only commands and one SFTP session."""

    def __init__(self, target: Target, opts: Options) -> None:
        self.target = target
        self.name = target.url("")
        self.loop = loop()
        known = os.path.expanduser(opts.known_hosts)
        if not os.path.isfile(known):
            raise UsageError(f"known_hosts file {known} does not exist: give --ssh-known-hosts FILE")
        keys: dict[str, Any] = {}
        if opts.identity is not None:
            ident = os.path.expanduser(opts.identity)
            try:
                keys = {"client_keys": [asyncssh.read_private_key(ident)], "agent_path": None}
            except (OSError, asyncssh.KeyImportError) as e:
                raise UsageError(f"--ssh-identity {ident}: cannot load the key: {e}") from e
        client = _Client()

        async def open_conn() -> asyncssh.SSHClientConnection:
            conn, _ = await asyncssh.create_connection(
                lambda: client, target.host, target.port, username=target.user, known_hosts=known,
                config=None, encryption_algs=_ciphers(), connect_timeout=opts.connect_timeout,
                login_timeout=opts.connect_timeout, password=None, kbdint_auth=False, keepalive_interval=30,
                **keys)
            return conn

        try:
            self.conn = self.loop.call(open_conn(), opts.connect_timeout * 2)
        except asyncssh.HostKeyNotVerifiable as e:
            raise _host_key_error(target, client.seen, known) from e
        except asyncssh.PermissionDenied as e:
            raise UsageError(f"{self.name}: public key authentication failed; give --ssh-identity FILE or load "
                             "the key into the agent") from e
        except (OSError, TimeoutError, asyncssh.Error) as e:
            raise IOFailure(f"{self.name}: cannot connect: {_why(e)}") from e
        self._sftp: asyncssh.SFTPClient | None = None
        self._lock = threading.Lock()
        self.readers = threading.BoundedSemaphore(MAX_READERS)  # reader channels (.stream) open

    def call(self, coro: Awaitable[T], what: str, timeout: float = READ_TIMEOUT) -> T:
        """Run ``coro`` on the connection's loop; a timeout or a lost connection is IOFailure naming ``what``."""
        try:
            return self.loop.call(coro, timeout)
        except (OSError, TimeoutError, asyncssh.Error) as e:
            raise IOFailure(f"{self.name}: {what}: {_why(e)}") from e

    def run(self, command: str, *, timeout: float = COMMAND_TIMEOUT, limit: int = MAX_OUTPUT,
            ok: tuple[int, ...] = (0,)) -> tuple[int, bytes]:
        """Run ``command`` (a POSIX sh line, every variable part quoted) remotely; (exit status, stdout).

        Output beyond ``limit`` bytes, a timeout or a status outside ``ok`` is a ToolError naming the host.
        """

        async def go() -> tuple[int | None, bytes, bytes, bool]:
            proc = await self.conn.create_process(command, encoding=None, stdin=asyncssh.DEVNULL,
                                                  window=WINDOW_SIZE)
            out = bytearray()
            err = bytearray()
            over = False

            async def drain_stderr() -> None:  # read alongside stdout: a full stderr window stalls both
                while chunk := await proc.stderr.read(1 << 16):
                    err.extend(chunk[: max(0, MAX_STDERR - len(err))])

            drain = asyncio.ensure_future(drain_stderr())
            while True:
                chunk = await proc.stdout.read(1 << 20)
                if not chunk:
                    break
                out += chunk
                if len(out) > limit:
                    over = True
                    proc.close()
                    break
            if over:
                drain.cancel()
            else:
                await drain
            await proc.wait_closed()
            return proc.exit_status, bytes(out), bytes(err), over

        try:
            status, out, err, over = self.loop.call(go(), timeout)
        except TimeoutError as e:
            raise ToolError(f"{self.name}: remote command timed out after {timeout:.0f}s") from e
        except (OSError, asyncssh.Error) as e:
            raise IOFailure(f"{self.name}: remote command failed: {_why(e)}") from e
        if over:
            raise ToolError(f"{self.name}: remote command printed more than {limit} bytes; refused")
        if status is None or status not in ok:
            raise ToolError(f"{self.name}: remote command failed with status {status}: "
                            f"{err.decode('utf-8', 'replace').strip()[:300]!r}")
        return status, out

    def sftp(self) -> asyncssh.SFTPClient:
        with self._lock:
            if self._sftp is None:
                self._sftp = self.call(self.conn.start_sftp_client(), "cannot start SFTP")
            return self._sftp

    def close(self) -> None:
        async def go() -> None:
            if self._sftp is not None:
                self._sftp.exit()
            self.conn.close()
            await self.conn.wait_closed()

        with contextlib.suppress(OSError, TimeoutError, asyncssh.Error):
            self.loop.call(go(), 10)


def _why(e: BaseException) -> str:
    return str(e) or type(e).__name__


def _ciphers() -> list[str]:
    have = set(asyncssh.encryption.get_encryption_algs())
    return [c for c in PREFERRED_CIPHERS if c.encode() in have] or [a.decode() for a in have]


_POOL: dict[tuple[str | None, str, int], Connection] = {}
_POOL_LOCK = threading.Lock()


def connect(target: Target, opts: Options | None = None) -> Connection:
    """The process's one connection to ``target``'s user, host and port (made on first use)."""
    key = (target.user, target.host, target.port)
    with _POOL_LOCK:
        c = _POOL.get(key)
        if c is None:
            c = Connection(target, opts or OPTIONS)
            _POOL[key] = c
        return c


def close_all() -> None:
    with _POOL_LOCK:
        for c in _POOL.values():
            c.close()
        _POOL.clear()


def q(s: str) -> str:
    """A path quoted for the remote POSIX shell."""
    return shlex.quote(s)


# The host's interpreters tried in order (CentOS 7: python = 2.7, python3 = 3.6 when installed).
PYTHONS = ("python3", "python2", "python", "/usr/libexec/platform-python")


def python_command(snippet: str, args: list[str], fallback: str) -> str:
    """A remote command running ``snippet`` (Python 2.7 and 3 alike) with ``args`` under the first
    interpreter the host has, else the shell command ``fallback``; nothing is copied to the host."""
    argv = " ".join(q(a) for a in args)
    tries = "; ".join(f"command -v {p} >/dev/null 2>&1 && exec {p} -c {q(snippet)} {argv}" for p in PYTHONS)
    return f"{tries}; {fallback}"
