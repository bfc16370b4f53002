# SPDX-License-Identifier: Apache-2.0
"""Label, mda ring and newest-copy selection, on PVs made by tests/lvmwriter.py.

Layouts real lvm2 reaches only after hundreds of commands (a copy split across the end of
the ring) or never on purpose (a corrupt newest copy) are built directly here; lvm2's own
``pvck`` confirms the writer produces what lvm2 accepts.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _env import need_tools
from euca2kvm.errors import Euca2kvmError, FormatError
from euca2kvm.lvm import Device, ExtentReader, scan
from euca2kvm.lvm.crc import calc_crc
from lvmwriter import Mda, build_pv, crc, fast_crc, linear_lv, vg_text

MiB = 1 << 20
UUID = "AbCdEf" + "0123456789abcdefghijklmnopqrst"[:26]
VGID = "VgIdVg-0000-1111-2222-3333-4444-555555"
PVID = UUID[:6] + "-" + "-".join(UUID[6 + 4 * i : 10 + 4 * i] for i in range(5)) + "-" + UUID[26:]


def dashed(u: str) -> str:
    return u[:6] + "-" + "-".join(u[6 + 4 * i : 10 + 4 * i] for i in range(5)) + "-" + u[26:]


def make(tmp: Path, name: str, *, seqno: int = 1, mdas: list[Mda] | None = None, uuid: str = UUID,
         vg: str = "vgx", vg_id: str = VGID, size: int = 8 * MiB, data: bytes | None = None) -> Path:
    pe_start = MiB
    text = vg_text(vg, vg_id, seqno, [("pv0", dashed(uuid), pe_start // 512, 1)],
                   linear_lv("lv0", "LvIdLv-0000-1111-2222-3333-4444-555555", 1), extent_size=8192)
    if mdas is None:
        mdas = [Mda(4096, 64 * 1024 - 4096 + 4096)]
    for m in mdas:
        if not m.text:
            m.text = text
    img = build_pv(size, uuid, mdas, pe_start)
    if data is not None:
        img[pe_start : pe_start + len(data)] = data
    p = tmp / name
    p.write_bytes(img)
    return p


def lv_bytes(path: Path) -> bytes:
    res = scan([Device.whole(str(path))])
    assert len(res.vgs) == 1, (res.errors, res.warnings)
    g = res.vgs[0]
    emap = g.lv_map("lv0")
    return ExtentReader(emap).pread(0, emap.size)


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=2000), st.integers(0, 2**32 - 1))
def test_crc_matches_bitwise_reference(data: bytes, init: int) -> None:
    assert calc_crc(data, init) == crc(data, init) == fast_crc(data, init)


def test_crc_chains() -> None:
    a, b = os.urandom(100), os.urandom(300)
    assert calc_crc(b, calc_crc(a)) == calc_crc(a + b)


def test_plain_pv_reads_lv(tmp_path: Path) -> None:
    data = random.Random(1).randbytes(4 * MiB)
    p = make(tmp_path, "pv", data=data)
    assert hashlib.sha256(lv_bytes(p)).digest() == hashlib.sha256(data).digest()


def test_wrapped_copy(tmp_path: Path) -> None:
    size = 16 * 1024
    m = Mda(4096, size)
    data = random.Random(2).randbytes(4 * MiB)
    p = make(tmp_path, "pv", mdas=[m], data=data)
    # rebuild with the copy starting 200 bytes before the end of the ring: it must wrap
    m2 = Mda(4096, size, text_offset=size - 200)
    p = make(tmp_path, "pv", mdas=[m2], data=data)
    res = scan([Device.whole(str(p))])
    g = res.vgs[0]
    assert g.copy.wrapped
    assert lv_bytes(p) == data


def test_wrapped_copy_accepted_by_pvck(tmp_path: Path) -> None:
    need_tools("pvck")
    size = 16 * 1024
    p = make(tmp_path, "pv", mdas=[Mda(4096, size, text_offset=size - 200)])
    out = subprocess.run(["pvck", "--dump", "metadata", str(p)], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "LVM_SUPPRESS_FD_WARNINGS": "1"})
    assert out.returncode == 0, out.stderr
    res = scan([Device.whole(str(p))])
    assert res.vgs[0].copy.text.strip().splitlines()[0] in out.stdout
    assert 'seqno = 1' in out.stdout


def test_newest_seqno_wins_across_areas(tmp_path: Path) -> None:
    old = Mda(4096, 64 * 1024)
    new = Mda(4 * MiB, 64 * 1024)
    p = make(tmp_path, "pv", mdas=[old, new], size=8 * MiB, seqno=5)
    img = bytearray(p.read_bytes())
    # rewrite the first area with seqno 4 (older)
    older = Mda(4096, 64 * 1024, text=vg_text("vgx", VGID, 4, [("pv0", PVID, 2048, 1)],
                                               linear_lv("lv0", "LvIdLv-0000-1111-2222-3333-4444-555555", 1)))
    img2 = build_pv(8 * MiB, UUID, [older], MiB)
    img[4096 : 4096 + 64 * 1024] = img2[4096 : 4096 + 64 * 1024]
    p.write_bytes(img)
    res = scan([Device.whole(str(p))])
    assert res.vgs[0].vg.seqno == 5
    assert any("older metadata (seqno 4 < 5)" in w for w in res.vgs[0].warnings)


def test_corrupt_newest_falls_back_with_warning(tmp_path: Path) -> None:
    bad = Mda(4096, 64 * 1024, corrupt_text=True)
    good = Mda(4 * MiB, 64 * 1024)
    p = make(tmp_path, "pv", mdas=[bad, good], data=b"x" * 4096)
    res = scan([Device.whole(str(p))])
    assert len(res.vgs) == 1
    assert res.vgs[0].copy.header.area.offset == 4 * MiB
    assert any("checksum mismatch" in w and str(p) in w for w in res.warnings)
    assert lv_bytes(p)[:4096] == b"x" * 4096


def test_only_copy_corrupt_is_a_clear_error(tmp_path: Path) -> None:
    p = make(tmp_path, "pv", mdas=[Mda(4096, 64 * 1024, corrupt_text=True)])
    res = scan([Device.whole(str(p))])
    assert not res.vgs
    err = res.errors[str(p)]
    assert "no valid metadata copy" in str(err) and "checksum mismatch" in str(err) and str(p) in str(err)


def test_ignored_area_is_skipped(tmp_path: Path) -> None:
    ign = Mda(4096, 64 * 1024, ignored=True)
    good = Mda(4 * MiB, 64 * 1024)
    p = make(tmp_path, "pv", mdas=[ign, good])
    res = scan([Device.whole(str(p))])
    assert res.vgs[0].copy.header.area.offset == 4 * MiB
    assert not res.warnings


def test_same_vg_name_different_ids_are_two_vgs(tmp_path: Path) -> None:
    a = make(tmp_path, "a", vg="dup", vg_id="AAAAAA-0000-1111-2222-3333-4444-555555")
    b = make(tmp_path, "b", vg="dup", vg_id="BBBBBB-0000-1111-2222-3333-4444-555555",
             uuid="ZyXwVu" + "9876543210zyxwvutsrqponmlk")
    res = scan([Device.whole(str(a)), Device.whole(str(b))])
    assert [g.name for g in res.vgs] == ["dup", "dup"]
    assert {g.files()[0] for g in res.vgs} == {str(a), str(b)}


def test_label_in_sector_0_2_3_and_bad_sector_field(tmp_path: Path) -> None:
    p = make(tmp_path, "pv")
    img = bytearray(p.read_bytes())
    label = bytes(img[512:1024])
    for sector in (0, 2, 3):
        moved = bytearray(img)
        moved[512:1024] = bytes(512)
        lab = bytearray(label)
        lab[8:16] = sector.to_bytes(8, "little")
        lab[16:20] = fast_crc(bytes(lab[20:])).to_bytes(4, "little")
        moved[sector * 512 : sector * 512 + 512] = lab
        p.write_bytes(moved)
        assert len(scan([Device.whole(str(p))]).vgs) == 1
    # sector_xl says 1 but the label sits in sector 2: lvm2 ignores it -> no PV
    moved = bytearray(img)
    moved[512:1024] = bytes(512)
    moved[1024:1536] = label
    p.write_bytes(moved)
    res = scan([Device.whole(str(p))])
    assert not res.vgs and res.plain


def test_bad_label_crc_names_offset(tmp_path: Path) -> None:
    p = make(tmp_path, "pv")
    img = bytearray(p.read_bytes())
    img[600] ^= 0xFF
    p.write_bytes(img)
    res = scan([Device.whole(str(p))])
    err = res.errors[str(p)]
    assert "label checksum mismatch" in str(err) and err.offset == 512 + 16


def test_missing_pv_refused_by_name(tmp_path: Path) -> None:
    text = vg_text("vgm", VGID, 3, [("pv0", PVID, 2048, 2), ("pv1", "Missin-g000-1111-2222-3333-4444-555555",
                                                              2048, 2)],
                   linear_lv("here", "L1L1L1-0000-1111-2222-3333-4444-555555", 1, "pv0")
                   + linear_lv("gone", "L2L2L2-0000-1111-2222-3333-4444-555555", 1, "pv1"))
    p = tmp_path / "pv"
    p.write_bytes(build_pv(16 * MiB, UUID, [Mda(4096, 64 * 1024, text=text)], MiB))
    g = scan([Device.whole(str(p))]).vgs[0]
    assert g.lv_map("here").size == 4 * MiB
    with pytest.raises(FormatError, match="needs PV pv1 .*missing"):
        g.lv_map("gone")


def test_truncated_container_names_file_and_offset(tmp_path: Path) -> None:
    p = make(tmp_path, "pv", size=8 * MiB)
    with open(p, "r+b") as f:
        f.truncate(3 * MiB)
    g = scan([Device.whole(str(p))]).vgs[0]
    with pytest.raises(FormatError, match="truncated") as ei:
        g.lv_map("lv0")
    assert ei.value.path == str(p)


def _valid_pv() -> bytes:
    text = vg_text("vgf", VGID, 1, [("pv0", PVID, 2048, 1)],
                   linear_lv("lv0", "LvIdLv-0000-1111-2222-3333-4444-555555", 1))
    return bytes(build_pv(64 * 1024 + 8192, UUID, [Mda(4096, 32 * 1024, text=text)], 48 * 1024))


VALID = _valid_pv()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=12),
       st.booleans())
def test_fuzz_mutated_pv_raises_only_project_errors(tmp_path: Path, flips: list[tuple[int, int]],
                                                   fix_crcs: bool) -> None:
    img = bytearray(VALID)
    for pos, val in flips:
        # focus mutations on the structures: label sector, mda header, metadata text
        pos = pos % 4096 if pos % 3 == 0 else 4096 + pos % 2048 if pos % 3 == 1 else pos
        img[pos] = val
    if fix_crcs:
        # re-seal the label and mda header so mutations reach the parsers behind the CRC checks
        img[512 + 16 : 512 + 20] = fast_crc(bytes(img[512 + 20 : 1024])).to_bytes(4, "little")
        img[4096 : 4100] = fast_crc(bytes(img[4100 : 4096 + 512])).to_bytes(4, "little")
    p = tmp_path / "fz"
    p.write_bytes(img)
    try:
        res = scan([Device.whole(str(p))])
        for g in res.vgs:
            for lv in g.vg.lvs:
                with contextlib.suppress(Euca2kvmError):
                    g.lv_map(lv)
    except Euca2kvmError:
        pass


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(min_size=0, max_size=8192))
def test_fuzz_random_bytes(tmp_path: Path, blob: bytes) -> None:
    p = tmp_path / "rnd"
    p.write_bytes(blob)
    with contextlib.suppress(Euca2kvmError):
        scan([Device.whole(str(p))])
