# SPDX-License-Identifier: Apache-2.0
"""``inventory --db URL --db-ssh [user@]host[:port]``: the CLC's PostgreSQL through an SSH tunnel.

The database port (8777 on a CLC) usually listens on the CLC only. A local port on 127.0.0.1 is
forwarded over the process's one SSH connection to the host (host key checked as for ssh://
sources) and on to the URL's host and port as that host sees them (``localhost:8777`` on the CLC
itself); the URL is rewritten to the local port, its user, password and database kept.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from ..errors import UsageError
from .ssh import Connection, connect, parse_url

DEFAULT_DB_PORT = 8777  # the CLC's PostgreSQL


def _via(via: str) -> Connection:
    if "/" in via or not via:
        raise UsageError(f"--db-ssh {via!r}: expected [user@]host[:port]")
    return connect(parse_url(f"ssh://{via}/"))


def forward_db_url(url: str, via: str) -> tuple[str, str]:
    """(``url`` pointing at a local port forwarded through ``via``, what the URL reaches, for messages)."""
    u = urlsplit(url)
    if u.scheme not in ("postgresql", "postgres"):
        raise UsageError("--db-ssh needs --db as a postgresql:// URL")
    if not u.hostname or "host=" in u.query or "port=" in u.query:
        raise UsageError("--db-ssh needs the database host in the URL (postgresql://user@host[:port]/db), "
                         "not a socket or a host= parameter")
    try:
        port = u.port or DEFAULT_DB_PORT
    except ValueError as e:
        raise UsageError("--db: bad port") from e
    conn = _via(via)
    listener = conn.call(conn.conn.forward_local_port("127.0.0.1", 0, u.hostname, port),
                         f"cannot forward a local port to {u.hostname}:{port}")
    auth = u.netloc.rsplit("@", 1)[0] + "@" if "@" in u.netloc else ""
    local = urlunsplit((u.scheme, f"{auth}127.0.0.1:{listener.get_port()}", u.path, u.query, u.fragment))
    return local, f"{u.hostname}:{port} via ssh {conn.target.hostport}"
