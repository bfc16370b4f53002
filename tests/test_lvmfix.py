# SPDX-License-Identifier: Apache-2.0
"""Tests of the fixture builder (tests/lvmfix.py) and the pvck oracle (tests/pvck.py) themselves."""

from __future__ import annotations

import hashlib
import re
import zlib
from pathlib import Path
from typing import Any

import pytest

import lvmfix
import pvck

MiB = 1 << 20
LV_KEYS = {"scenario", "dir", "vg", "lv", "lv_uuid", "files", "vg_files", "size", "sha256", "expect", "why",
           "extent_size", "segments", "patches", "tags"}
# lvm2 CRC (lib/misc/crc.c): reflected CRC-32, initial 0xF597A6CF, no final XOR.
LVM_CRC_INIT = 0xF597A6CF


def lvm_crc(data: bytes) -> int:
    return zlib.crc32(data, LVM_CRC_INIT ^ 0xFFFFFFFF) ^ 0xFFFFFFFF


def lv(truth: dict[str, Any], scenario: str, name: str) -> dict[str, Any]:
    return next(r for r in truth["lvs"] if r["scenario"] == scenario and r["lv"] == name)


def read_lv(root: Path, rec: dict[str, Any]) -> str:
    """sha256 of the LV read back from the container files at the lvm2-reported offsets."""
    h = hashlib.sha256()
    fds = {f: open(root / rec["dir"] / f, "rb") for f in rec["files"]}  # noqa: SIM115
    try:
        for off in range(0, rec["size"], MiB):
            for name, phys, k in lvmfix.lv_pieces(rec, off, min(MiB, rec["size"] - off)):
                fds[name].seek(phys)
                data = fds[name].read(k)
                assert len(data) == k
                h.update(data)
    finally:
        for f in fds.values():
            f.close()
    return h.hexdigest()


def test_truth_complete(lvm_fixtures: tuple[Path, dict[str, Any]]) -> None:
    root, t = lvm_fixtures
    assert t["fixture_version"] == lvmfix.FIXTURE_VERSION
    assert set(t["scenarios"]) == set(lvmfix.SCENARIOS)
    for rec in t["lvs"]:
        assert set(rec) >= LV_KEYS, rec["lv"]
        assert rec["expect"] in ("ok", "refused")
        assert (rec["sha256"] is None) == (rec["expect"] == "refused")
        assert (rec["why"] is None) == (rec["expect"] == "ok")
    whys = {r["why"] for r in t["lvs"] if r["expect"] == "refused"}
    assert whys == {"missing-pv", "corrupt-metadata", "truncated", "error-segment", "thin"}
    for key, f in t["files"].items():
        p = root / key
        assert p.stat().st_size == f["size"]
        if "pvck_headers" in f:
            h = f["pvck_headers"]
            assert h["label"]["id"] == "LABELONE" and h["label"]["sector"] == 1
            assert len(h["pv_uuid"]) == 32 and h["mdas"]
    on_disk = {f"{n}/{p.name}" for n in t["scenarios"] for p in (root / n).iterdir()}
    assert on_disk == set(t["files"])
    assert {f"{m['dir']}/{m['file']}" for m in t["missing_files"]}.isdisjoint(on_disk)


def test_eucalyptus_recipes(lvm_fixtures: tuple[Path, dict[str, Any]]) -> None:
    root, t = lvm_fixtures
    assert (root / "euca/vol-4708bf47").stat().st_size == (1024 + 4) * MiB
    euca = lv(t, "euca", "euca-vol-4708bf47")
    assert euca["vg"] == "euca-ebs-storage-vg-vol-4708bf47" and euca["tags"] == ["vol-4708bf47"]
    assert euca["size"] == 1 << 30
    assert (root / "seed/volume-1a2b3c4d").stat().st_size == 1001 * MiB
    assert lv(t, "seed", "lv-1a2b3c4d")["size"] == 800 * MiB
    assert lv(t, "dots", "lv-Q2xpaA..")["vg"] == "vg-Yw9nRg.."
    assert [len(g["areas"]) for g in lv(t, "striped", "lv-stripe")["segments"]] == [2]
    assert len(lv(t, "striped", "lv-span")["segments"]) == 2
    assert lv(t, "ext32m", "lv-ext32m")["extent_size"] == 32 * MiB
    align = t["files"]["align/vol-a1190004"]["pvck_headers"]
    assert align["data_areas"][0]["offset"] == 196608 and len(align["mdas"]) == 2
    assert [r["file"] for r in t["raw"]] == ["snap-5e6f7a8b"]
    assert re.fullmatch(r"vol-4708bf47[A-Za-z0-9]{6}", t["ignored"][0]["file"])


def test_ring_really_wrapped(lvm_fixtures: tuple[Path, dict[str, Any]]) -> None:
    root, t = lvm_fixtures
    ring = t["ring"]
    path = root / ring["dir"] / ring["file"]
    m = pvck.headers(path)["mdas"][0]
    rl = m["raw_locn"][0]
    assert rl["offset"] + rl["size"] > m["size"]
    assert (rl["offset"], rl["size"], m["size"]) == (ring["raw_locn_offset"], ring["raw_locn_size"],
                                                     ring["mda_size"])
    wrap = rl["offset"] + rl["size"] - m["size"]
    assert wrap == ring["wrap_bytes"] > 1  # more than the trailing NUL wraps round
    with open(path, "rb") as f:
        f.seek(m["start"] + rl["offset"])
        text = f.read(rl["size"] - wrap)
        f.seek(m["start"] + 512)
        text += f.read(wrap)
    assert lvm_crc(text) == rl["checksum"]
    assert text.endswith(b"\0")
    assert text[:-1].decode() == pvck.metadata(path)["text"]


def test_hashes_rederivable(lvm_fixtures: tuple[Path, dict[str, Any]]) -> None:
    root, t = lvm_fixtures
    checked = 0
    for rec in t["lvs"]:
        if rec["expect"] != "ok":
            continue
        if rec["segments"][0]["segtype"] == "zero":
            assert rec["sha256"] == hashlib.sha256(bytes(rec["size"])).hexdigest()
            continue
        assert read_lv(root, rec) == rec["sha256"], f"{rec['vg']}/{rec['lv']}"
        checked += 1
    assert checked >= 12
    for raw in t["raw"]:
        h = hashlib.sha256()
        with open(root / raw["dir"] / raw["file"], "rb") as f:
            while chunk := f.read(4 * MiB):
                h.update(chunk)
        assert h.hexdigest() == raw["sha256"]


def test_offsets_agree_with_metadata_text(lvm_fixtures: tuple[Path, dict[str, Any]]) -> None:
    """pe_start and extent_size from lvm2's report match the text lvm2 wrote on disk."""
    _, t = lvm_fixtures
    for rec in t["lvs"]:
        for area in (a for g in rec["segments"] for a in g["areas"] if "file" in a):
            key = f"{rec['dir']}/{area['file']}"
            text = t["files"].get(key, {}).get("pvck_metadata", {}).get("text")
            if text is None:  # PV file absent (missing-pv) or its only copy corrupt
                assert key not in t["files"] or rec["why"] == "corrupt-metadata"
                continue
            assert f"extent_size = {rec['extent_size'] // 512}\n" in text
            pv = re.search(rf'id = "{area["pv_uuid"]}"\n.*?pe_start = (\d+)', text, re.S)
            assert pv and int(pv[1]) * 512 == area["pe_start"]


def test_corruptions_and_damage(lvm_fixtures: tuple[Path, dict[str, Any]]) -> None:
    root, t = lvm_fixtures
    by_dir = {c["dir"]: c for c in t["corruptions"]}
    assert by_dir["badmda"]["lvm2_sees"] == ["vg-badmda/lv-badmda"]
    assert by_dir["badonly"]["lvm2_sees"] == []
    for c in by_dir.values():
        h = t["files"][f"{c['dir']}/{c['file']}"]["pvck_headers"]
        assert any("crc does not match mda_header_1" in x for x in h["checks"])
        assert not any("mda_header_2" in x for x in h["checks"])
        with open(root / c["dir"] / c["file"], "rb") as f:
            f.seek(c["offset"])
            assert f.read(1)[0] == c["new"] == c["old"] ^ 1
    assert len(t["files"]["badmda/vol-bad0d008"]["pvck_headers"]["mdas"]) == 2
    gone = lv(t, "missing", "lv-gone")
    assert not any((root / "missing" / f).exists() for f in gone["files"])
    assert (root / "missing" / lv(t, "missing", "lv-here")["files"][0]).exists()
    tr = t["truncations"][0]
    rec = lv(t, "truncated", "lv-trunc")
    area = rec["segments"][0]["areas"][0]
    assert area["pe_start"] < (root / tr["dir"] / tr["file"]).stat().st_size < area["pe_start"] + rec["size"]


def test_pvck_parser_on_two_mdas(lvm_fixtures: tuple[Path, dict[str, Any]]) -> None:
    root, _ = lvm_fixtures
    h = pvck.headers(root / "align/vol-a1190004")
    assert h["rc"] == 0 and h["checks"] == []
    assert h["label"] == {"at": 512, "id": "LABELONE", "sector": 1, "crc": h["label"]["crc"], "offset": 32,
                          "type": "LVM2 001"}
    assert [m["start"] for m in h["mdas"]] == [a["offset"] for a in h["metadata_areas"]]
    assert [m["size"] for m in h["mdas"]] == [a["size"] for a in h["metadata_areas"]]
    assert h["metadata_areas"][1]["offset"] + h["metadata_areas"][1]["size"] == h["device_size"]
    for m in h["mdas"]:
        assert m["magic"] == "0x" + b" LVM2 x[5A%r0N*>".hex() and m["version"] == 1
        assert m["vgname"] == "vg-align" and m["text_at"] == m["start"] + m["raw_locn"][0]["offset"]
        assert m["text_crc"] == m["raw_locn"][0]["checksum"]
        with open(root / "align/vol-a1190004", "rb") as f:
            f.seek(m["start"])
            sector = f.read(512)
        assert lvm_crc(sector[4:]) == m["checksum"]


def test_third_party_pvs(third_party_pvs: dict[str, dict[str, Any]]) -> None:
    for info in third_party_pvs.values():
        data = info["raw"].read_bytes()
        assert len(data) == info["raw_size"]
        assert hashlib.sha256(data).hexdigest() == info["raw_sha256"]
        h = pvck.headers(info["raw"])
        assert h["rc"] == 0
        assert (h["mdas"][0]["vgname"], h["mdas"][0]["seqno"]) == (info["vg"], info["seqno"])


@pytest.mark.parametrize("size", [1, MiB - 1, MiB, 3 * MiB + 5])
def test_expected_sha256_matches_naive(size: int) -> None:
    patches = [(0, b"abc"), (size // 2, b"x" * 70000), (max(0, size - 2), b"yz")]
    buf = bytearray(size)
    for o, d in patches:
        end = min(size, o + len(d))
        buf[o:end] = d[:end - o]
    patches = [(o, d[:max(0, size - o)]) for o, d in patches]
    assert lvmfix.expected_sha256(size, patches) == hashlib.sha256(buf).hexdigest()


def test_lv_pieces_striped() -> None:
    rec = {"extent_size": 4 * MiB, "segments": [{
        "segtype": "striped", "start_extent": 0, "extent_count": 4, "stripes": 2, "stripe_size": 65536,
        "areas": [{"file": "a", "pe_start": MiB, "pe_first": 0},
                  {"file": "b", "pe_start": MiB, "pe_first": 1}]}]}
    got = list(lvmfix.lv_pieces(rec, 65536 - 10, 65536 + 20))
    assert got == [("a", MiB + 65536 - 10, 10), ("b", MiB + 4 * MiB, 65536), ("a", MiB + 65536, 10)]
