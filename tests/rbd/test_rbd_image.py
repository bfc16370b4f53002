# SPDX-License-Identifier: Apache-2.0
"""RbdImage against a real Ceph cluster: every image's bytes (read through its ranges) hash like
``rbd export``, holes come from the cluster's extent query, clones read through their whole chain,
a read-only key suffices, reads from several threads are right, and nothing on the cluster changes
(the ``ceph`` fixture compares every RADOS object after each test)."""

from __future__ import annotations

import errno
import hashlib
import threading
from pathlib import Path

import pytest
from tests.rbd import cluster as cc

from euca2kvm.blocks import BlockSource, Kind
from euca2kvm.errors import EXIT_IO, EXIT_TOOL, EXIT_USAGE, Euca2kvmError
from euca2kvm.rbd import lib
from euca2kvm.rbd import sources as rbd_sources
from euca2kvm.rbd.image import CephOptions, Cluster

MiB = 1 << 20
BLOCK = 4 * MiB


def opts(c: cc.Cluster, ro: bool = False) -> CephOptions:
    return CephOptions(str(c.conf), "ro" if ro else "eucalyptus", str(c.ro_keyring if ro else c.keyring))


def sha_of(src: BlockSource) -> str:
    """sha256 of the source's bytes, reading only DATA ranges (zeros elsewhere)."""
    h, buf, zeros = hashlib.sha256(), bytearray(BLOCK), bytes(BLOCK)
    for r in src.ranges(0, src.size):
        pos = r.start
        while pos < r.end:
            n = min(BLOCK, r.end - pos)
            if r.kind is Kind.DATA:
                src.read_into(pos, memoryview(buf)[:n])
                h.update(memoryview(buf)[:n])
            else:
                assert r.kind is Kind.HOLE
                h.update(zeros[:n])
            pos += n
    return h.hexdigest()


def test_every_image_hashes_like_rbd_export(ceph: cc.Cluster) -> None:
    with Cluster(opts(ceph)) as cl:
        pool = cl.pool(cc.POOL)
        assert pool.names() == sorted(ceph.images)
        for name, truth in ceph.images.items():
            with pool.open(name) as img:
                assert isinstance(img, BlockSource)
                assert img.size == ceph.sizes[name]
                assert img.kinds() <= {Kind.DATA, Kind.HOLE}
                assert sha_of(img) == truth, name
                if name == cc.SPARSE:
                    assert img.allocated() < 64 * MiB


def test_ranges_are_gap_free_and_holes_are_zeros(ceph: cc.Cluster) -> None:
    with Cluster(opts(ceph)) as cl, cl.pool(cc.POOL).open(cc.FROM_SNAP) as img:
        for lo, hi in [(0, img.size), (1, img.size - 1), (4 * MiB + 7, 81 * MiB), (90 * MiB, 90 * MiB)]:
            rs = list(img.ranges(lo, hi))
            pos = lo
            for r in rs:
                assert r.start == pos and r.length > 0
                pos = r.end
            assert pos == hi
        # parent data (inside the overlap) and the write beyond it are DATA; the rest of the tail is a hole
        kinds = {r.kind for r in img.ranges(80 * MiB, 82 * MiB)}
        assert kinds == {Kind.DATA}
        assert {r.kind for r in img.ranges(88 * MiB, 96 * MiB)} == {Kind.HOLE}
        buf = bytearray(MiB)
        for r in img.ranges(0, img.size):
            if r.kind is Kind.HOLE and r.length >= MiB:  # a hole really reads as zeros through librbd
                img.read_into(r.start, memoryview(buf))
                assert not any(buf)


@pytest.mark.parametrize("name", [cc.FROM_SNAP, cc.DEL_CHILD, cc.SNAP])
def test_read_only_key_reads_a_clone_chain(ceph: cc.Cluster, name: str) -> None:
    with Cluster(opts(ceph, ro=True)) as cl, cl.pool(cc.POOL).open(name) as img:
        assert sha_of(img) == ceph.images[name]


def test_facts_show_chain_snapshots_and_watchers(ceph: cc.Cluster) -> None:
    with Cluster(opts(ceph, ro=True)) as cl:
        pool = cl.pool(cc.POOL)
        f = pool.facts(cc.FROM_SNAP)
        assert [(p.image, p.snap) for p in f.chain] == [(cc.SNAP, f"sp-on-{cc.SNAP}"),
                                                        (cc.VOL, f"sp-for-{cc.SNAP}")]
        assert f.chain[0].overlap == 64 * MiB and f.size == 96 * MiB
        d = pool.facts(cc.DEL_CHILD)
        assert [p.image for p in d.chain] == [cc.DEL_SNAP, cc.DEL_PARENT]
        assert pool.facts(cc.SNAP).snapshots == [(f"sp-on-{cc.SNAP}", 64 * MiB, True)]
        assert pool.facts(cc.WATCHED).watchers and not pool.facts(cc.VOL).watchers


def test_pool_listing_reads_facts_in_parallel_like_one_by_one(ceph: cc.Cluster,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rbd_sources, "FACT_THREADS", 3)  # fewer threads than images: each thread opens several
    with Cluster(opts(ceph, ro=True)) as cl:
        refs = rbd_sources.pool_images(cl, cc.POOL)
        pool = cl.pool(cc.POOL)
        assert [r.image for r in refs] == pool.names() and len(refs) > 3
        assert [r.facts for r in refs] == [pool.facts(r.image) for r in refs]
        assert len(cl._pools) == 1 and not pool.handles  # one context for the pool, every facts handle closed


def test_named_images_alone_get_facts_and_keep_their_handle(ceph: cc.Cluster) -> None:
    with Cluster(opts(ceph, ro=True)) as cl:
        pool = cl.pool(cc.POOL)
        refs = rbd_sources.images(cl, [cc.POOL], only=[cc.FROM_SNAP, cc.DENSE])
        assert [r.image for r in refs] == sorted([cc.FROM_SNAP, cc.DENSE])
        assert [r.facts for r in refs] == [pool.facts(r.image) for r in refs]
        kept = {r.image: r.handle for r in refs}
        assert all(h is not None and h in pool.handles for h in kept.values())  # nothing else is open
        assert len(pool.handles) == 2
        ref = refs[[r.image for r in refs].index(cc.FROM_SNAP)]
        with ref() as img:  # the scan's handle, not a second open
            assert img._h is kept[cc.FROM_SNAP] and ref.handle is None
            assert sha_of(img) == ceph.images[cc.FROM_SNAP]
            assert img.recheck() == img.identity()
        assert kept[cc.FROM_SNAP] not in pool.handles
        with ref() as again:  # a second source of the same ref opens the image afresh
            assert again._h is not kept[cc.FROM_SNAP] and sha_of(again) == ceph.images[cc.FROM_SNAP]
        # A name in no pool: every image's facts, as without ``only`` (the error lists close matches).
        everything = rbd_sources.images(cl, [cc.POOL], only=[cc.VOL, "vol-00000bad"])
        assert [r.image for r in everything] == pool.names()
        assert all(r.handle is None for r in everything)
    assert not pool.handles  # the unused kept handle is closed with the cluster


def test_parallel_reads_are_right(ceph: cc.Cluster) -> None:
    truth = ceph.rbd("export", f"{cc.POOL}/{cc.DENSE}", "-")
    chunk = 256 * 1024
    with Cluster(opts(ceph)) as cl, cl.pool(cc.POOL).open(cc.DENSE) as img:
        bad: list[int] = []

        def worker(k: int) -> None:
            buf = bytearray(chunk)
            for off in range(k * chunk, img.size, 4 * chunk):
                img.read_into(off, memoryview(buf))
                if buf != truth[off : off + chunk]:
                    bad.append(off)

        ts = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(timeout=120)
        assert not bad


def test_reads_outside_the_image_and_bad_inputs_are_typed_errors(ceph: cc.Cluster, tmp_path: Path) -> None:
    with Cluster(opts(ceph)) as cl:
        with cl.pool(cc.POOL).open(cc.DENSE) as img, pytest.raises(Euca2kvmError) as e:
            img.read_into(img.size - 10, memoryview(bytearray(20)))
        assert e.value.exit_code == EXIT_IO
        with pytest.raises(Euca2kvmError) as e:
            cl.pool("no-such-pool")
        assert e.value.exit_code == EXIT_USAGE
        with pytest.raises(Euca2kvmError) as e:
            cl.pool(cc.POOL).open("vol-00000000")
        assert e.value.exit_code == EXIT_USAGE
    with pytest.raises(Euca2kvmError) as e:
        Cluster(CephOptions(str(ceph.conf), "eucalyptus", str(tmp_path / "missing.keyring")))
    assert e.value.exit_code == EXIT_USAGE
    wrong = tmp_path / "wrong.keyring"  # a well-formed key the cluster does not know
    wrong.write_text("[client.eucalyptus]\n\tkey = AQBm2VJlAAAAABAAZ0T/aHJ0GkYhYm1QbG9nZw==\n")
    with pytest.raises(Euca2kvmError) as e:
        Cluster(CephOptions(str(ceph.conf), "eucalyptus", str(wrong)))
    assert e.value.exit_code == EXIT_IO


def test_missing_libraries_name_the_debian_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EUCA2KVM_LIBRADOS", "/nonexistent/librados.so.2")
    lib.libs.cache_clear()
    try:
        with pytest.raises(Euca2kvmError) as e:
            lib.libs()
        assert e.value.exit_code == EXIT_TOOL and "librbd1" in str(e.value)
    finally:
        monkeypatch.delenv("EUCA2KVM_LIBRADOS")
        lib.libs.cache_clear()
    assert lib.strerror(-errno.ENOENT).endswith("(ENOENT)")
