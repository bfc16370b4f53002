# SPDX-License-Identifier: Apache-2.0
"""Each mapper states the kinds it can yield: an ``error`` segment inside a raid0, thin, COW or
mirrored LV (the real kernel-made containers of tests/data/dm, their metadata edited) is known from
the structure, before a byte is read, and ``export`` refuses it with exit 3 writing nothing (the
edited metadata written into the container by lvm2's own vgcfgrestore)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from tests.lvm.test_segtypes import edited, groups_of, lv_text

from _env import need_root, need_tools
from euca2kvm.blocks import Kind
from euca2kvm.errors import EXIT_FORMAT
from euca2kvm.lvm.scan import VolumeGroup
from euca2kvm.lvm.source import LvmSource
from lvmfix import Lvm, loops

if TYPE_CHECKING:
    from conftest import DmFixtures  # tests/lvm/conftest.py

LINEAR_AREA = re.compile(r'type = "striped"\s+stripe_count = 1\s+# linear\s+stripes = \[\s+"pv0", \d+\s+\]')


def to_error(text: str, lv: str) -> tuple[str, str]:
    """The (old, new) edit turning the first segment of ``lv`` in a VG text into an error segment."""
    start = text.index(f"\t{lv} {{")
    m = LINEAR_AREA.search(text, start)
    assert m is not None
    return m.group(0), 'type = "error"'


@pytest.fixture(scope="module")
def groups(fx: DmFixtures) -> dict[str, VolumeGroup]:
    return groups_of([fx.path(c) for c in fx.containers])


def test_every_mapper_states_an_inner_error(fx: DmFixtures, groups: dict[str, VolumeGroup]) -> None:
    thin = edited(fx, groups, "vgthin", to_error(fx.truth["vgcfg"]["vgthin"], "pool_tdata"))
    cow = edited(fx, groups, "vgcow", to_error(fx.truth["vgcfg"]["vgcow"], "origin"))
    bad = lv_text("bad", 4, 'type = "error"', '"READ", "WRITE"')
    raid0 = lv_text("r0", 8, 'type = "raid0"\nstripe_count = 2\nstripe_size = 128\nraid0_lvs = ["r1_rimage_0", "bad"]')
    raid = edited(fx, groups, "vgraid", extra_lvs=bad + raid0)
    maps = {"thin": thin.lv_map("thin1"), "cow": cow.lv_map("snapshot0"), "raid0": raid.lv_map("r0")}
    for what, emap in maps.items():
        assert Kind.ERROR in emap.kinds(), what
        assert Kind.ERROR in LvmSource(emap).kinds(), what
    # ...and the same LVs without the edit state no error (thin: also zeros; files: also holes).
    clean = edited(fx, groups, "vgthin").lv_map("thin1")
    assert clean.kinds() == {Kind.DATA, Kind.ZERO}
    assert LvmSource(clean).kinds() == {Kind.DATA, Kind.ZERO, Kind.HOLE}
    assert Kind.ERROR not in edited(fx, groups, "vgcow").lv_map("snapshot0").kinds()


def test_export_refuses_an_error_inside_a_thin_lv_before_writing(fx: DmFixtures, tmp_path: Path) -> None:
    need_root()
    need_tools("losetup", "vgcfgrestore", "qemu-img")
    img = fx.fresh_copy("dm-thin.img", tmp_path)
    text = fx.truth["vgcfg"]["vgthin"]
    old, new = to_error(text, "pool_tdata")
    cfg = tmp_path / "vgthin.txt"
    cfg.write_text(text.replace(old, new, 1))
    with loops([img]) as devs:
        Lvm(devs)("vgcfgrestore", "--force", "-f", str(cfg), "vgthin")
    out = tmp_path / "out"
    for fmt in ("raw", "qcow2"):
        p = subprocess.run([sys.executable, "-m", "euca2kvm", "export", "vgthin/thin1", "-s", str(img), "-o", str(out),
                            "--format", fmt, "--json"], capture_output=True, text=True, timeout=120)
        assert p.returncode == EXIT_FORMAT, (p.returncode, p.stderr[-2000:])
        assert "Traceback" not in p.stderr
        written = [f for f in out.rglob("*") if f.is_file() and f.name != "manifest.json"] if out.exists() else []
        assert written == [] or all(f.stat().st_size == 0 for f in written), written
        if (out / "manifest.json").exists():
            assert json.loads((out / "manifest.json").read_text())["volumes"] == []
