# SPDX-License-Identifier: Apache-2.0
"""Cost and bounds of the LVM reader on hostile metadata, built with tests/lvmwriter.py.

* cost: discovering a VG of 800 LVs must cost about 8x one of 100 LVs, not 512x;
* bounds: sizes and counts beyond what the format or the output can hold are refused with
  exit 3 by ``scan``, ``inspect`` and ``export``, without a traceback and without writing.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _env import need_tools
from euca2kvm.errors import EXIT_FORMAT, Euca2kvmError, FormatError
from euca2kvm.eucalyptus.discovery import discover
from euca2kvm.export.formats import MAX_SIZE, check_size, output_format
from euca2kvm.lvm import Device, ExtentReader, scan
from lvmwriter import Mda, build_pv, linear_lv, vg_text

MiB = 1 << 20
EXTENT_SECTORS = 8  # 4 KiB extents keep a PV of 800 one-extent LVs at a few MiB
MDA_SIZE = 4 * MiB  # 800 LV sections are ~200 KB of text; lvm2 keeps a copy under half the ring
PE_START = MDA_SIZE + 2 * MiB
UUID = "ManyLv" + "m" * 26
PVID = "ManyLv-mmmm-mmmm-mmmm-mmmm-mmmm-mmmmmm"
# The quadratic/cubic reader took ~50-100 s for 800 LVs here; the linear one takes well under 1 s.
# 8x the LVs may cost up to 20x the time (noise on a loaded 2-core machine), and never more than this.
SCAN_800_CAP_S = 15.0
MAX_RATIO = 20.0
TIMING_ROUNDS = 2  # best of: one slow round on a busy machine is not a regression


def many_lvs(path: Path, n: int) -> Path:
    """One PV, one VG of ``n`` untagged linear LVs of one extent each (ids from VG/LV names)."""
    lvs = "".join(linear_lv(f"lv{i:04d}", f"L{i:05d}-0000-1111-2222-3333-4444-555555", 1, start_pe=i)
                  for i in range(n))
    text = vg_text("vgmany", "ManyVg-0000-1111-2222-3333-4444-555555", 1,
                   [("pv0", PVID, PE_START // 512, n)], lvs, extent_size=EXTENT_SECTORS)
    path.write_bytes(build_pv(PE_START + n * EXTENT_SECTORS * 512, UUID, [Mda(4096, MDA_SIZE, text=text)],
                              PE_START))
    return path


def discover_seconds(path: Path, n: int) -> float:
    best = float("inf")
    for _ in range(TIMING_ROUNDS):
        t0 = time.perf_counter()
        d = discover([str(path)], check_in_use=False)
        best = min(best, time.perf_counter() - t0)
        assert len({v.id for v in d.volumes}) == n and not any(v.problem for v in d.volumes)
    return best


def test_discovery_is_linear_in_the_number_of_lvs(tmp_path: Path) -> None:
    small = discover_seconds(many_lvs(tmp_path / "small", 100), 100)
    big = discover_seconds(many_lvs(tmp_path / "big", 800), 800)
    assert big < SCAN_800_CAP_S, f"800 LVs took {big:.2f} s"
    assert big / max(small, 1e-3) < MAX_RATIO, f"100 LVs {small:.3f} s, 800 LVs {big:.3f} s"


# --- bounds ------------------------------------------------------------------------------------

HUUID = "Hostil" + "h" * 26
HPVID = "Hostil-hhhh-hhhh-hhhh-hhhh-hhhh-hhhhhh"
HVGID = "HostVg-0000-1111-2222-3333-4444-555555"
LVID = "HostLv-0000-1111-2222-3333-4444-555555"
GARBAGE = b"an earlier file the refused export must leave alone\n"
CLI_TIMEOUT_S = 120


def zero_lv(extents: int | str) -> str:
    return (f'lv0 {{\nid = "{LVID}"\nstatus = ["READ", "WRITE", "VISIBLE"]\nflags = []\nsegment_count = 1\n\n'
            f'segment1 {{\nstart_extent = 0\nextent_count = {extents}\ntype = "zero"\n}}\n}}\n')


TWO_STRIPES = linear_lv("lv0", LVID, 2).replace("stripe_count = 1", "stripe_count = 2\nstripe_size = 128").replace(
    '"pv0", 0', '"pv0", 0,\n"pv0", 1')


def hostile(path: Path, lvs: str, *, extent_size: int = 8192, seqno: int = 1,
            edits: tuple[tuple[str, str], ...] = ()) -> Path:
    """A container whose metadata is valid lvm2 syntax with the given LV text and text edits."""
    text = vg_text("vg-hostile", HVGID, seqno, [("pv0", HPVID, 2048, 2)], lvs, extent_size=extent_size).decode()
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new, 1)
    path.write_bytes(build_pv(2 * MiB, HUUID, [Mda(4096, 64 * 1024, text=text.encode())], MiB))
    return path


HOSTILE = {
    # 2**31 extents of 2**40 sectors: 2**80 bytes (extent_size beyond lvm2's 32 bits)
    "lv-of-2^80-bytes": dict(lvs=zero_lv(1 << 31), extent_size=1 << 40),
    # every field within 32 bits, but 2**31 extents of 1 TiB are 2**71 bytes: no file or disk holds it
    "lv-of-2^71-bytes": dict(lvs=zero_lv(1 << 31), extent_size=1 << 31),
    "extent_count-2^64": dict(lvs=zero_lv(1 << 64)),
    "extent_count-negative": dict(lvs=zero_lv(-1)),
    "extent_count-hex-huge": dict(lvs=zero_lv("0x10000000000000000")),
    "stripe_count-0": dict(lvs=linear_lv("lv0", LVID, 1).replace("stripe_count = 1", "stripe_count = 0")),
    "stripe_count-huge": dict(lvs=linear_lv("lv0", LVID, 1).replace("stripe_count = 1", f"stripe_count = {1 << 40}")),
    "stripe_count-2-one-area": dict(lvs=linear_lv("lv0", LVID, 2).replace("stripe_count = 1",
                                                                        "stripe_count = 2\nstripe_size = 128")),
    "stripe_size-0": dict(lvs=TWO_STRIPES.replace("stripe_size = 128", "stripe_size = 0")),
    "stripe_size-2^32": dict(lvs=TWO_STRIPES.replace("stripe_size = 128", f"stripe_size = {1 << 32}")),
    "stripe-extent-negative": dict(lvs=linear_lv("lv0", LVID, 1, start_pe=-1)),
    "seqno-2^32": dict(lvs=linear_lv("lv0", LVID, 1), seqno=1 << 32),
    "seqno-negative": dict(lvs=linear_lv("lv0", LVID, 1), seqno=-1),
    "pe_start-negative": dict(lvs=linear_lv("lv0", LVID, 1), edits=(("pe_start = 2048", "pe_start = -2048"),)),
    "pe_start-2^63-bytes": dict(lvs=linear_lv("lv0", LVID, 1), edits=(("pe_start = 2048", f"pe_start = {1 << 54}"),)),
    "dev_size-2^64": dict(lvs=linear_lv("lv0", LVID, 1), edits=(("dev_size = ", f"dev_size = {1 << 64}#"),)),
    "pe_count-times-extent-overflows": dict(lvs=linear_lv("lv0", LVID, 1), extent_size=1 << 31,
                                            edits=(("pe_count = 2", f"pe_count = {(1 << 32) - 1}"),)),
    "segment_count-0-with-a-segment": dict(lvs=linear_lv("lv0", LVID, 1).replace("segment_count = 1",
                                                                                "segment_count = 0")),
    "segment_count-huge": dict(lvs=linear_lv("lv0", LVID, 1).replace("segment_count = 1",
                                                                    f"segment_count = {1 << 40}")),
}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "euca2kvm", *args], capture_output=True, text=True,
                          timeout=CLI_TIMEOUT_S)


def garbage_outdir(tmp: Path) -> Path:
    out = tmp / "out"
    out.mkdir()
    (out / "keep.raw").write_bytes(GARBAGE)
    return out


def assert_untouched(out: Path) -> None:
    assert sorted(os.listdir(out)) == ["keep.raw"]
    assert (out / "keep.raw").read_bytes() == GARBAGE


# Every case through the library (fast); these through every command in a subprocess as well.
CLI_CASES = ("lv-of-2^80-bytes", "lv-of-2^71-bytes", "stripe_count-0", "seqno-negative")


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_numbers_make_the_file_unusable(tmp_path: Path, case: str) -> None:
    src = hostile(tmp_path / "vol-b0d51234", **HOSTILE[case])  # type: ignore[arg-type]
    d = discover([str(tmp_path)], check_in_use=False)
    assert not d.volumes
    err = d.unusable[str(src)]
    assert isinstance(err, FormatError) and err.path == str(src) and err.offset is not None
    for ident in (str(src), "vol-b0d51234"):
        with pytest.raises(FormatError):
            d.find(ident)
    with pytest.raises(FormatError):
        d.check_named([str(src)])


@pytest.mark.parametrize("case", CLI_CASES)
def test_hostile_numbers_exit_3_everywhere(tmp_path: Path, case: str) -> None:
    src = hostile(tmp_path / "vol-b0d51234", **HOSTILE[case])  # type: ignore[arg-type]
    before = hashlib.sha256(src.read_bytes()).hexdigest()
    out = garbage_outdir(tmp_path)
    for args in (("scan", str(src), "--json"), ("inspect", str(src)),
                 ("export", str(src), "--source", str(src), "-o", str(out)),
                 ("export", "vol-b0d51234", "--source", str(tmp_path), "-o", str(out), "--format", "qcow2")):
        p = cli(*args)
        assert p.returncode == EXIT_FORMAT, (case, args, p.returncode, p.stdout, p.stderr)
        assert "Traceback" not in p.stderr and str(src) in p.stderr, (case, args, p.stderr)
    assert_untouched(out)
    assert hashlib.sha256(src.read_bytes()).hexdigest() == before


EXTENT = 8192 * 512  # the 4 MiB extents of the PVs above


@pytest.mark.parametrize("fmt", ["vhdx", "vpc", "vmdk"])
def test_disk_beyond_the_output_format_is_refused_before_writing(tmp_path: Path, fmt: str) -> None:
    extents = MAX_SIZE[fmt] // EXTENT + 1
    src = hostile(tmp_path / "vol-b16d1234", zero_lv(extents))
    out = garbage_outdir(tmp_path)
    assert cli("scan", str(src)).returncode == 0  # a valid LV: only this output cannot hold it
    p = cli("export", "vol-b16d1234", "--source", str(tmp_path), "-o", str(out), "--format", fmt)
    assert p.returncode == EXIT_FORMAT, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr and str(MAX_SIZE[fmt]) in p.stderr and "vol-b16d1234" in p.stderr
    assert_untouched(out)


@pytest.mark.parametrize("fmt", sorted(MAX_SIZE))
def test_size_limit_is_inclusive(fmt: str) -> None:
    f = output_format(fmt)
    check_size(f, MAX_SIZE[fmt], "vol-x")
    with pytest.raises(FormatError):
        check_size(f, MAX_SIZE[fmt] + 1, "vol-x")


QEMU_CREATE = {"qcow2": [], "vhdx": [], "vpc": ["-o", "subformat=fixed,force_size=on"]}


@pytest.mark.parametrize("fmt", sorted(QEMU_CREATE))
def test_limits_are_qemu_imgs_own(tmp_path: Path, fmt: str) -> None:
    """The installed qemu-img creates an image of exactly MAX_SIZE and refuses one sector more."""
    need_tools("qemu-img")
    img = tmp_path / f"x.{fmt}"
    for size, ok in ((MAX_SIZE[fmt], True), (MAX_SIZE[fmt] + 512, False)):
        p = subprocess.run(["qemu-img", "create", "-q", "-f", fmt, *QEMU_CREATE[fmt], str(img), str(size)],
                           capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
        assert (p.returncode == 0) == ok, (fmt, size, p.stderr)
        img.unlink(missing_ok=True)


def test_largest_lv_within_bounds_is_read_and_refused_only_by_the_output(tmp_path: Path) -> None:
    # (2**23 - 1) extents of 1 TiB: 2**63 - 2**40 bytes, all "zero": valid metadata, no file to read
    src = hostile(tmp_path / "vol-b1900001", zero_lv((1 << 23) - 1), extent_size=1 << 31)
    for args in (("scan", str(src)), ("inspect", str(src))):
        p = cli(*args)
        assert p.returncode == 0 and "Traceback" not in p.stderr, (args, p.stderr)
    out = garbage_outdir(tmp_path)
    p = cli("export", "vol-b1900001", "--source", str(tmp_path), "-o", str(out), "--format", "qcow2")
    assert p.returncode == EXIT_FORMAT and str(MAX_SIZE["qcow2"]) in p.stderr and "Traceback" not in p.stderr
    assert_untouched(out)


# --- any number anywhere -----------------------------------------------------------------------

FUZZ_TEXT = vg_text("vg-fuzz", HVGID, 3, [("pv0", HPVID, 2048, 2)],
                    linear_lv("lin", LVID, 1) + TWO_STRIPES.replace("lv0 {", "str {", 1).replace(LVID, LVID[:-1] + "6")
                    + zero_lv(3).replace("lv0 {", "zer {", 1).replace(LVID, LVID[:-1] + "7"), extent_size=16).decode()
NUMBERS = [m.start() for m in re.finditer(r"(?<=[=\[,] )-?[0-9]+|(?<=\n)-?[0-9]+(?=\n\])", FUZZ_TEXT)]
EDGES = [-(1 << 63), -1, 0, 1, 2, 7, (1 << 31) - 1, 1 << 31, (1 << 32) - 1, 1 << 32, (1 << 63) - 1, 1 << 63,
         (1 << 64) - 1, 1 << 64, 1 << 80]
READ = 512
_NUMBER = re.compile(r"-?[0-9]+")


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(NUMBERS), st.one_of(st.sampled_from(EDGES), st.integers())),
                min_size=1, max_size=3))
def test_any_number_anywhere_gives_a_disk_or_a_project_error(tmp_path: Path, edits: list[tuple[int, int]]) -> None:
    """Numbers of a valid VG (linear, striped, zero LVs) replaced by edge values: scanning, mapping and
    reading the first and last sector of every LV raise only the project's errors."""
    text = FUZZ_TEXT
    for pos in sorted({p for p, _ in edits}, reverse=True):
        value = next(v for p, v in edits if p == pos)
        end = pos + len(_NUMBER.match(text, pos).group())  # type: ignore[union-attr]
        text = text[:pos] + str(value) + text[end:]
    src = tmp_path / "fz"
    src.write_bytes(build_pv(2 * MiB, HUUID, [Mda(4096, 64 * 1024, text=text.encode())], MiB))
    try:
        res = scan([Device.whole(str(src))])
    except Euca2kvmError:
        return
    for g in res.vgs:
        for lv in g.vg.lvs:
            try:
                emap = g.lv_map(lv)
                with ExtentReader(emap) as r:
                    for off in (0, max(0, emap.size - READ)):
                        assert len(r.pread(off, READ)) == min(READ, emap.size - off)
            except Euca2kvmError:
                continue
