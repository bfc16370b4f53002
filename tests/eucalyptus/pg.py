# SPDX-License-Identifier: Apache-2.0
"""A private, throw-away PostgreSQL server for tests (Debian's postgresql 15 binaries).

Data dir and unix socket live in a temporary directory owned by ``postgres``; the server listens
on 127.0.0.1 at a free port near :data:`BASE_PORT` with scram-sha-256 for TCP and trust for the
socket. When run as root every command runs as ``postgres`` through ``runuser`` (initdb refuses
root). :meth:`PgServer.stop` is always called by the fixture finalizer.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import random
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg

PG_BIN = Path("/usr/lib/postgresql/15/bin")
BASE_PORT = 55432  # well away from 5432 and from Eucalyptus's 8777
PORT_SPREAD = 2000  # random offset so parallel runs on one host do not collide
START_TIMEOUT = 30  # seconds for initdb / pg_ctl start|stop on a loaded 2-core machine
TOOL_TIMEOUT = 60
ROLE = "eucalyptus"
ROLE_PASSWORD = "s3cret-Pw.for.tests"  # checked never to appear in error messages


def available() -> str | None:
    """None when a server can be started here, else the reason it cannot."""
    for tool in ("initdb", "pg_ctl", "postgres"):
        if not (PG_BIN / tool).exists():
            return f"{PG_BIN / tool} not installed (apt-get install postgresql-15)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root but there is no 'postgres' user"
        if shutil.which("runuser") is None:
            return "runuser not found"
    return None


def _free_port() -> int:
    for _ in range(50):
        port = BASE_PORT + random.randrange(PORT_SPREAD)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free TCP port for the test PostgreSQL")


class PgServer:
    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="euca2kvm-pg-"))
        self.data = self.tmp / "data"
        self.sock = str(self.tmp)
        self.log = self.tmp / "server.log"
        self.port = _free_port()
        self.running = False
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            pw = pwd.getpwnam("postgres")
            os.chown(self.tmp, pw.pw_uid, pw.pw_gid)
        os.chmod(self.tmp, 0o700)

    def _run(self, *argv: str, timeout: int = TOOL_TIMEOUT) -> None:
        cmd = list(argv)
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if r.returncode != 0:
            log = self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""
            raise RuntimeError(f"{argv[0]} failed ({r.returncode}): {r.stderr.strip()}\n{log}")

    def start(self) -> PgServer:
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "-E", "UTF8",
                  "--locale=C", "--no-sync", "--auth-local=trust", "--auth-host=scram-sha-256",
                  timeout=START_TIMEOUT)
        opts = (f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=20 "
                "-c shared_buffers=16MB")
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", opts,
                  "-w", "-t", str(START_TIMEOUT), "start", timeout=START_TIMEOUT + 10)
        self.running = True
        with self.admin() as conn:
            conn.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{ROLE_PASSWORD}'")
        return self

    def stop(self) -> None:
        try:
            if self.running:
                self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w",
                          "-t", str(START_TIMEOUT), "stop", timeout=START_TIMEOUT + 10)
                self.running = False
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def admin(self, dbname: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        """Superuser connection over the unix socket, autocommit."""
        return psycopg.connect(host=self.sock, port=self.port, user="postgres", dbname=dbname,
                               autocommit=True, connect_timeout=10)

    def create_db(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}" OWNER {ROLE}')

    def run_sql(self, dbname: str, sql: str, schema: str | None = None) -> None:
        """Run a script as the role (optionally in a fresh schema it owns)."""
        with self.admin(dbname) as conn:
            conn.execute(f"SET ROLE {ROLE}")
            if schema is not None:
                conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
                conn.execute(f'SET search_path TO "{schema}"')
            conn.execute(sql.encode())

    def url(self, dbname: str | None, password: bool = True, host: str = "127.0.0.1") -> str:
        auth = f"{ROLE}:{ROLE_PASSWORD}" if password else ROLE
        db = f"/{dbname}" if dbname else "/"
        return f"postgresql://{auth}@{host}:{self.port}{db}"


SQL_DIR = Path(__file__).resolve().parent / "sql"


@contextlib.contextmanager
def shared_layout() -> Iterator[PgServer]:
    """A private server with the Eucalyptus 4.1+ layout (database eucalyptus_shared, schemas
    eucalyptus_cloud and eucalyptus_storage) loaded from sql/; skips (fails when CI=true) when no
    server can be started here. Stopped by its own pid when the block ends."""
    from _env import missing

    reason = available()
    if reason is not None:
        missing(reason)
    srv = PgServer().start()
    try:
        srv.create_db("eucalyptus_shared")
        srv.run_sql("eucalyptus_shared", (SQL_DIR / "cloud.sql").read_text(), schema="eucalyptus_cloud")
        srv.run_sql("eucalyptus_shared", (SQL_DIR / "storage.sql").read_text(), schema="eucalyptus_storage")
        yield srv
    finally:
        srv.stop()
