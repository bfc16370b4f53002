# SPDX-License-Identifier: Apache-2.0
"""The inventory reads the ceph-rbd backend's pools, user and files from ceph_rbd_info (a real private
PostgreSQL with the Eucalyptus storage schema), keeps them through its JSON file, and the JSON matches
the schema; a cloud without the table has none."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
from tests.eucalyptus.pg import PgServer, shared_layout

from euca2kvm.eucalyptus.db import read_inventory_db
from euca2kvm.eucalyptus.inventory import Inventory

SCHEMA = Path(__file__).resolve().parents[2] / "src" / "euca2kvm" / "schemas" / "inventory.schema.json"
# CephRbdInfo's table as Eucalyptus 4.x creates it (columns of com.eucalyptus.blockstorage.ceph.entities.CephRbdInfo).
CEPH_SQL = """
CREATE TABLE ceph_rbd_info (
    id varchar(255) PRIMARY KEY, version int4, creation_timestamp timestamp, last_update_timestamp timestamp,
    metadata_perm_uuid varchar(255) UNIQUE NOT NULL, cluster_name varchar(255), ceph_user varchar(255),
    ceph_keyring_file varchar(255), ceph_config_file varchar(255), ceph_volume_pools varchar(255),
    ceph_snapshot_pools varchar(255), deleted_image_prefix varchar(255), virsh_secret varchar(255));
INSERT INTO ceph_rbd_info (id, metadata_perm_uuid, cluster_name, ceph_user, ceph_keyring_file, ceph_config_file,
    ceph_volume_pools, ceph_snapshot_pools, deleted_image_prefix)
  VALUES ('1', 'u1', 'one', 'euca-sc', '/etc/ceph/ceph.client.euca-sc.keyring', '/etc/ceph/ceph.conf',
          'rbd, volumes2', 'snapshots,rbd', 'del');
"""


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    with shared_layout() as srv:
        yield srv


def test_inventory_reads_ceph_pools_and_user(pg: PgServer) -> None:
    before = read_inventory_db(pg.url("eucalyptus_shared"))
    assert (before.ceph_pools, before.ceph_user) == ([], None)
    pg.run_sql("eucalyptus_shared", CEPH_SQL, schema="eucalyptus_storage")
    inv = read_inventory_db(pg.url("eucalyptus_shared"))
    assert inv.ceph_pools == ["rbd", "volumes2", "snapshots"]
    assert (inv.ceph_user, inv.ceph_conf, inv.ceph_keyring) == (
        "euca-sc", "/etc/ceph/ceph.conf", "/etc/ceph/ceph.client.euca-sc.keyring")
    doc = json.loads(inv.to_json())
    jsonschema.validate(doc, json.loads(SCHEMA.read_text()))
    back = Inventory.from_json(inv.to_json())
    assert (back.ceph_pools, back.ceph_user, back.ceph_conf, back.ceph_keyring) == (
        inv.ceph_pools, inv.ceph_user, inv.ceph_conf, inv.ceph_keyring)
