# SPDX-License-Identifier: Apache-2.0
"""The bundled demo volumes directory (demo/volumes.tar.xz, made with the real lvm2) exports right."""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

from euca2kvm.eucalyptus.discovery import discover
from euca2kvm.export.copy import copy_blocks
from euca2kvm.lvm.reader import ExtentReader
from euca2kvm.lvm.source import LvmSource

DEMO = Path(__file__).resolve().parent.parent / "demo" / "volumes.tar.xz"


def test_demo_volumes(tmp_path: Path) -> None:
    with tarfile.open(DEMO) as t:
        t.extractall(tmp_path, filter="data")
    d = discover([str(tmp_path)], check_in_use=False)
    assert sorted(v.id for v in d.volumes) == ["snap-0de0b001", "vol-0de0a001", "vol-0de0a002"]
    two = d.find("vol-0de0a002")
    assert len(two.files) == 2
    r = ExtentReader(two.extent_map())
    assert r.pread(0, 14) == b"first PV data "
    assert r.pread(8 << 20, 15) == b"second PV data "
    fs = d.find("vol-0de0a001")
    head = ExtentReader(fs.extent_map()).pread(1024 + 56, 2)
    assert head == b"\x53\xef"  # ext4 superblock magic
    # the LV holds the same filesystem as the raw snapshot file
    snap = d.find("snap-0de0b001")
    lv_digest = copy_blocks(LvmSource(fs.extent_map()), None).digest
    assert lv_digest == copy_blocks(LvmSource(snap.extent_map()), None).digest


def test_demo_script_is_syntactically_valid() -> None:
    root = DEMO.parent.parent
    subprocess.run(["bash", "-n", str(root / "scripts" / "demo")], check=True, timeout=30)
    subprocess.run(["bash", "-n", str(root / "scripts" / "test")], check=True, timeout=30)
