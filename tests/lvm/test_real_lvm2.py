# SPDX-License-Identifier: Apache-2.0
"""The reader against containers made by the real lvm2 (tests/lvmfix.py) and lvm2's own pvck.

Every LV byte is compared with the sha256 of what was written at the offsets lvm2 reported;
every label, pv_header and mda field with what ``pvck --dump headers`` printed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from euca2kvm.eucalyptus.discovery import discover
from euca2kvm.export.copy import copy_blocks
from euca2kvm.lvm import Device, scan
from euca2kvm.lvm.extents import Kind
from euca2kvm.lvm.label import find_label
from euca2kvm.lvm.mda import read_mda_header, read_metadata
from euca2kvm.lvm.source import LvmSource
from refdigest import blkdigest


def _lvs(truth: dict[str, Any], expect: str) -> list[dict[str, Any]]:
    return [lv for lv in truth["lvs"] if lv["expect"] == expect]


def _find(root: Path, lv: dict[str, Any]) -> Any:
    d = discover([str(root / lv["dir"])], check_in_use=False)
    (vol,) = [v for v in d.volumes if v.vg == lv["vg"] and v.lv == lv["lv"]]
    return vol


def test_every_readable_lv_matches_lvm2_ground_truth(lvm_fixtures: tuple[Path, dict[str, Any]]) -> None:
    root, truth = lvm_fixtures
    checked = 0
    for lv in _lvs(truth, "ok"):
        vol = _find(root, lv)
        assert vol.problem is None, (lv["lv"], vol.problem)
        emap = vol.extent_map()
        assert emap.size == lv["size"]
        res = copy_blocks(LvmSource(emap), None, sha256=True)
        assert res.sha256 == lv["sha256"], f"{lv['vg']}/{lv['lv']}"
        checked += 1
    assert checked >= 14


def test_segment_layout_matches_lvs_report(lvm_fixtures: tuple[Path, dict[str, Any]]) -> None:
    """Each linear/striped area starts where lvm2's seg_pe_ranges says."""
    root, truth = lvm_fixtures
    for lv in _lvs(truth, "ok"):
        vol = _find(root, lv)
        emap = vol.extent_map()
        ext = lv["extent_size"]
        for seg in lv["segments"]:
            if seg["segtype"] not in ("linear", "striped"):
                continue
            lo = seg["start_extent"] * ext
            first = next(emap.extents(lo, lo + 1))
            area = seg["areas"][0]
            assert first.kind is Kind.DATA
            assert os.path.basename(first.path or "") == area["file"]
            assert first.offset == area["pe_start"] + area["pe_first"] * ext


@pytest.mark.parametrize("why", ["missing-pv", "corrupt-metadata", "truncated", "error-segment"])
def test_refused_lvs_are_refused_by_name_and_others_stay_readable(
        lvm_fixtures: tuple[Path, dict[str, Any]], why: str) -> None:
    root, truth = lvm_fixtures
    cases = [lv for lv in _lvs(truth, "refused") if lv["why"] == why]
    assert cases
    for lv in cases:
        d = discover([str(root / lv["dir"])], check_in_use=False)
        matches = [v for v in d.volumes if v.vg == lv["vg"] and v.lv == lv["lv"]]
        if why == "corrupt-metadata":
            assert not matches
            assert any("no valid metadata copy" in w and "checksum mismatch" in w for w in d.warnings)
            continue
        (vol,) = matches
        if why == "error-segment":
            assert vol.problem is None and Kind.ERROR in vol.extent_map().kinds()
            continue
        assert vol.problem, lv
        expected = {"missing-pv": "missing", "truncated": "truncated"}[why]
        assert expected in vol.problem
        others = [v for v in d.volumes if v.problem is None]
        assert others or why == "truncated"


def test_headers_match_pvck(lvm_fixtures: tuple[Path, dict[str, Any]]) -> None:
    root, truth = lvm_fixtures
    compared = 0
    for name, f in truth["files"].items():
        hdr = f.get("pvck_headers")
        if not hdr or hdr.get("rc") not in (0, 5):
            continue
        path = root / name
        dev = Device.whole(str(path))
        label = find_label(dev)
        assert label is not None, name
        assert label.sector == hdr["label"]["sector"]
        assert label.uuid == hdr["pv_uuid"]
        assert label.device_size == hdr["device_size"]
        assert [(a.offset, a.size) for a in label.data_areas] == [(a["offset"], a["size"]) for a in hdr["data_areas"]]
        assert [(a.offset, a.size) for a in label.metadata_areas] == [
            (a["offset"], a["size"]) for a in hdr["metadata_areas"]]
        if hdr["extension"] is not None:
            assert (label.ext_version, label.ext_flags) == (hdr["extension"]["version"], hdr["extension"]["flags"])
        for area, m in zip(label.metadata_areas, hdr["mdas"], strict=True):
            h = read_mda_header(dev, area)
            assert (h.checksum, h.start, h.size, h.version) == (m["checksum"], m["start"], m["size"], m["version"])
            rl = m["raw_locn"][0]
            assert (h.raw_locns[0].offset, h.raw_locns[0].size, h.raw_locns[0].checksum, h.raw_locns[0].flags) == (
                rl["offset"], rl["size"], rl["checksum"], rl["flags"])
        compared += 1
    assert compared >= 12


def test_metadata_text_matches_pvck(lvm_fixtures: tuple[Path, dict[str, Any]]) -> None:
    root, truth = lvm_fixtures
    corrupt = {f"{c['dir']}/{c['file']}" for c in truth["corruptions"]}
    compared = 0
    for name, f in truth["files"].items():
        md = f.get("pvck_metadata")
        if not md or md["rc"] != 0 or name in corrupt:
            continue
        dev = Device.whole(str(root / name))
        label = find_label(dev)
        assert label is not None
        copy = read_metadata(read_mda_header(dev, label.metadata_areas[0]))
        assert copy is not None
        assert copy.text.strip() == md["text"].strip(), name
        compared += 1
    assert compared >= 10


def test_ring_really_wrapped_and_is_read(lvm_fixtures: tuple[Path, dict[str, Any]]) -> None:
    root, truth = lvm_fixtures
    ring = truth["ring"]
    assert ring["raw_locn_offset"] + ring["raw_locn_size"] > ring["mda_size"]
    res = scan([Device.whole(str(root / ring["dir"] / ring["file"]))])
    (g,) = res.vgs
    assert g.copy.wrapped
    assert g.copy.locn.offset == ring["raw_locn_offset"]


def test_second_mda_used_when_first_is_corrupt(lvm_fixtures: tuple[Path, dict[str, Any]]) -> None:
    root, truth = lvm_fixtures
    c = next(c for c in truth["corruptions"] if c["lvm2_sees"])
    res = scan([Device.whole(str(root / c["dir"] / c["file"]))])
    (g,) = res.vgs
    assert any("checksum mismatch" in w for w in res.warnings)
    assert g.copy.header.area.offset != 4096


def test_discovery_names_volumes_like_eucalyptus(lvm_fixtures: tuple[Path, dict[str, Any]]) -> None:
    root, truth = lvm_fixtures
    d = discover([str(root / "euca")], check_in_use=False)
    by_id = {v.id: v for v in d.volumes}
    assert by_id["vol-4708bf47"].kind == "overlay"
    assert by_id["vol-4708bf47"].vg == "euca-ebs-storage-vg-vol-4708bf47"
    assert by_id["snap-5e6f7a8b"].kind == "snapshot"
    assert by_id["snap-5e6f7a8b"].size == truth["raw"][0]["size"]
    assert "vol-4708bf47Ab3dE9" not in by_id
    assert any(n.path.endswith("/vol-4708bf47Ab3dE9") and "interrupted" in n.reason for n in d.notes)
    seed = discover([str(root / "seed")], check_in_use=False)
    assert [v.id for v in seed.volumes] == ["volume-1a2b3c4d"]
    dots = discover([str(root / "dots")], check_in_use=False)
    assert [(v.id, v.vg, v.lv) for v in dots.volumes] == [("vol-d0750001", "vg-Yw9nRg..", "lv-Q2xpaA..")]


def test_raw_snapshot_bytes(lvm_fixtures: tuple[Path, dict[str, Any]]) -> None:
    root, truth = lvm_fixtures
    raw = truth["raw"][0]
    d = discover([str(root / raw["dir"] / raw["file"])], check_in_use=False)
    vol = d.find(raw["file"])
    assert copy_blocks(LvmSource(vol.extent_map()), None, sha256=True).sha256 == raw["sha256"]


def test_third_party_images(third_party_pvs: dict[str, Any]) -> None:
    for name, info in third_party_pvs.items():
        res = scan([Device.whole(str(info["raw"]))])
        (g,) = res.vgs
        assert g.name == info["vg"] and g.vg.seqno == info["seqno"], name
        for lv_name, lv in info["lvs"].items():
            emap = g.lv_map(lv_name)
            assert emap.size == lv["size"]
            assert copy_blocks(LvmSource(emap), None, sha256=True).sha256 == lv["sha256"]


def test_thin_pool_made_by_lvm2_metadata_and_thin_restore(lvm_fixtures: tuple[Path, dict[str, Any]]) -> None:
    """The hand-made pool (lvm2 metadata via vgcfgrestore, pool metadata by thin_restore): thin1 maps
    pool block 5 at virtual block 0; the pool itself is not a disk."""
    root, truth = lvm_fixtures
    d = discover([str(root / "thin")], check_in_use=False)
    by_lv = {v.lv: v for v in d.volumes}
    assert "not a disk" in (by_lv["pool"].problem or "")
    thin1 = by_lv["thin1"]
    assert thin1.problem is None
    data = bytearray(8 << 20)
    marker = b"THIN-BLOCK0-MARKER"
    data[: len(marker)] = marker
    assert copy_blocks(LvmSource(thin1.extent_map()), None).digest == blkdigest(bytes(data))
    assert by_lv["lv-lin"].problem is None

