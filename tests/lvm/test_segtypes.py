# SPDX-License-Identifier: Apache-2.0
"""raid1, mirror, raid0, thin, COW snapshot and refused segment types through scan/discover,
against the kernel's hashes in tests/data/dm (see its README).

Variants lvm2 would need a kernel to produce (a REBUILD flag, data_offset, a merging snapshot,
cache/vdo/raid5 segments) are made by editing the real VG metadata text and resolving it over
the real containers.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import euca2kvm.lvm.segtypes  # noqa: F401  (registers the resolvers)
from euca2kvm.eucalyptus.discovery import discover
from euca2kvm.lvm import Device, ExtentReader, scan
from euca2kvm.lvm.extents import ExtentMap
from euca2kvm.lvm.mirrors import check_mirrors
from euca2kvm.lvm.model import vg_from_text
from euca2kvm.lvm.resolve import Context
from euca2kvm.lvm.scan import VolumeGroup
from euca2kvm.lvm.segtypes import user_target, user_visible

if TYPE_CHECKING:
    from conftest import DmFixtures  # tests/lvm/conftest.py

MIB = 1 << 20
EXTENT = 4 * MIB
PE_START = MIB


def groups_of(paths: list[Path]) -> dict[str, VolumeGroup]:
    res = scan([Device.whole(str(p)) for p in paths])
    return {g.name: g for g in res.vgs}


@pytest.fixture(scope="module")
def groups(fx: DmFixtures) -> dict[str, VolumeGroup]:
    return groups_of([fx.path(c) for c in fx.containers])


def edited(fx: DmFixtures, groups: dict[str, VolumeGroup], vg: str, *edits: tuple[str, str],
           extra_lvs: str = "") -> Context:
    """A resolver context over the real PVs for the VG's real metadata text, edited."""
    text: str = fx.truth["vgcfg"][vg]
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new, 1)
    text = text.replace("\tlogical_volumes {\n", "\tlogical_volumes {\n" + extra_lvs, 1)
    g = groups[vg]
    return Context(vg_from_text(text), g.devices, g.missing)


def lv_text(name: str, extents: int, body: str, status: str = '"READ", "WRITE", "VISIBLE"') -> str:
    return (f'{name} {{\nid = "{name[:6]:x<6}-0000-0000-0000-0000-0000-000000"\nstatus = [{status}]\n'
            f"flags = []\nsegment_count = 1\nsegment1 {{\nstart_extent = 0\nextent_count = {extents}\n"
            f"{body}\n}}\n}}\n")


def desc(emap: ExtentMap) -> str:
    return repr(emap.describe())


KERNEL_HASHED = ["vgraid/r1", "vgraid/m1", "vgthin/thin1", "vgthin/thin2", "vgthin/snap1", "vgcow/origin",
                 "vgcow/csnap", "vgcow/origin2", "vgraid/r1_rimage_0", "vgraid/r1_rmeta_1",
                 "vgthin/pool_tmeta"]


@pytest.mark.parametrize("name", KERNEL_HASHED)
def test_lv_matches_kernel_through_scan(fx: DmFixtures, groups: dict[str, VolumeGroup], name: str) -> None:
    info = fx.lv(name)
    vg, lv = name.split("/")
    g = groups[vg]
    emap = g.lv_map(user_target(g.vg, lv))
    assert emap.size == info["kernel_size"]
    assert fx.sha(emap) == info["sha256"]


def test_user_visible_lvs_are_lvms(groups: dict[str, VolumeGroup]) -> None:
    seen = {n: {lv.name for lv in g.vg.lvs.values() if user_visible(g.vg, lv)} for n, g in groups.items()}
    assert seen == {"vgcow": {"origin", "origin2", "csnap", "full"}, "vgraid": {"r1", "m1"},
                    "vgthin": {"pool", "thin1", "thin2", "snap1"}}
    assert user_target(groups["vgcow"].vg, "csnap") == "snapshot0"
    assert user_target(groups["vgcow"].vg, "origin") == "origin"


def test_discover_reads_every_volume_or_says_why(fx: DmFixtures) -> None:
    d = discover([str(fx.dir)], check_in_use=False)
    problems = {v.name: v.problem for v in d.volumes if v.problem}
    snap_name = {"vgcow/snapshot1", "vgcow/full"} & set(problems)
    assert len(snap_name) == 1 and set(problems) == snap_name | {"vgthin/pool"}, problems
    assert "invalid" in (problems[snap_name.pop()] or "")
    pool = problems["vgthin/pool"] or ""
    assert "a thin pool is not a disk; export its thin volumes (snap1, thin1, thin2)" in pool
    hashed = 0
    for v in d.volumes:
        if v.problem:
            continue
        key = "vgcow/csnap" if v.name == "vgcow/snapshot0" else v.name
        info = fx.lv(key)
        emap = v.extent_map()
        assert emap.size == info["kernel_size"]
        assert fx.sha(emap) == info["sha256"], v.name
        hashed += 1
    assert hashed == 8


def test_full_snapshot_refused_with_reason(groups: dict[str, VolumeGroup]) -> None:
    g = groups["vgcow"]
    with pytest.raises(Exception, match=r"vgcow/full: snapshot of origin2: snapshot is invalid") as e:
        g.lv_map(user_target(g.vg, "full"))
    assert type(e.value).__name__ == "FormatError"


@pytest.mark.parametrize("how", ["omitted", "label wiped"])
def test_raid1_and_mirror_read_the_other_leg_when_a_pv_is_missing(fx: DmFixtures, tmp_path: Path,
                                                                  how: str) -> None:
    paths = [fx.fresh_copy("dm-raid1.img", tmp_path)]
    if how == "label wiped":
        p = fx.fresh_copy("dm-raid0.img", tmp_path)
        with p.open("r+b") as f:
            f.seek(512)
            f.write(bytes(512))
        paths.append(p)
    g = groups_of(paths)["vgraid"]
    assert g.devices["pv0"] is None
    for lv, leg in (("r1", "r1_rimage_1"), ("m1", "m1_mimage_1")):
        emap = g.lv_map(lv)
        assert f"'leg': '{leg}'" in desc(emap)
        assert fx.sha(emap) == fx.lv(f"vgraid/{lv}")["sha256"]
    report = check_mirrors(g, "r1")
    assert report.identical and report.legs == ["r1_rimage_1"]
    assert "missing PV pv0" in report.skipped["r1_rimage_0"]


def test_all_legs_missing_is_refused_naming_the_pvs(groups: dict[str, VolumeGroup]) -> None:
    g = groups["vgraid"]
    ctx = Context(g.vg, {"pv0": None, "pv1": None}, {"pv0": "gone", "pv1": "gone too"})
    with pytest.raises(Exception, match=r"no readable in-sync leg .*pv0 .*gone.*pv1 .*gone too") as e:
        ctx.lv_map("r1")
    assert type(e.value).__name__ == "FormatError"


def test_rebuild_flag_prefers_the_clean_leg(fx: DmFixtures, groups: dict[str, VolumeGroup]) -> None:
    ctx = edited(fx, groups, "vgraid", ('r1_rimage_0 {\n\t\t\tid = "C0CB6X-G2Ob-LHfV-snqH-AhVv-TEd4-BVpwtW"\n'
                                        '\t\t\tstatus = ["READ", "WRITE"',
                                        'r1_rimage_0 {\n\t\t\tid = "C0CB6X-G2Ob-LHfV-snqH-AhVv-TEd4-BVpwtW"\n'
                                        '\t\t\tstatus = ["READ", "WRITE", "REBUILD"'))
    emap = ctx.lv_map("r1")
    assert "'leg': 'r1_rimage_1'" in desc(emap)
    assert fx.sha(emap) == fx.lv("vgraid/r1")["sha256"]


def test_raid_superblock_out_of_sync_leg_is_not_read(fx: DmFixtures, tmp_path: Path) -> None:
    p0 = fx.fresh_copy("dm-raid0.img", tmp_path)
    with p0.open("r+b") as f:  # r1_rmeta_0 is PE 0 of pv0: recovery of device 0 stopped at sector 0
        f.seek(PE_START + 32)
        f.write(struct.pack("<Q", 0))
    g = groups_of([p0, fx.fresh_copy("dm-raid1.img", tmp_path)])["vgraid"]
    emap = g.lv_map("r1")
    assert "'leg': 'r1_rimage_1'" in desc(emap)
    assert fx.sha(emap) == fx.lv("vgraid/r1")["sha256"]


def test_check_mirrors_identical_then_first_differing_byte(fx: DmFixtures, groups: dict[str, VolumeGroup],
                                                           tmp_path: Path) -> None:
    for lv in ("r1", "m1"):
        report = check_mirrors(groups["vgraid"], lv)
        assert report.identical and len(report.legs) == 2 and report.bytes_compared == 16 * MIB
        assert "identical" in report.summary()
    p1 = fx.fresh_copy("dm-raid1.img", tmp_path)
    flips = {"r1": (1, 5 * MIB + 12345), "m1": (5, 11 * MIB + 7)}  # LV -> (PE of leg 1 on pv1, LV byte)
    with p1.open("r+b") as f:
        for pe, off in flips.values():
            f.seek(PE_START + pe * EXTENT + off)
            b = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([b[0] ^ 0x40]))
    g = groups_of([fx.path("dm-raid0.img"), p1])["vgraid"]
    for lv, (_pe, off) in flips.items():
        report = check_mirrors(g, lv, block=MIB)
        assert report.first_difference == off, report.summary()
        assert report.differing_legs == (f"{lv}_{'r' if lv == 'r1' else 'm'}image_0",
                                         f"{lv}_{'r' if lv == 'r1' else 'm'}image_1")
        assert f"differ first at LV byte {off}" in report.summary()
        assert fx.sha(g.lv_map(lv)) == fx.lv(f"vgraid/{lv}")["sha256"]  # leg 0 is still read


def test_raid1_data_offset_is_honoured(fx: DmFixtures, groups: dict[str, VolumeGroup]) -> None:
    seg = '\t\t\t\textent_count = 4\t# 16 Megabytes\n\n\t\t\t\ttype = "raid1"\n'
    ctx = edited(fx, groups, "vgraid", (seg, seg.replace("= 4", "= 3") + "\t\t\t\tdata_offset = 8192\n"))
    emap = ctx.lv_map("r1")
    assert emap.size == 12 * MIB
    with ExtentReader(emap) as a, ExtentReader(ctx.lv_map("r1_rimage_0")) as b:
        assert a.pread(0, 12 * MIB) == b.pread(4 * MIB, 12 * MIB)
    ctx = edited(fx, groups, "vgraid", (seg, seg + "\t\t\t\tdata_offset = 8192\n"))
    with pytest.raises(Exception, match="too small for the segment"):
        ctx.lv_map("r1")


def test_raid0_reads_like_dm_stripe(fx: DmFixtures, groups: dict[str, VolumeGroup]) -> None:
    raid0 = lv_text("r0", 8, 'type = "raid0"\nstripe_count = 2\nstripe_size = 128\n'
                             'raid0_lvs = ["r1_rimage_0", "r1_rimage_1"]')
    striped = lv_text("st", 8, 'type = "striped"\nstripe_count = 2\nstripe_size = 128\n'
                               'stripes = ["pv0", 1, "pv1", 1]')
    ctx = edited(fx, groups, "vgraid", extra_lvs=raid0 + striped)
    a, b = ctx.lv_map("r0"), ctx.lv_map("st")
    assert a.size == b.size == 32 * MIB
    assert list(a.extents()) == list(b.extents())
    assert fx.sha(a) == fx.sha(b)


REFUSED = {"cache": "dirty blocks", "writecache": "dirty blocks", "cache-pool": "cache pool",
           "vdo": "VDO", "vdo-pool": "VDO pool", "integrity": "dm-integrity", "raid4": "parity",
           "raid5": "parity", "raid5_ls": "parity", "raid6": "parity", "raid10": "striped-mirror",
           "fancy-new": "not supported"}


@pytest.mark.parametrize("segtype", sorted(REFUSED))
def test_refused_types_name_the_type_and_spare_the_vg(fx: DmFixtures, groups: dict[str, VolumeGroup],
                                                      segtype: str) -> None:
    ctx = edited(fx, groups, "vgraid", extra_lvs=lv_text("x", 2, f'type = "{segtype}"'))
    with pytest.raises(Exception, match=rf"vgraid/x.*'{segtype}'.*{REFUSED[segtype]}") as e:
        ctx.lv_map("x")
    assert type(e.value).__name__ == "UnsupportedError"
    assert ctx.lv_map("r1").size == ctx.lv_map("m1").size == 16 * MIB


def test_thin_refusals(fx: DmFixtures, groups: dict[str, VolumeGroup]) -> None:
    dev2 = "\t\t\t\tdevice_id = 2\n"
    for edit, match in [((dev2, dev2 + '\t\t\t\texternal_origin = "lvol0_pmspare"\n'), "external origin"),
                        ((dev2, dev2 + '\t\t\t\tmerge = "snap1"\n'), "merge of thin snapshot"),
                        (("transaction_id = 3", "transaction_id = 4"), "transaction 3 but the VG")]:
        ctx = edited(fx, groups, "vgthin", edit)
        with pytest.raises(Exception, match=match):
            ctx.lv_map("thin2")
        assert ctx.lv_map("pool_tdata").size == 24 * MIB


def test_merging_snapshot_refuses_snapshot_and_origin(fx: DmFixtures, groups: dict[str, VolumeGroup]) -> None:
    ctx = edited(fx, groups, "vgcow", ('cow_store = "csnap"', 'merging_store = "csnap"'))
    with pytest.raises(Exception, match="being merged back into it"):
        ctx.lv_map("snapshot0")
    with pytest.raises(Exception, match="snapshot csnap is being merged into it"):
        user_target(ctx.vg, "origin")
    assert not user_visible(ctx.vg, ctx.vg.lvs["csnap"])
    assert fx.sha(ctx.lv_map(user_target(ctx.vg, "origin2"))) == fx.lv("vgcow/origin2")["sha256"]
