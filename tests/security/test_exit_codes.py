# SPDX-License-Identifier: Apache-2.0
"""Exit codes that tell the truth about the input.

* a corrupt container named on the command line is a format error (3) naming the file and the
  offset, in ``scan``, ``inspect`` and ``export``, not an "unknown volume" (2);
* conflicting metadata (two copies of one VG with one seqno and different text, repeated sections,
  repeated ids) is refused (3) whatever the order of the files, naming both files;
* qemu-img running out of space is an I/O error (5), not a tool failure (7).
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from _env import need_root, need_tools
from euca2kvm.errors import EXIT_FORMAT, EXIT_IO, FormatError, IOFailure, ToolError
from euca2kvm.eucalyptus.discovery import discover
from euca2kvm.export import qemu_img
from lvmwriter import Mda, build_pv, fast_crc, linear_lv, vg_text

MiB = 1 << 20
U1 = "ExitCa" + "a" * 26
U2 = "ExitCb" + "b" * 26
VGID = "ExitVg-0000-1111-2222-3333-4444-555555"
LV0 = linear_lv("lv0", "ExitLv-0000-1111-2222-3333-4444-555555", 1)
LV0_BIGGER = linear_lv("lv0", "ExitLv-0000-1111-2222-3333-4444-555555", 2)
CLI_TIMEOUT_S = 120
GARBAGE = b"an earlier file the refused export must leave alone\n"


def dashed(u: str) -> str:
    return u[:6] + "-" + "-".join(u[6 + 4 * i : 10 + 4 * i] for i in range(5)) + "-" + u[26:]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "euca2kvm", *args], capture_output=True, text=True,
                          timeout=CLI_TIMEOUT_S)


def pv(path: Path, text: str | bytes, uuid: str = U1, corrupt_text: bool = False) -> Path:
    raw = text.encode() if isinstance(text, str) else text
    path.write_bytes(build_pv(16 * MiB, uuid, [Mda(4096, 64 * 1024, text=raw, corrupt_text=corrupt_text)], MiB))
    return path


def one_pv_text(lvs: str = LV0, pvs: list[tuple[str, str, int, int]] | None = None) -> bytes:
    return vg_text("vg-exit", VGID, 1, pvs or [("pv0", dashed(U1), 2048, 3)], lvs)


def corrupt_metadata(path: Path) -> Path:
    return pv(path, one_pv_text(), corrupt_text=True)


def corrupt_label(path: Path) -> Path:
    pv(path, one_pv_text())
    img = bytearray(path.read_bytes())
    img[600] ^= 0xFF  # inside the pv_header: the label CRC no longer matches
    path.write_bytes(img)
    return path


def outdir(tmp: Path) -> Path:
    out = tmp / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "keep.raw").write_bytes(GARBAGE)
    return out


def untouched(out: Path) -> bool:
    return sorted(os.listdir(out)) == ["keep.raw"] and (out / "keep.raw").read_bytes() == GARBAGE


@pytest.mark.parametrize("damage", [corrupt_metadata, corrupt_label], ids=["metadata-crc", "label-crc"])
def test_corrupt_container_named_explicitly_is_a_format_error(tmp_path: Path, damage: object) -> None:
    vols = tmp_path / "vols"
    vols.mkdir()
    src = damage(vols / "vol-c0aa0001")  # type: ignore[operator]
    before = hashlib.sha256(src.read_bytes()).hexdigest()
    out = outdir(tmp_path)
    for args in (("scan", str(src)), ("inspect", str(src)), ("export", str(src), "--source", str(src), "-o", str(out)),
                 ("export", "vol-c0aa0001", "--source", str(vols), "-o", str(out)),
                 ("inspect", "vol-c0aa0001", "--source", str(vols))):
        p = cli(*args)
        assert p.returncode == EXIT_FORMAT, (args, p.returncode, p.stderr)
        assert str(src) in p.stderr and "offset" in p.stderr and "Traceback" not in p.stderr, (args, p.stderr)
    # a corrupt file among others in a scanned directory is a warning, the scan itself succeeds
    p = cli("scan", str(vols))
    assert p.returncode == 0 and str(src) in p.stderr, p.stderr
    assert untouched(out)
    assert hashlib.sha256(src.read_bytes()).hexdigest() == before


def two_pv_vg(d: Path, text_a: bytes, text_b: bytes) -> tuple[Path, Path]:
    """One VG over two files (the volume and an interrupted snapshot's temporary PV), one copy each."""
    a = pv(d / "vol-c0f11c70", text_a, U1)
    b = pv(d / "vol-c0f11c70a1b2c3", text_b, U2)
    return a, b


PVS2 = [("pv0", dashed(U1), 2048, 3), ("pv1", dashed(U2), 2048, 3)]


def test_equal_seqno_different_text_is_refused_whatever_the_file_order(tmp_path: Path) -> None:
    # lvm2 2.03.16 warns "found mismatch with other metadata" and reads whichever device it scans
    # first: each order below gives a different LV size under lvm2. We refuse both orders.
    a, b = two_pv_vg(tmp_path, vg_text("vg-exit", VGID, 7, PVS2, LV0), vg_text("vg-exit", VGID, 7, PVS2, LV0_BIGGER))
    for order in ([a, b], [b, a]):
        d = discover([str(p) for p in order], check_in_use=False)
        assert not d.volumes
        for f in (a, b):
            err = d.unusable[str(f)]
            assert isinstance(err, FormatError) and str(a) in str(err) and str(b) in str(err)
    out = outdir(tmp_path / "o")
    for args in (("scan", str(a), str(b)), ("export", "vol-c0f11c70", "--source", str(tmp_path), "-o", str(out)),
                 ("inspect", "vol-c0f11c70", "--source", str(tmp_path))):
        p = cli(*args)
        assert p.returncode == EXIT_FORMAT, (args, p.returncode, p.stderr)
        assert str(a) in p.stderr and str(b) in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert untouched(out)


def test_equal_seqno_identical_text_is_one_vg(tmp_path: Path) -> None:
    text = vg_text("vg-exit", VGID, 7, PVS2, LV0)
    a, b = two_pv_vg(tmp_path, text, text)
    d = discover([str(a), str(b)], check_in_use=False)
    assert [v.id for v in d.volumes] == ["vol-c0f11c70"] and not d.unusable
    assert d.volumes[0].size == 4 * MiB and d.volumes[0].problem is None
    assert cli("scan", str(a), str(b)).returncode == 0


SEG = '\nsegment1 {\nstart_extent = 0\nextent_count = 1\ntype = "striped"\nstripe_count = 1\nstripes = ["pv0", 1]\n}\n'
CONFLICTS = {
    # lvm2: "Couldn't read all logical volumes for volume group"
    "lv-section-twice": one_pv_text(LV0 + LV0_BIGGER),
    # lvm2: "segment_count and actual number of segments disagree"
    "segment-section-twice": one_pv_text(LV0.replace("segment1 {", SEG.strip() + "\nsegment1 {", 1)),
    "pv-section-twice": one_pv_text(pvs=[("pv0", dashed(U1), 2048, 3), ("pv0", dashed(U1), 4096, 2)]),
    # lvm2 vgck: "Internal error: Duplicate PV id ... detected"
    "pv-id-twice": one_pv_text(pvs=[("pv0", dashed(U1), 2048, 3), ("pv1", dashed(U1), 4096, 2)]),
    "lv-id-twice": one_pv_text(LV0 + LV0.replace("lv0 {", "lv1 {", 1)),
    "segment-beyond-segment_count": one_pv_text(LV0.replace("\n}\n}\n", "\n}\n" + SEG.replace("segment1",
                                                                                               "segment2") + "}\n")),
}


@pytest.mark.parametrize("case", sorted(CONFLICTS))
def test_conflicting_sections_are_refused(tmp_path: Path, case: str) -> None:
    src = pv(tmp_path / "vol-c0ff0001", CONFLICTS[case])
    d = discover([str(src)], check_in_use=False)
    assert not d.volumes
    with pytest.raises(FormatError) as ei:
        d.check_named([str(src)])
    assert ei.value.path == str(src) and ei.value.offset is not None


def test_conflicting_sections_exit_3(tmp_path: Path) -> None:
    src = pv(tmp_path / "vol-c0ff0002", CONFLICTS["lv-section-twice"])
    p = cli("scan", str(src))
    assert p.returncode == EXIT_FORMAT and str(src) in p.stderr and "Traceback" not in p.stderr, p.stderr


@pytest.fixture
def tiny_fs(tmp_path: Path):  # type: ignore[no-untyped-def]
    need_root()
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True, timeout=30)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True, timeout=30)


def test_qemu_img_out_of_space_is_an_io_error(tmp_path: Path, tiny_fs: Path) -> None:
    need_tools("qemu-img")
    src = tmp_path / "dense.raw"
    src.write_bytes(random.Random(7).randbytes(4 * MiB))  # incompressible, 4x the filesystem
    with pytest.raises(IOFailure) as ei:
        qemu_img.convert(str(src), str(tiny_fs / "x.qcow2"), "qcow2", {"compat": "1.1"})
    assert ei.value.exit_code == EXIT_IO and "No space left on device" in str(ei.value)


def test_other_qemu_img_failures_stay_tool_errors(tmp_path: Path) -> None:
    need_tools("qemu-img")
    with pytest.raises(ToolError):
        qemu_img.convert(str(tmp_path / "absent.raw"), str(tmp_path / "x.qcow2"), "qcow2")
    assert not (tmp_path / "x.qcow2").exists()


def test_label_helper_really_breaks_the_crc(tmp_path: Path) -> None:
    src = corrupt_label(tmp_path / "p")
    lab = src.read_bytes()[512:1024]
    assert int.from_bytes(lab[16:20], "little") != fast_crc(lab[20:])


def lvm2_lv_sizes(files: list[Path]) -> dict[str, int]:
    """LV sizes real lvm2 reports for these files attached, in this order, to read-only loops."""
    from lvmfix import Lvm, loops

    with loops(files, readonly=True) as devs:
        rows = Lvm(devs).report("lvs", "lv_name,lv_size")
    return {r["lv_name"]: int(r["lv_size"]) for r in rows}


def test_ground_truth_lvm2_reads_conflicts_as_the_reader_now_does(tmp_path: Path) -> None:
    """What the refusals above are matched against: lvm2 2.03 itself on the same files."""
    need_root()
    need_tools("losetup", "lvs")
    # equal seqno, different text: lvm2 takes the copy of whichever device comes first
    a, b = two_pv_vg(tmp_path, vg_text("vg-exit", VGID, 7, PVS2, LV0), vg_text("vg-exit", VGID, 7, PVS2, LV0_BIGGER))
    assert lvm2_lv_sizes([a, b]) == {"lv0": 4 * MiB} and lvm2_lv_sizes([b, a]) == {"lv0": 8 * MiB}
    # a repeated LV section: lvm2 reads no LV at all
    dup = pv(tmp_path / "dup", CONFLICTS["lv-section-twice"])
    assert lvm2_lv_sizes([dup]) == {}
    # a repeated value: lvm2 reads the first, and so do we
    twice = pv(tmp_path / "twice", one_pv_text(LV0.replace("extent_count = 1", "extent_count = 1\nextent_count = 2")))
    assert lvm2_lv_sizes([twice]) == {"lv0": 4 * MiB}
    assert [v.size for v in discover([str(twice)], check_in_use=False).volumes] == [4 * MiB]
