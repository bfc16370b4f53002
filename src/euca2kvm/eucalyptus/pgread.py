# SPDX-License-Identifier: Apache-2.0
"""Read-only PostgreSQL sessions on a CLC's database and table reads that tolerate a release's gaps.

:func:`session` runs one ``REPEATABLE READ, READ ONLY`` transaction per database under a statement
and a lock timeout; :class:`Tables` looks columns up in ``information_schema`` first, so a column a
given release lacks reads as NULL instead of failing the whole inventory, and bounds every table's
rows. psycopg is imported only here, and only when a database is read.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ..errors import FormatError, ToolError, UsageError

DEFAULT_PORT = 8777  # the CLC's PostgreSQL listens here, not on 5432
CONNECT_TIMEOUT = 10  # seconds: an unreachable CLC fails fast instead of hanging the CLI
STATEMENT_TIMEOUT_MS = 60_000  # one query on a big cloud's table takes well under a second
LOCK_TIMEOUT_MS = 5_000  # never queue behind a running CLC's DDL for long
MAX_ROWS = 500_000  # per table; far beyond any real cloud, bounds memory on hostile input
_DB_MISSING = "3D000"  # SQLSTATE invalid_catalog_name


def psycopg_module() -> Any:
    try:
        import psycopg
    except ImportError as e:  # pragma: no cover - depends on the installation
        raise ToolError("reading the database needs psycopg 3: pip install 'psycopg[binary]'") from e
    return psycopg


@dataclass(frozen=True)
class Params:
    kwargs: dict[str, Any]
    host: str
    port: int
    user: str
    dbname: str | None
    password: str | None

    def where(self, dbname: str) -> str:
        return f"{self.user}@{self.host}:{self.port}/{dbname}"

    def scrub(self, message: str) -> str:
        if self.password:
            message = message.replace(self.password, "***")
        return message.strip()


def parse_url(url: str) -> Params:
    psycopg = psycopg_module()
    try:
        kw: dict[str, Any] = dict(psycopg.conninfo.conninfo_to_dict(url))
    except psycopg.Error as e:
        raise UsageError(
            "malformed database URL (expected postgresql://USER[:PASSWORD]@HOST[:PORT][/DB])"
        ) from e
    kw["port"] = str(kw.get("port") or os.environ.get("PGPORT") or DEFAULT_PORT)
    try:
        port = int(str(kw["port"]))
    except ValueError as e:
        raise UsageError(f"database URL: bad port {kw['port']!r}") from e
    kw.setdefault("connect_timeout", str(CONNECT_TIMEOUT))
    kw.setdefault("application_name", "euca2kvm")
    dbname = kw.pop("dbname", None) or None
    return Params(kwargs=kw, host=str(kw.get("host") or kw.get("hostaddr") or "local socket"), port=port,
                   user=str(kw.get("user") or "(current user)"), dbname=dbname, password=kw.get("password"))


@contextmanager
def session(p: Params, dbname: str) -> Iterator[Any]:
    """A connection in one read-only, repeatable-read transaction; yields a cursor."""
    psycopg = psycopg_module()
    try:
        conn = psycopg.connect(dbname=dbname, autocommit=True, **p.kwargs)
    except psycopg.Error as e:
        if getattr(e, "sqlstate", None) == _DB_MISSING or f'database "{dbname}" does not exist' in str(e):
            raise MissingDatabase(dbname) from e
        raise ToolError(f"cannot connect to PostgreSQL {p.where(dbname)}: {p.scrub(str(e))}") from None
    try:
        conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
        conn.execute(f"SET lock_timeout = {LOCK_TIMEOUT_MS}")
        conn.execute("SET default_transaction_read_only = on")
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield cur
    except psycopg.Error as e:
        raise ToolError(f"query on PostgreSQL {p.where(dbname)} failed: {p.scrub(str(e))}") from None
    finally:
        conn.close()


class MissingDatabase(Exception):
    def __init__(self, dbname: str) -> None:
        super().__init__(dbname)
        self.dbname = dbname


class Tables:
    """Reads rows of one schema, tolerating missing optional tables and columns."""

    def __init__(self, cur: Any, schema: str, where: str) -> None:
        self.cur = cur
        self.schema = schema
        self.where = where
        self.absent: dict[str, set[str]] = {}  # table -> wanted columns this release lacks

    def columns(self, table: str) -> set[str] | None:
        self.cur.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
            (self.schema, table),
        )
        cols = {str(r[0]) for r in self.cur.fetchall()}
        return cols or None

    def rows(self, table: str, wanted: list[str], required: bool = False) -> list[dict[str, Any]]:
        from psycopg import sql

        have = self.columns(table)
        if have is None:
            if required:
                raise FormatError(f"table {self.schema}.{table} not found: not a Eucalyptus database",
                                  path=self.where)
            return []
        present = [c for c in wanted if c in have]
        self.absent[table] = set(wanted) - have
        if not present:
            return []
        query = sql.SQL("SELECT {} FROM {} LIMIT {}").format(
            sql.SQL(", ").join(sql.Identifier(c) for c in present),
            sql.Identifier(self.schema, table),
            sql.Literal(MAX_ROWS + 1),
        )
        self.cur.execute(query)
        out = [dict.fromkeys(wanted) | dict(zip(present, r, strict=True)) for r in self.cur.fetchall()]
        if len(out) > MAX_ROWS:
            raise FormatError(f"table {self.schema}.{table} has more than {MAX_ROWS} rows", path=self.where)
        return out

    def schema_exists(self) -> bool:
        self.cur.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,))
        return self.cur.fetchone() is not None
