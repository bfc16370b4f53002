# SPDX-License-Identifier: Apache-2.0
"""Output names are injective, collisions within one run are refused naming both sources, and a
re-run reuses an output only for the same source identity (VG and LV uuid, metadata seqno and
checksum), never because a name, a size and an mtime match."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from _env import need_root, need_tools
from euca2kvm.errors import EXIT_USAGE
from euca2kvm.export.manifest import MAX_NAME, output_path, safe_name
from refdigest import file_sha256 as file_sha
from security.containers import MiB, assert_clean_failure, cli, make, sha


def unescape(name: str) -> str:
    """The inverse of safe_name for names it did not shorten: '_' -> '/', %XX -> byte."""
    out = bytearray()
    i = 0
    while i < len(name):
        if name[i] == "%":
            out.append(int(name[i + 1 : i + 3], 16))
            i += 3
        else:
            out += b"/" if name[i] == "_" else name[i].encode()
            i += 1
    return out.decode("utf-8", "surrogatepass")


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=60))
def test_safe_name_is_reversible_and_stays_in_outdir(name: str) -> None:
    s = safe_name(name)
    if "~" not in s:  # not shortened
        assert unescape(s) == name
    assert "/" not in s and "\0" not in s and not s.startswith(".") and s.isascii() and s.isprintable()


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400), st.text(max_size=400))
def test_safe_name_is_injective_even_when_shortened(a: str, b: str) -> None:
    if a != b and a and b:
        assert safe_name(a) != safe_name(b)
    assert len(safe_name(a)) <= MAX_NAME


def test_known_collisions_are_distinct_and_common_names_unchanged(tmp_path: Path) -> None:
    pairs = [("data/x_y", "data_x/y"), ("a b", "a_b"), ("a%20b", "a b"), ("x" * 300, "x" * 301),
             ("../evil", "%2E._evil"), ("A", "a")]
    for a, b in pairs:
        assert output_path(tmp_path, a, "raw") != output_path(tmp_path, b, "raw"), (a, b)
    for same in ("vol-4708bf47", "volume-4708bf47", "snap-1a2b3c4d", "vol-0123456789abcdef0", "i-3f2a91c0-vda"):
        assert safe_name(same) == same
    assert safe_name("vg-mseg/lvA") == "vg-mseg_lvA"  # what earlier releases wrote for VG/LV ids


def test_vg_data_lv_x_y_and_vg_data_x_lv_y_are_two_images(tmp_path: Path) -> None:
    """Both names are lvm2-legal; they used to land in one data_x_y.raw, one image lost."""
    vols = tmp_path / "volumes"
    vols.mkdir()
    a = make(vols / "c1", "data", "x_y", 1)
    b = make(vols / "c2", "data_x", "y", 2)
    out = tmp_path / "out"
    p = cli("export", "--all", "--source", str(vols), "-o", str(out))
    assert p.returncode == 0, p.stderr
    entries = {e["id"]: e for e in json.loads((out / "manifest.json").read_text())["volumes"]}
    assert set(entries) == {"data/x_y", "data_x/y"}
    assert entries["data/x_y"]["output"] != entries["data_x/y"]["output"]
    for c, ident in ((a, "data/x_y"), (b, "data_x/y")):
        assert file_sha(Path(entries[ident]["output"])) == sha(c.lv_bytes())
    assert len([f for f in out.iterdir() if f.suffix == ".raw"]) == 2


def test_real_lvm2_vg_data_lv_x_y_and_vg_data_x_lv_y_are_two_images(tmp_path: Path) -> None:
    """The same pair made by the real lvm2 (on loop devices, --devices pinned): lvm2 accepts both."""
    need_root()
    need_tools("losetup", "pvcreate", "vgcreate", "lvcreate")
    from lvmfix import Lvm, fill, with_lvm

    vols = tmp_path / "volumes"
    vols.mkdir()
    expected = {}
    for f, vg, lv in (("c1", "data", "x_y"), ("c2", "data_x", "y")):
        def setup(lvm: Lvm, devs: list[str], vg: str = vg, lv: str = lv) -> None:
            lvm("pvcreate", devs[0])
            lvm("vgcreate", "-s", "1M", vg, devs[0])
            lvm("lvcreate", "-n", lv, "-l", "100%FREE", vg)

        expected[f"{vg}/{lv}"] = fill(vols, with_lvm(vols, {f: 8 * MiB}, setup)[lv])
    out = tmp_path / "out"
    p = cli("export", "--all", "--source", str(vols), "-o", str(out))
    assert p.returncode == 0, p.stderr
    entries = {e["id"]: e for e in json.loads((out / "manifest.json").read_text())["volumes"]}
    assert {k: file_sha(Path(e["output"])) for k, e in entries.items()} == expected


def test_same_tag_on_two_containers_is_refused_naming_both(tmp_path: Path) -> None:
    vols = tmp_path / "volumes"
    vols.mkdir()
    tag = '"vol-5a5a5a5a"'
    make(vols / "first", "vg1", "lv1", 3, tags=tag)
    make(vols / "second", "vg2", "lv2", 4, tags=tag)
    out = tmp_path / "out"
    out.mkdir()
    garbage = os.urandom(4096)
    (out / "vol-5a5a5a5a.raw").write_bytes(garbage)  # an earlier export under that name stays as it was
    p = cli("export", "--all", "--source", str(vols), "-o", str(out))
    assert_clean_failure(p, EXIT_USAGE)
    assert str(vols / "first") in p.stderr and str(vols / "second") in p.stderr
    assert (out / "vol-5a5a5a5a.raw").read_bytes() == garbage
    assert sorted(f.name for f in out.iterdir() if not f.name.startswith(".")) == ["vol-5a5a5a5a.raw"]
    # by name: ambiguous, refused the same way
    assert_clean_failure(cli("export", "vol-5a5a5a5a", "--source", str(vols), "-o", str(out)), EXIT_USAGE)
    # the plan says what the export would do
    assert_clean_failure(cli("plan", "--source", str(vols), "-o", str(out)), EXIT_USAGE)


def test_snapshot_objects_a_space_b_and_a_underscore_b_are_two_images(tmp_path: Path) -> None:
    """Files named explicitly keep their names as ids: gzip'd snapshot objects (a plain file that is no
    container or snapshot file is refused, exit 3, whatever its name)."""
    src = tmp_path / "src"
    src.mkdir()
    disks = {"a b": os.urandom(1 << 20), "a_b": os.urandom(1 << 20)}
    for name, data in disks.items():
        (src / name).write_bytes(gzip.compress(data, compresslevel=1))
    one, two = src / "a b", src / "a_b"
    out = tmp_path / "out"
    p = cli("export", str(one), str(two), "--source", str(one), "--source", str(two), "-o", str(out))
    assert p.returncode == 0, p.stderr
    entries = json.loads((out / "manifest.json").read_text())["volumes"]
    assert len({e["output"] for e in entries}) == 2
    for e in entries:
        assert file_sha(Path(e["output"])) == hashlib.sha256(disks[e["id"]]).hexdigest()


def _export(vols: Path, out: Path, ident: str) -> Path:
    p = cli("export", ident, "--source", str(vols), "-o", str(out))
    assert p.returncode == 0, p.stderr
    return Path(json.loads((out / "manifest.json").read_text())["volumes"][0]["output"])


def test_resume_reexports_another_lv_behind_the_same_name(tmp_path: Path) -> None:
    """The container is replaced by another VG/LV of the same names, size and mtime: exported again."""
    vols = tmp_path / "volumes"
    vols.mkdir()
    c = make(vols / "vol-1e1e1e1e", "euca-ebs-storage-vg-vol-1e1e1e1e", "euca-vol-1e1e1e1e", 5, extents=1,
             pe_count=2)
    out = tmp_path / "out"
    image = _export(vols, out, "vol-1e1e1e1e")
    first = image.stat().st_ino
    assert file_sha(image) == sha(c.lv_bytes())
    # Another VG and LV (new uuids), the LV on the other PE, which holds other bytes.
    c.rewrite_metadata(vg_uuid_n=50, lv_uuid_n=50, start_pe=1)
    image = _export(vols, out, "vol-1e1e1e1e")
    assert image.stat().st_ino != first  # not reused
    assert file_sha(image) == sha(c.lv_bytes())
    # A metadata rewrite of the same VG and LV (new seqno) that moves the LV back: exported again too.
    c.rewrite_metadata(start_pe=0)
    second = image.stat().st_ino
    image = _export(vols, out, "vol-1e1e1e1e")
    assert image.stat().st_ino != second and file_sha(image) == sha(c.lv_bytes())
    # Unchanged: reused.
    third = image.stat().st_ino
    assert _export(vols, out, "vol-1e1e1e1e").stat().st_ino == third


def test_manifest_entries_without_identity_are_exported_again(tmp_path: Path) -> None:
    vols = tmp_path / "volumes"
    vols.mkdir()
    c = make(vols / "vol-2e2e2e2e", "vg-2e", "lv-2e", 6, extents=1)
    out = tmp_path / "out"
    image = _export(vols, out, "vol-2e2e2e2e")
    m = json.loads((out / "manifest.json").read_text())
    entry = m["volumes"][0]
    assert {"vg_uuid", "lv_uuid", "seqno", "mda_checksum", "lv_size"} <= set(entry["identity"])
    del entry["identity"]  # as an earlier release wrote it
    (out / "manifest.json").write_text(json.dumps(m))
    before = image.stat().st_ino
    image = _export(vols, out, "vol-2e2e2e2e")
    assert image.stat().st_ino != before and file_sha(image) == sha(c.lv_bytes())
