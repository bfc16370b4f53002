# SPDX-License-Identifier: Apache-2.0
"""The session's Ceph cluster (tests/rbd/cluster.py) and the read-only guard around every test.

Each test that takes ``ceph`` gets the cluster and a check afterwards that every RADOS object of the
pool has the size, mtime and version it had before (a header rewritten by a watch or an access
timestamp, a data object written, an object or image created would all show). At the end of the
session the full state (``rbd ls -l``, ``info``, ``snap ls``, ``diff``, the sha256 of ``rbd export`` of
every image, the objects) is compared with the state right after the fill.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from tests.rbd import cluster as ceph_cluster

from _env import need_root, need_tools


@pytest.fixture(scope="session")
def ceph_session() -> Iterator[tuple[ceph_cluster.Cluster, ceph_cluster._Rados]]:
    need_root()
    need_tools("ceph-mon", "ceph-osd", "ceph", "rbd", "rados", "ceph-authtool", "monmaptool")
    base = ceph_cluster.tmpdir()
    c = ceph_cluster.start(base)
    r: ceph_cluster._Rados | None = None
    try:
        ceph_cluster.fill(c)
        r = ceph_cluster._Rados(c)
        before = ceph_cluster.state(c, r)
        ceph_cluster.record_truth(c, before)
        yield c, r
        after = ceph_cluster.state(c, r)
        assert after == before, "the cluster's state changed during the session"
    finally:
        if r is not None:
            r.close()
        ceph_cluster.stop(c)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def ceph(ceph_session: tuple[ceph_cluster.Cluster, ceph_cluster._Rados]) -> Iterator[ceph_cluster.Cluster]:
    c, r = ceph_session
    before = r.objects()
    yield c
    after = r.objects()
    changed = {k: (before.get(k), after.get(k)) for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert not changed, f"RADOS objects changed by a read-only test: {changed}"
