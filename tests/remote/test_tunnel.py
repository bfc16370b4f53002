# SPDX-License-Identifier: Apache-2.0
"""``inventory --db URL --db-ssh HOST``: the same inventory through an SSH tunnel as directly, and the
tunnel refused like any SSH connection when the host key is unknown."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import sshd
from euca2kvm.errors import EXIT_USAGE

EUCA_TESTS = Path(__file__).resolve().parent.parent / "eucalyptus"
sys.path.insert(0, str(EUCA_TESTS))  # pg.py, the private PostgreSQL of the inventory tests

from pg import ROLE_PASSWORD, PgServer, shared_layout  # noqa: E402


@pytest.fixture(scope="module")
def clc_db() -> Iterator[PgServer]:
    with shared_layout() as srv:
        yield srv


def inventory(*args: str, check: int = 0) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([sys.executable, "-m", "euca2kvm", "inventory", "--json", *args], capture_output=True,
                       text=True, timeout=300)
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    assert p.returncode == check, (p.returncode, p.stderr[-2000:])
    return p


def _comparable(inv: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in inv.items() if k not in ("source", "captured_at")}


def test_inventory_through_ssh_tunnel(clc_db: PgServer, sshd_server: sshd.Sshd, tmp_path: Path) -> None:
    url = clc_db.url("eucalyptus_shared")
    direct = json.loads(inventory("--db", url).stdout)
    via = f"{sshd_server.user}@{sshd_server.host}:{sshd_server.port}"
    ssh_opts = ["--ssh-known-hosts", str(sshd_server.known_hosts), "--ssh-identity", str(sshd_server.identity)]
    tunneled = json.loads(inventory("--db", url, "--db-ssh", via, *ssh_opts).stdout)
    assert direct["instances"] and _comparable(tunneled) == _comparable(direct)
    assert f"via ssh [{sshd_server.host}]:{sshd_server.port}" in tunneled["source"]
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    p = inventory("--db", url, "--db-ssh", via, "--ssh-known-hosts", str(empty), "--ssh-identity",
                  str(sshd_server.identity), check=EXIT_USAGE)
    assert "SHA256:" in p.stderr and ROLE_PASSWORD not in p.stderr
