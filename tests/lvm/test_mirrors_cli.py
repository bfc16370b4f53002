# SPDX-License-Identifier: Apache-2.0
"""--check-mirrors on the kernel-made raid1 fixture (tests/data/dm): identical legs pass; one flipped
byte in leg 1 is reported by inspect and makes export refuse with exit code 6."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from clirun import euca2kvm
from euca2kvm.errors import EXIT_VERIFY

if TYPE_CHECKING:
    from conftest import DmFixtures  # tests/lvm/conftest.py

MIB = 1 << 20


cli = euca2kvm


def test_check_mirrors(fx: DmFixtures, tmp_path: Path) -> None:
    vols = tmp_path / "vols"
    vols.mkdir()
    fx.fresh_copy("dm-raid0.img", vols)
    leg1 = fx.fresh_copy("dm-raid1.img", vols)
    info = json.loads(cli("inspect", "vgraid/r1", "-s", str(vols), "--check-mirrors", "--json", "--no-guest").stdout)
    assert info["mirrors"]["identical"] and info["mirrors"]["bytes_compared"] == 16 * MIB
    cli("export", "vgraid/r1", "-s", str(vols), "-o", str(tmp_path / "ok"), "--check-mirrors")
    with leg1.open("r+b") as f:  # r1_rimage_1 starts at PE 1 of the second PV (pe_start 1 MiB, 4 MiB extents)
        f.seek(MIB + 4 * MIB + 5 * MIB + 12345)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0x40]))
    p = cli("inspect", "vgraid/r1", "-s", str(vols), "--check-mirrors", "--no-guest")
    assert f"differ first at LV byte {5 * MIB + 12345}" in p.stdout
    p = cli("export", "vgraid/r1", "-s", str(vols), "-o", str(tmp_path / "bad"), "--check-mirrors", check=EXIT_VERIFY)
    assert "mirror legs differ" in p.stderr
    assert not list((tmp_path / "bad").glob("*.raw"))
