# SPDX-License-Identifier: Apache-2.0
"""Shared fixtures: private PostgreSQL servers loaded with both Eucalyptus DB layouts."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/_env.py
sys.path.insert(0, str(HERE))  # pg.py

from pg import PgServer, available, shared_layout  # noqa: E402

from _env import missing  # noqa: E402

CLOUD_SQL = (HERE / "sql" / "cloud.sql").read_text()
STORAGE_SQL = (HERE / "sql" / "storage.sql").read_text()


def _server() -> PgServer:
    reason = available()
    if reason is not None:
        missing(reason)
    return PgServer().start()


@pytest.fixture(scope="session")
def pg_shared() -> Iterator[PgServer]:
    """Eucalyptus 4.1+ layout: eucalyptus_shared with eucalyptus_cloud / eucalyptus_storage schemas."""
    with shared_layout() as srv:
        yield srv


@pytest.fixture(scope="session")
def pg_40() -> Iterator[PgServer]:
    """Eucalyptus 4.0 layout: databases eucalyptus_cloud and eucalyptus_storage (public schema).

    metadata_instances lacks metadata_vm_virtualization_type and metadata_vm_sshkey here, as an older
    (or stripped) release would: the reader must list the key as unavailable, not fail.
    """
    srv = _server()
    try:
        srv.create_db("eucalyptus_cloud")
        srv.create_db("eucalyptus_storage")
        srv.run_sql("eucalyptus_cloud", CLOUD_SQL)
        srv.run_sql("eucalyptus_cloud",
                    "ALTER TABLE metadata_instances DROP COLUMN metadata_vm_virtualization_type, "
                    "DROP COLUMN metadata_vm_sshkey")
        srv.run_sql("eucalyptus_storage", STORAGE_SQL)
        yield srv
    finally:
        srv.stop()
